"""`make bench`: run the benchmarks one after another, then write docs/benchmarks.md from
bench/results/latest.json. `BENCH_SMOKE=1` runs each with tiny counts (CI keeps the scripts working)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS, ROOT, SMOKE

# In the order they run; each prints its ratio on its last line.
BENCHMARKS = ["api_throughput.py"]


def write_doc(data: dict[str, object]) -> Path:
    """docs/benchmarks.md: per benchmark its median, p95, ratio, target and verdict, and the machine."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` from `bench/results/latest.json`: ratios of interleaved runs, one sitting.",
        "",
        "| Benchmark | Median | p95 | Ratio | Target | Result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    benchmarks = data.get("benchmarks", {})
    assert isinstance(benchmarks, dict)
    for name, r in benchmarks.items():
        median = f"{r['median']:.1f} {r['unit']}" if r.get("median") is not None else ""
        p95 = f"{r['p95']:.1f}" if r.get("p95") is not None else ""
        verdict = "pass" if r["passed"] else "**fail**"
        lines.append(f"| `{name}` | {median} | {p95} | {r['ratio']:.3f} | {r['target']} | {verdict} |")
    lines += [
        "",
        "Machine and versions:",
        "",
        "```json",
        json.dumps(data.get("machine", {}), indent=2),
        "```",
        "",
    ]
    if data.get("smoke"):
        lines.insert(2, "**Smoke run (BENCH_SMOKE=1): tiny counts, not a measurement.**\n")
    path = ROOT / "docs" / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").unlink(missing_ok=True)
    failed = 0
    for script in BENCHMARKS:
        print(f"== {script}{' (smoke)' if SMOKE else ''}", flush=True)
        failed += subprocess.run([sys.executable, str(ROOT / "bench" / script)]).returncode != 0
    data = json.loads((RESULTS / "latest.json").read_text())
    print(f"wrote {write_doc(data)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
