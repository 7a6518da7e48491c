"""`make bench`: run the benchmarks one after another, then write docs/benchmarks.md (and its chart,
docs/benchmarks.png) from bench/results/latest.json. `BENCH_SMOKE=1` runs them all at once with tiny
counts (CI keeps the scripts working in 1-1.5 minutes; the numbers mean nothing).

    python bench/run.py [NAME ...]     # only these scripts, e.g. api_throughput serving_overhead
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SMOKE, tiny_model_dir

# In the order they run; each prints its ratio on its last line.
BENCHMARKS = [
    "api_throughput.py",
    "serving_overhead.py",
    "sse_fanout.py",
    "batch_gain.py",
    "cold_warm.py",
    "downloads.py",
]
# A smoke run's numbers mean nothing, so it never overwrites the published ones.
DOC = (RESULTS / "smoke" if SMOKE else ROOT / "docs") / "benchmarks.md"
CHART = DOC.with_suffix(".png")

# Item 7's published inputs (see the doc's "Paper model" section for the sources).
A100_SDXL_30_STEPS_S = {"eager bf16 + SDPA": 3.31, "torch.compile": 2.54}
H100_OVER_A100 = (1.5, 2.0)
H100_1024_PIXELS = 1024 * 1024
# What bench/gpu_sdxl.py measured on a lent H200 (no GPU runs `make bench`).
GPU_RESULTS = ROOT / "bench" / "gpu" / "h200.json"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _paper_model(benchmarks: dict[str, Any]) -> list[str]:
    """Item 7: expected images/s and overhead share of one H100 at 1024², 30 steps, from our overhead."""
    lines = ["## Paper model: one H100, SDXL at 1024², 30 steps", ""]
    lines += [
        "**A model, not a measurement**: no GPU ran here. Inputs: the service's time outside its engine",
        "call per job, measured above (`outside_denoise_ms`, median; its encode scaled to 1024² by pixel",
        "count), and published SDXL times: Hugging Face's \"Accelerate inference of text-to-image diffusion",
        'models" (diffusers docs, docs/source/en/tutorials/fast_diffusion.md) measured SDXL base, 1024²,',
        "30 steps, batch 1, on an 80 GB A100 at 3.31 s (bf16 + SDPA, what `DF_DEVICE=cuda` runs) and",
        "2.54 s (with `torch.compile` max-autotune). For the H100 we assume 1.5-2.0x an A100: an",
        "assumption, not a cited figure, and the model's weakest input.",
        "",
    ]
    serving = {k: v for k, v in benchmarks.items() if k.startswith("serving_overhead.")}
    if not serving:
        return [*lines, "(serving_overhead did not run: no overhead to model with.)", ""]
    lines += [
        "| Topology | GPU time per image | Overhead per job | Overhead share | Images/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in serving.items():
        details = result.get("details", {})
        # The service's time outside its engine call: a burst of other work on the shared machine
        # during a denoise cannot swamp it, as it can the plain difference of the pair.
        overhead_ms = float(details.get("outside_denoise_ms", details.get("overhead_ms", 0.0)))
        encode_ms = float(details.get("phases_ms", {}).get("encode", 0.0))
        pixels = float(details.get("pixels", H100_1024_PIXELS))
        # Encoding grows with pixels (it is the one CPU stage that scales with the image); the rest of
        # the overhead (HTTP, dispatch, commits, events) does not.
        scaled_ms = overhead_ms - encode_ms + encode_ms * H100_1024_PIXELS / max(pixels, 1.0)
        for variant, a100_s in A100_SDXL_30_STEPS_S.items():
            low, high = (a100_s / H100_OVER_A100[1], a100_s / H100_OVER_A100[0])
            share = [scaled_ms / 1000 / (gpu + scaled_ms / 1000) for gpu in (low, high)]
            rate = [1 / (gpu + scaled_ms / 1000) for gpu in (low, high)]
            lines.append(
                f"| {name.split('.', 1)[1]}, {variant} | {low:.2f}-{high:.2f} s | {scaled_ms:.0f} ms "
                f"| {share[1] * 100:.1f}-{share[0] * 100:.1f} % | {rate[1]:.2f}-{rate[0]:.2f} |"
            )
    lines += [
        "",
        "What limits it: the UNet's 30 steps are over 90 % of an image; the VAE decode follows. Of the",
        "service's own work, encoding a 1024² PNG (scaled above from the measured encode by pixel count)",
        "is the largest part and runs on the CPU while the GPU idles, since a worker renders one job at",
        "a time. Overlapping encode and upload with the next job's denoise is the next lever on a GPU.",
        "",
    ]
    return lines


def _gpu_measured(benchmarks: dict[str, Any]) -> list[str]:
    """The CUDA path at full SDXL size, as bench/gpu_sdxl.py measured it on one H200."""
    if not GPU_RESULTS.exists():
        return []
    data = json.loads(GPU_RESULTS.read_text())
    with_compile, fixed = data["run_1_with_compile"], data["run_3_after_vae_fix"]
    runs = [with_compile, fixed]
    machine = fixed["machine"]
    eager = [r["eager_batch1"]["wall_s_median"] for r in runs]
    steps = [x["step_ms_median"] for r in runs for x in r["eager_batch1"]["runs"]]
    compiled = with_compile["compiled_batch1"]
    png = [x["png_encode_s"] for x in fixed["eager_batch1"]["runs"]]
    lines = [
        f"## Measured: SDXL at full size on one {machine['gpu']}",
        "",
        "`bench/gpu_sdxl.py`, run by hand on a lent GPU (2026-12-04; results in `bench/gpu/h200.json`):",
        "full-size SDXL shapes (2.57 G-parameter UNet, CLIP-L, OpenCLIP-bigG, SDXL VAE) with random fp16",
        "weights, saved as a diffusers folder and loaded and rendered through `SDXLEngine`, the production",
        "path: fp16, SDPA, channels-last, the VAE's fp32 upcast. 1024², 30 steps, DPM++ 2M Karras, CFG 5.",
        f"torch {machine['torch']}, CUDA {machine['cuda']}, diffusers {machine['diffusers']}. Two runs;",
        "ranges span them.",
        "",
        "| What | Measured |",
        "| --- | --- |",
        f"| eager, batch 1, per image | {min(eager):.2f}-{max(eager):.2f} s "
        f"(median per run; {min(steps):.0f}-{max(steps):.0f} ms per step) |",
        f"| `DF_COMPILE=true`, batch 1, per image | {compiled['wall_s_median']:.2f} s "
        f"({compiled['runs'][0]['step_ms_median']:.1f} ms per step); the first render compiles: "
        f"{with_compile['compiled_first_render']['wall_s']:.0f} s |",
    ]
    for batch in (2, 4):
        rates = [r[f"eager_batch{batch}"]["images_per_s"] for r in runs]
        peak = fixed[f"eager_batch{batch}"]["peak_gib"]
        lines.append(
            f"| eager, batch {batch} | {min(rates):.2f}-{max(rates):.2f} images/s, peak {peak} GiB |"
        )
    loads = [r["cold_load"] for r in runs]
    lines += [
        f"| peak GPU memory, batch 1 | {fixed['eager_batch1']['runs'][0]['peak_gib']} GiB "
        f"(weights {fixed['cold_load']['weights_gib_on_gpu']} GiB) |",
        f"| cold load, {fixed['build']['bytes'] / 1e9:.2f} GB, page cache dropped | "
        + ", ".join(
            f"{x['load_s']:.1f} s at {x['disk_read_gb_s']} GB/s read: ratio {x['ratio']:.2f}" for x in loads
        )
        + " (target 1.5) |",
    ]
    if "run_4_load_to_device" in data:
        direct = data["run_4_load_to_device"]["cold_load"]
        lines.append(
            f"| cold load straight to the GPU (`device_map`, run 4) | {direct['load_s']:.1f} s at "
            f"{direct['disk_read_gb_s']} GB/s: ratio {direct['ratio']:.2f} (target 1.5) |"
        )
    lines += [
        f"| PNG encode of one 1024² image (its CPU) | {min(png) * 1000:.0f}-{max(png) * 1000:.0f} ms |",
        "",
    ]
    attempts = fixed["oom"]["attempts"]
    tried = ", ".join(f"batch {a['batch']} {'fit' if a['ok'] else 'ran out of memory'}" for a in attempts)
    lines += [
        f"A real OOM: with all but {fixed['oom']['free_left_gib']:.0f} GiB of the GPU taken, {tried},",
        "halving as the runner does; with the memory released, batch 2 rendered again. The first try",
        "of this found a bug: an OOM inside the VAE decode left SDXL's VAE upcast to fp32, and every later",
        "render failed on a half/float mismatch. The engine now casts it back when a call fails (1886384,",
        "with a CPU test).",
        "",
    ]
    serving = {k: v for k, v in benchmarks.items() if k.startswith("serving_overhead.")}
    if serving:
        lines += [
            "Overhead share on this GPU: the service's non-encode time per job (measured above, CPU) plus",
            "the measured 1024² PNG encode, over the measured render time.",
            "",
            "| Topology | Render | Overhead per job | Overhead share | Images/s, one worker |",
            "| --- | --- | --- | --- | --- |",
        ]
        encode_s = sum(png) / len(png)
        for name, result in serving.items():
            details = result.get("details", {})
            outside_ms = float(details.get("outside_denoise_ms", details.get("overhead_ms", 0.0)))
            rest_s = (outside_ms - float(details.get("phases_ms", {}).get("encode", 0.0))) / 1000
            overhead = max(rest_s, 0.0) + encode_s
            for label, render in (
                ("eager", sum(eager) / len(eager)),
                ("compiled", compiled["wall_s_median"]),
            ):
                lines.append(
                    f"| {name.split('.', 1)[1]}, {label} | {render:.2f} s | {overhead * 1000:.0f} ms "
                    f"| {overhead / (render + overhead) * 100:.1f} % | {1 / (render + overhead):.2f} |"
                )
        lines += [
            "",
            "On a fast GPU the PNG encode is most of the overhead, and a worker encodes while its GPU idles.",
            "Overlapping encode and upload with the next batch's denoise is the lever this points at.",
            "",
        ]
    return lines


def _floors(benchmarks: dict[str, Any]) -> list[str]:
    """The floors beside the results they bound: a floor short of its target means no route doing
    that least work meets the target with this stack on this machine."""

    def ratio(name: str) -> str | None:
        result = benchmarks.get(name)
        return None if result is None else f"{result['ratio']:.3f}"

    def spread(name: str) -> str | None:
        result = benchmarks.get(name)
        return None if result is None or result.get("p95") is None else f"{result['p95']:.1f} ms"

    rows = []
    post = [
        ("body validated", ratio("api_throughput.floor.validate")),
        ("+ one durable Postgres insert", ratio("api_throughput.floor.insert")),
        ("validated + one Celery publish", ratio("api_throughput.floor.publish")),
    ]
    ours = [(t, ratio(f"api_throughput.{t}.create_job")) for t in ("embedded", "distributed")]
    if any(v for _, v in post):
        rows.append(("`POST /v1/jobs` (>= 0.25)", post, ours))
    reads = [("one Postgres row read by its key", ratio("api_throughput.floor.select"))]
    ours = [(route, ratio(f"api_throughput.distributed.{route}")) for route in ("get_job", "get_progress")]
    if reads[0][1]:
        rows.append(("distributed polled GETs (>= 0.5)", reads, ours))
    sizes = sorted(int(k.rsplit(".", 1)[1]) for k in benchmarks if k.startswith("sse_fanout.floor."))
    if sizes:
        floor = [(f"bare sse-starlette, {n} streams", spread(f"sse_fanout.floor.{n}")) for n in sizes]
        ours = [(f"{n} streams", spread(f"sse_fanout.{n}")) for n in sizes]
        rows.append(("SSE fan-out p95 spread (<= 50 ms)", floor, ours))
    if not rows:
        return []
    lines = [
        "",
        "## Floors: what this machine leaves of a target",
        "",
        "A floor is the ceiling app doing only the least its route must (bench/ceiling_app.py): where a",
        "floor already misses a target, no implementation doing that work meets it with this stack on",
        "this machine (2 cores shared by the load, the server and Postgres).",
        "",
        "| Target | Floors | Ours |",
        "| --- | --- | --- |",
    ]
    for target, floors, results in rows:
        cells = [
            ", ".join(f"{what}: {value}" for what, value in pairs if value) for pairs in (floors, results)
        ]
        lines.append(f"| {target} | {cells[0]} | {cells[1]} |")
    return lines


def write_doc(data: dict[str, Any]) -> Path:
    """docs/benchmarks.md: per benchmark its median, p95, ratio, target and verdict, details, the
    machine, the DF_MAX_BATCH decision and the paper model."""
    benchmarks: dict[str, Any] = data.get("benchmarks", {})
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` from `bench/results/latest.json`: ratios of runs interleaved in one",
        "sitting on a shared 2-core machine (absolute times drift; the ratios are what to compare).",
        "Each script in `bench/` runs alone too and prints its ratio on its last line.",
        "",
        "![latency and throughput](benchmarks.png)",
        "",
        "| Benchmark | Median | p95 | Ratio | Target | Result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    if data.get("smoke"):
        lines.insert(2, "**Smoke run (BENCH_SMOKE=1): tiny counts, not a measurement.**\n")
    for name, r in benchmarks.items():
        median = f"{r['median']:.1f} {r['unit']}" if r.get("median") is not None else ""
        p95 = f"{r['p95']:.1f}" if r.get("p95") is not None else ""
        verdict = "pass" if r["passed"] else "**fail**"
        lines.append(f"| `{name}` | {median} | {p95} | {r['ratio']:.3f} | {r['target']} | {verdict} |")
    lines += _floors(benchmarks)
    lines += ["", "## Details", ""]
    for name, r in benchmarks.items():
        lines.append(f"- `{name}`: " + "; ".join(f"{k} {_cell(v)}" for k, v in r.get("details", {}).items()))
    batch = benchmarks.get("batch_gain", {}).get("details", {})
    if batch:
        lines += [
            "",
            "## DF_MAX_BATCH on CPU",
            "",
            f"Images/s by batch size: {_cell(batch.get('images_per_s'))}. Recommended CPU default: "
            f"{batch.get('recommended_cpu_default')} ({batch.get('reason', 'the fastest measured')}).",
        ]
    lines += ["", *_paper_model(benchmarks), *_gpu_measured(benchmarks)]
    machine = json.dumps(data.get("machine", {}), indent=2)
    lines += ["Machine and versions:", "", "```json", machine, "```", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))
    return DOC


def write_chart(data: dict[str, Any]) -> Path | None:
    """docs/benchmarks.png: throughput against the ceiling, and job latency against a direct call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks: dict[str, Any] = data.get("benchmarks", {})
    api = {k.split(".", 1)[1]: v for k, v in benchmarks.items() if k.startswith("api_throughput.")}
    serving = {k.split(".", 1)[1]: v for k, v in benchmarks.items() if k.startswith("serving_overhead.")}
    if not api and not serving:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(api)
    ours = [float(api[n]["median"] or 0.0) for n in names]
    ceiling = [float(max(api[n]["details"].get("ceiling_rps", [0.0]))) for n in names]
    x = range(len(names))
    left.bar([i - 0.2 for i in x], ceiling, width=0.4, label="bare FastAPI (ceiling)")
    # The floors are the ceiling app doing the least a route must (bench/ceiling_app.py), not ours.
    floor = [n.startswith("floor.") for n in names]
    left.bar(
        [i + 0.2 for i in x if floor[i]],
        [v for v, f in zip(ours, floor, strict=True) if f],
        width=0.4,
        label="floor (bare app + a route's least work)",
        color="tab:gray",
    )
    left.bar(
        [i + 0.2 for i in x if not floor[i]],
        [v for v, f in zip(ours, floor, strict=True) if not f],
        width=0.4,
        label="Dream Forge",
        color="tab:orange",
    )
    left.set_xticks(list(x), names, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("requests/s at concurrency 32")
    left.set_title("API throughput")
    left.legend(fontsize=8)
    topologies = list(serving)
    direct = [float(serving[t]["details"].get("direct_ms", 0.0)) for t in topologies]
    service = [float(serving[t]["median"] or 0.0) for t in topologies]
    y = range(len(topologies))
    right.bar([i - 0.2 for i in y], direct, width=0.4, label="direct pipe() call")
    right.bar([i + 0.2 for i in y], service, width=0.4, label="POST to SSE done")
    right.set_xticks(list(y), topologies)
    right.set_ylabel("ms per job (median)")
    right.set_title("Serving overhead")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(CHART, dpi=100)
    plt.close(fig)
    return CHART


def _smoke(chosen: list[str]) -> int:
    """Run `chosen` all at once, each into its own log, printed as it ends; how many failed.

    A smoke run measures nothing, so CI waits for the slowest script rather than for their sum (most
    of each is starting a service and importing torch). The tiny model is built first: the scripts
    would otherwise race to build it.
    """
    tiny_model_dir()
    logs = RESULTS / "smoke"
    logs.mkdir(parents=True, exist_ok=True)
    running = []
    for script in chosen:
        with (logs / f"{script}.log").open("wb") as log:
            command = [sys.executable, str(ROOT / "bench" / script)]
            running.append((script, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
    started = time.monotonic()
    failed = 0
    for script, proc in running:
        code = proc.wait()
        failed += code != 0
        print(f"== {script} (smoke): exit {code} at {time.monotonic() - started:.0f} s", flush=True)
        print((logs / f"{script}.log").read_text(errors="replace"), end="", flush=True)
    return failed


def main() -> int:
    chosen = [f"{name.removesuffix('.py')}.py" for name in sys.argv[1:]] or BENCHMARKS
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not sys.argv[1:]:
        (RESULTS / "latest.json").unlink(missing_ok=True)
    failed = _smoke(chosen) if SMOKE else 0
    for script in [] if SMOKE else chosen:
        print(f"== {script}", flush=True)
        started = time.monotonic()
        failed += subprocess.run([sys.executable, str(ROOT / "bench" / script)]).returncode != 0
        print(f"== {script}: {time.monotonic() - started:.0f} s", flush=True)
    data = json.loads((RESULTS / "latest.json").read_text())
    print(f"wrote {write_doc(data)}")
    chart = write_chart(data)
    if chart is not None:
        print(f"wrote {chart}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
