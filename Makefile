# Dream Forge developer workflow. Targets follow Masters 10 §3; tools run from ./.venv.
# torch is installed with pip before the rest: uv does not see the CPU wheel our machines carry
# and would resolve a multi-GB CUDA build. On a CUDA box: make install TORCH_SPEC='torch==2.13.0' (PyPI's
# build is CUDA; constraints.txt pins torchvision to the release made for that torch).

VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
COMPOSE := docker compose -f compose/docker-compose.yml

.PHONY: install uv-sync lint fmt type test openapi demo bench serve up down logs migrate-head migrate-rev run-api run-worker clean

install: $(STAMP)

# sd-prompt-reader (a test-only metadata reader) pins pillow==10.3.0, click<8.2 and its desktop app's GUI
# packages, so it cannot be in the dev extra; its reader core needs only Pillow and piexif: --no-deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check '$(TORCH_SPEC)' 'uv>=0.4'
	$(BIN)/uv pip install -q --python $(PY) -c constraints.txt -e '.[worker,dev]'
	$(BIN)/uv pip install -q --python $(PY) -c constraints.txt --no-deps sd-prompt-reader
	touch $(STAMP)

uv-sync: install

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: install
	$(BIN)/mypy

# Tests run in TEST_WORKERS processes (pytest-xdist), a file per process at a time: most of a test's
# time is waiting on the services it starts, so 3 processes on 2 cores finish in less than half the time.
# TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 3

test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Benchmarks (ratios of interleaved runs): bench/results/latest.json and docs/benchmarks.md.
# BENCH_SMOKE=1 make bench: tiny counts, only to keep the scripts working.
bench: install
	$(PY) bench/run.py

openapi: install
	$(PY) scripts/export_openapi.py --out docs/openapi/openapi.v1.json

demo: install
	$(BIN)/dreamforge demo

serve: install
	$(BIN)/dreamforge serve

run-api: install
	$(BIN)/uvicorn dreamforge.api.asgi:app --host 127.0.0.1 --port 8001 --reload

run-worker: install
	$(BIN)/dreamforge worker

migrate-head: install
	$(BIN)/alembic upgrade head

migrate-rev: install
	$(BIN)/alembic revision --autogenerate -m "$(m)"

up:
	$(COMPOSE) up -d

down:
	$(COMPOSE) down -v

logs:
	$(COMPOSE) logs -f --tail=200 api worker

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
