"""Prometheus metrics of one Dream Forge process, and how each kind of process serves them.

One endpoint per process, no multiprocess mode. Every process that does work is a scrape target of
its own: an API replica is one uvicorn process (one per container or pod, maybe on another host) and
serves `/metrics` on its app; a Celery worker (solo pool: one process per GPU) has no HTTP server, so
it opens a small listener on `DF_METRICS_PORT` (default 9101, 0 disables). Prometheus discovers the
targets and sums across them (`sum by (status) (rate(dreamforge_jobs_total[5m]))`). prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`) only merges processes that share one directory on one
host, so it could not merge replicas on separate hosts anyway, and it costs a writable directory that
must be wiped at each start, per-metric gauge modes, and files of dead processes that linger; it pays
off only for several processes behind one port (`uvicorn --workers N`), which Dream Forge does not
use: run one API process per container and scale with replicas. In the embedded topology the
in-process worker records into the same registry as the API, so `/metrics` there shows both.

The queue depth is the exception to "each process counts its own": it is read from the database at
scrape time by `QueueDepthCollector`, so every API replica reports the same service-wide value
(aggregate it with `max`, not `sum`). GPU memory is reported only where torch is already imported
and CUDA initialised; nothing here imports torch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dreamforge.db.tables import Job, WebhookDelivery
from dreamforge.jobs.state import JobStatus

log = logging.getLogger(__name__)

# The stages a job's time is split into, as the `stage` label of STAGE_SECONDS.
STAGES = ("denoise", "upscale", "refine", "encode", "upload")
# The phases of one job attempt, as the `phase` label of JOB_PHASE_SECONDS and in the job's timings log.
JOB_PHASES = (
    "queue_wait",
    "claim",
    "model",
    "denoise",
    "stages",
    "encode",
    "metadata",
    "store",
    "commits",
    "total",
)
# `code` of outcomes that carry no error code (succeeded, canceled).
NO_CODE = "none"
# `route` of requests that matched no route (404s on unknown paths): raw paths would be unbounded.
UNMATCHED_ROUTE = "unmatched"
# Job statuses the queue depth counts.
ACTIVE_STATUSES = (JobStatus.queued.value, JobStatus.running.value)

JOBS = Counter(
    "dreamforge_jobs_total",
    "Jobs that reached a terminal status on this worker, by status and error code (`none` unless failed).",
    ["status", "code"],
)
JOB_SECONDS = Histogram(
    "dreamforge_job_duration_seconds",
    "Seconds from claiming a job to its terminal status (one attempt), by status.",
    ["status"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
STAGE_SECONDS = Histogram(
    "dreamforge_stage_duration_seconds",
    "Seconds per stage: denoise (one engine call over a batch), upscale and refine (one item each), "
    "encode (one image with its recipe) and upload (one artifact put into the store).",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
JOB_PHASE_SECONDS = Histogram(
    "dreamforge_job_phase_seconds",
    "Seconds one job attempt spent per phase: queue_wait (created to claimed), claim, model (lookup and "
    "load), denoise (engine calls), stages (upscale, refine), encode, metadata, store (artifact writes), "
    "commits (the attempt's database transactions) and total (claimed to terminal status).",
    ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
IMAGES = Counter(
    "dreamforge_images_total",
    "Final images stored; images per second is rate(dreamforge_images_total[5m]).",
)
MODEL_LOAD_SECONDS = Histogram(
    "dreamforge_model_load_seconds",
    "Seconds spent loading a model or upscaler into an engine (loads of a warm model are not counted).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
HTTP_SECONDS = Histogram(
    "dreamforge_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its response (an SSE stream counts until it closes), "
    "by method and route template.",
    ["method", "route"],
)
HTTP_RESPONSES = Counter(
    "dreamforge_http_responses_total",
    "HTTP responses by method, route template (`unmatched` when no route matched) and status code.",
    ["method", "route", "status"],
)
RETENTION_JOBS = Counter(
    "dreamforge_retention_jobs_deleted_total",
    "Finished jobs this process deleted past DF_RETENTION_DAYS, with their events, items and artifact rows.",
)
RETENTION_OBJECTS = Counter(
    "dreamforge_retention_objects_deleted_total",
    "Artifact objects this process deleted from the store along with their expired jobs.",
)
WEBHOOK_ATTEMPTS = Counter(
    "dreamforge_webhook_attempts_total",
    "Webhook delivery attempts this process made, by event and outcome (`delivered`, `retry`, `failed`).",
    ["event", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "dreamforge_webhook_attempt_duration_seconds",
    "Seconds one webhook attempt took, from connecting to the answer (or the error), by event.",
    ["event"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)

# Series that exist from the start, so rate() and increase() see their first event.
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _phase in JOB_PHASES:
    JOB_PHASE_SECONDS.labels(_phase)
for _status in (JobStatus.succeeded.value, JobStatus.canceled.value):
    JOBS.labels(_status, NO_CODE)


def job_finished(status: str, code: str | None, seconds: float) -> None:
    """Count a job's terminal outcome and the time this attempt took."""
    JOBS.labels(status, code or NO_CODE).inc()
    JOB_SECONDS.labels(status).observe(seconds)


