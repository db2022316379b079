"""CLI: print the comprehensive performance report. `python -m workers.report [--html|--json]`
(default: a readable summary with the recommendations)."""
from __future__ import annotations

import argparse
import json
import sys

import redis

from core import report, schema
from core.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.report", description=__doc__)
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the full report as JSON")
    fmt.add_argument("--html", action="store_true", help="the report as an HTML page")
    parser.add_argument("--window", type=int, default=report.WINDOW_S, help="seconds (default 300)")
    args = parser.parse_args(argv)
    if not 10 <= args.window <= 3600:
        parser.error("--window must be within 10..3600 seconds")
    settings = get_settings()
    try:
        rep = report.get_comprehensive_performance_report(schema.connect(settings.redis_url), settings,
                                                          window_s=args.window)
    except redis.RedisError as exc:
        print(f"report: Redis unavailable at {settings.redis_url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    elif args.html:
        print(report.render_html(rep))
    else:
        total = rep["latency"].get("total_pipeline") or {}
        print(f"health {rep['health']['status']}; total_pipeline p99 "
              f"{(total.get('p99_us') or 0) / 1000:.2f} ms over {total.get('count') or 0} ticks "
              f"(last {rep['window_s']} s)")
        for r in rep["recommendations"] or [{"severity": "-", "area": "-", "finding": "nothing to recommend",
                                             "action": ""}]:
            print(f"[{r['severity']}] {r['area']}: {r['finding']} -> {r['action']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
