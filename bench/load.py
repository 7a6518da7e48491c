"""A small closed-loop HTTP/1.1 load generator: `concurrency` keep-alive connections, each sending its
next request as soon as the last answer is read, for `seconds`.

Written on raw asyncio streams (uvloop when present) rather than an HTTP client library: a client's own
per-request cost would cap the rate it can measure, and on 2 cores that cap is close to what a bare
FastAPI endpoint serves. It speaks just enough HTTP/1.1 for our answers (Content-Length bodies).

    python bench/load.py URL [--method POST --body JSON] [--concurrency 32] [--seconds 10]

prints one JSON line: requests, errors, seconds, rps, p50/p95/p99 latency in ms, statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, latencies: list[float], statuses: dict[int, int]
) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 400:
                errors += 1
    finally:
        writer.close()
    return errors


async def run(url: str, method: str, body: str | None, concurrency: int, seconds: float) -> dict[str, object]:
    """Load `url` and return the summary."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = (body or "").encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    request = head.encode() + b"\r\n" + payload
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_worker(host, port, request, started + seconds, latencies, statuses) for _ in range(concurrency)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = sum(r if isinstance(r, int) else 1 for r in results)
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0.0

    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else 0.0,
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.method, args.body, args.concurrency, args.seconds))))


if __name__ == "__main__":
    main()