@contextmanager
def webhook_timer(event: str) -> Iterator[None]:
    """Time one webhook attempt (whatever its outcome)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        WEBHOOK_SECONDS.labels(event).observe(time.perf_counter() - started)


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """Time the block as one `stage`; a block that raises is not observed."""
    started = time.perf_counter()
    yield
    STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


class GpuMemoryCollector:
    """CUDA memory allocated and reserved by torch in this process, per device.

    Reports nothing unless torch was already imported and CUDA initialised here (the API process of
    the distributed topology never imports torch; importing it for a gauge would cost seconds and GBs).
    """

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        allocated = GaugeMetricFamily(
            "dreamforge_gpu_memory_allocated_bytes",
            "Bytes of CUDA memory held by tensors in this process (torch.cuda.memory_allocated).",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "dreamforge_gpu_memory_reserved_bytes",
            "Bytes of CUDA memory reserved by torch's caching allocator in this process.",
            labels=["device"],
        )
        try:
            cuda = torch.cuda
            if not cuda.is_initialized():
                return
            for index in range(cuda.device_count()):
                allocated.add_metric([str(index)], float(cuda.memory_allocated(index)))
                reserved.add_metric([str(index)], float(cuda.memory_reserved(index)))
        except Exception as exc:
            log.debug("GPU memory not read: %s", exc)
            return
        yield allocated
        yield reserved


REGISTRY.register(GpuMemoryCollector())


class QueueDepthCollector:
    """Jobs queued and running, and webhook deliveries pending, across the service, read from the
    database when scraped."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as s:
                counts = dict(
                    s.execute(
                        select(Job.status, func.count())
                        .where(Job.status.in_(ACTIVE_STATUSES))
                        .group_by(Job.status)
                    ).all()
                )
        except Exception as exc:
            # The rest of the scrape is still worth having; the missing series shows the gap.
            log.warning("queue depth not read: %s", exc)
            return
        depth = GaugeMetricFamily(
            "dreamforge_queue_depth",
            "Jobs queued and running in the whole service (from the database; every API replica "
            "reports the same value, so aggregate with max).",
            labels=["status"],
        )
        for status in ACTIVE_STATUSES:
            depth.add_metric([status], float(counts.get(status, 0)))
        yield depth
        try:
            with self.sessions() as s:
                pending = int(
                    s.scalar(
                        select(func.count())
                        .select_from(WebhookDelivery)
                        .where(WebhookDelivery.status == "pending")
                    )
                    or 0
                )
        except Exception as exc:
            log.warning("webhook backlog not read: %s", exc)
            return
        yield GaugeMetricFamily(
            "dreamforge_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered or failed, service-wide (from the database; aggregate "
            "with max).",
            value=float(pending),
        )


class _Scrape:
    """This process's registry plus collectors that belong to one caller (its database)."""

    def __init__(self, extra: Iterable[Collector]) -> None:
        self.extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        for collector in self.extra:
            yield from collector.collect()


def exposition(accept: str, extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The process's metrics (and `extra`'s) in the format `accept` asks for, with its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_Scrape(extra)), content_type


def serve_metrics(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve this process's metrics on `port` from a background thread (0: not at all).

    For processes without an HTTP server of their own (Celery workers). A port that is taken is
    logged, not fatal: the worker's job is rendering.
    """
    if not port:
        return False
    try:
        start_http_server(port, addr)
    except OSError as exc:
        log.error("metrics listener not started on %s:%d: %s", addr, port, exc)
        return False
    log.info("metrics served on http://%s:%d/metrics", addr, port)
    return True
