"""`make bench`: run every benchmark area side by side, print a table, merge figures into
var/bench/results.json (a flat JSON object: figure name -> number).

Each area is a module bench/<area>.py exposing `run(quick: bool) -> dict[str, float]` and
printing its own notes (for example that a slow baseline ran on a scaled subsample).
BENCH_ONLY=<area>[,<area>] runs some areas; BENCH_QUICK=1 cuts repetitions, never sizes.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time

from core.settings import get_settings

AREAS = ["telemetry", "pipeline", "dashboard", "load", "kernels", "halt", "risk", "cache", "stress"]


def _selected() -> list[str]:
    only = os.environ.get("BENCH_ONLY", "").strip()
    if not only:
        return AREAS
    chosen = [a.strip() for a in only.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(AREAS))
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown area(s) {unknown}; known: {AREAS}")
    return chosen


def _fmt(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0")
    results: dict[str, float] = {}
    for area in _selected():
        print(f"== area {area} (quick={quick})", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{area}")
        figures = module.run(quick)
        results.update(figures)
        print(f"   {area} done in {time.perf_counter() - started:.1f}s", flush=True)
    width = max((len(k) for k in results), default=10)
    print("\n" + "figure".ljust(width) + "  value")
    for name in sorted(results):
        print(name.ljust(width) + "  " + _fmt(results[name]))
    out_dir = get_settings().var_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in results.items()})
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"\nmerged {len(results)} figures into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
