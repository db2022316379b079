"""IntegratedPerformanceSystem: one report of everything the console measures, and
recommendations each tied to a measured finding (the number that triggered it is in the text).

Everything is read from what the workers wrote to Redis; nothing is re-measured here, so the
report is cheap enough for the Overview page, the /report.json and /report.html downloads and
the CLI (`python -m workers.report`).
"""
from __future__ import annotations

import html
import time

import redis

from core import alerting, health, metrics, runtime_config, schema
from core.cache import merge_statistics, read_statistics
from core.telemetry import query

WINDOW_S = 300
CPU_LIMIT_PCT = 80.0
CACHE_TARGET = 0.90
ORDER = {"critical": 0, "warning": 1, "info": 2}


def _cache_summary(client: redis.Redis) -> dict | None:
    merged = merge_statistics(read_statistics(client))
    return ({"requests": merged["requests"], "multitier_hit_rate": merged["multitier_hit_rate"]}
            if merged["requests"] else None)


def get_comprehensive_performance_report(client: redis.Redis, settings, now: float | None = None,
                                         window_s: int = WINDOW_S) -> dict:
    """The whole picture as JSON-ready data, with `recommendations` attached."""
    stats = query.get_latency_statistics(client, window_s=window_s, now=now)
    risk = schema.loads(client.get(schema.RISK_LATEST)) or {}
    config = runtime_config.current(client, settings)
    report = {
        "generated_at": time.time() if now is None else now,
        "window_s": window_s,
        "health": health.health_status(client, settings),
        "latency": stats,
        "bottleneck": query.identify_bottlenecks(stats),
        "throughput": {"target_ops_s": config["alerts.throughput_target_ops_s"],
                       **query.throughput_trend(client, "total_pipeline", window_s, now)},
        "system": metrics.latest_metrics(client) or {},
        # the console_memory_budget alert rule's budget (Settings page; the spec's 2 GB by default)
        "memory_budget_bytes": config["alerts.console_memory_budget_mib"] * runtime_config.MiB,
        "kernels": {"selection": schema.loads(client.get(schema.KERNELS_SELECTION)) or {},
                    "bench": schema.loads(client.get(schema.KERNELS_BENCH)) or {}},
        "model": schema.loads(client.get(schema.MODEL_METRICS)) or {},
        "cache": _cache_summary(client),
        "risk": {k: risk.get(k) for k in ("equity", "leverage", "n_positions", "var")} if risk else {},
        "alerts_firing": [r for r in alerting.rule_states(client, alerting.default_rules(config))
                          if r.get("state") == "firing"],
    }
    report["recommendations"] = generate_optimization_recommendations(report)
    return report


def _rec(area: str, severity: str, finding: str, action: str) -> dict:
    return {"area": area, "severity": severity, "finding": finding, "action": action}


def _latency_recs(report: dict) -> list[dict]:
    out = [_rec("latency", "critical",
                f"{o['stage']} p99 is {o['p99_us'] / 1000:.2f} ms, {o['excess_ratio']:.1f}x its "
                f"{o['threshold_us'] / 1000:g} ms threshold (last {report['window_s']} s)",
                "re-run kernels.optimize (backend and batch size) and check the stage's own code path")
           for o in report["bottleneck"].get("over_threshold", [])]
    b = report["bottleneck"]
    total = (report["latency"].get("total_pipeline") or {})
    if b.get("queueing_share") is not None and b["queueing_share"] > 0.5 and total.get("p99_us"):
        out.append(_rec("latency", "info",
                        f"queueing and scheduling delay is {100 * b['queueing_share']:.0f}% of the mean "
                        f"tick-to-order time ({b['queueing_us']:.0f} of {total['mean_us']:.0f} us; "
                        f"p99 {total['p99_us']:.0f} us)",
                        "the stages themselves are fast: give the pipeline a core of its own or move "
                        "heavy workers off this machine"))
    elif b.get("dominant_stage") and b.get("dominant_share"):
        out.append(_rec("latency", "info",
                        f"{b['dominant_stage']} is {100 * b['dominant_share']:.0f}% of the mean "
                        "tick-to-order time", f"optimize {b['dominant_stage']} first"))
    return out


def _kernel_recs(report: dict) -> list[dict]:
    out = []
    rows = report["kernels"]["bench"].get("rows") or []
    for kernel in sorted({r.get("kernel") for r in rows if r.get("kernel")}):
        ok = [r for r in rows if r.get("kernel") == kernel and r.get("ok") and r.get("ms")]
        selected = next((r for r in ok if r.get("selected")), None)
        numpy_row = next((r for r in ok if r.get("backend") == "numpy"), None)
        fastest = min(ok, key=lambda r: r["ms"], default=None)
        if selected and numpy_row and selected is not numpy_row:
            out.append(_rec("kernels", "info",
                            f"{kernel}: {selected['backend']} measured {numpy_row['ms'] / selected['ms']:.1f}x "
                            f"numpy ({selected['ms']:.1f} vs {numpy_row['ms']:.1f} ms) and is selected",
                            "keep; kernels.optimize re-checks it on schedule"))
        if selected and fastest and fastest["ms"] < 0.8 * selected["ms"]:
            out.append(_rec("kernels", "warning",
                            f"{kernel}: {fastest['backend']} ({fastest['ms']:.1f} ms) is faster than the "
                            f"selected {selected['backend']} ({selected['ms']:.1f} ms)",
                            "run kernels.optimize now"))
    model = report["model"]
    if model.get("ci_low") is not None and model["ci_low"] <= 0.5:
        out.append(_rec("model", "warning",
                        f"signal model out-of-sample hit rate {100 * model.get('hit_rate', 0):.2f}% with a "
                        f"95% CI reaching {100 * model['ci_low']:.2f}%: no demonstrated edge",
                        "retrain (scripts/train_model.py) or stop trading on it"))
    return out


def _resource_recs(report: dict) -> list[dict]:
    out, system = [], report["system"]
    cpu, rss = system.get("cpu_pct"), system.get("console_rss_bytes")
    if cpu is not None and cpu > CPU_LIMIT_PCT:
        out.append(_rec("system", "warning", f"CPU at {cpu:.0f}% (limit {CPU_LIMIT_PCT:.0f}%)",
                        "lower max_workers or move Celery workers to another machine"))
    budget = report["memory_budget_bytes"]
    if rss is not None and rss > 0.8 * budget:
        out.append(_rec("memory", "warning" if rss <= budget else "critical",
                        f"console processes use {rss / 1024**3:.2f} GiB of the {budget / 1024**3:g} GiB budget",
                        "run memory.optimize; fewer worker processes (each prefork child is counted)"))
    cache = report["cache"]
    if cache and cache["multitier_hit_rate"] < CACHE_TARGET:
        out.append(_rec("cache", "warning",
                        f"multi-tier cache hit rate {100 * cache['multitier_hit_rate']:.1f}% over "
                        f"{cache['requests']} requests (target {100 * CACHE_TARGET:.0f}%)",
                        "run cache.optimize (TTL per prefix, L1 size from the working set)"))
    trend = report["throughput"]
    if trend.get("ops_s") is not None and trend["ops_s"] < trend["target_ops_s"]:
        out.append(_rec("throughput", "warning",
                        f"throughput {trend['ops_s']:.0f} ticks/s under the {trend['target_ops_s']:.0f} target"
                        + (f", trend {trend['direction']} ({trend['slope_per_s']:+.2f}/s per s)"
                           if trend.get("slope_per_s") is not None else ""),
                        "check the pipeline's late ticks and the CPU"))
    return out


def generate_optimization_recommendations(report: dict) -> list[dict]:
    """Recommendations from a report's measurements, most severe first."""
    recs = _latency_recs(report) + _kernel_recs(report) + _resource_recs(report)
    recs += [_rec("alerts", r["severity"] if r["severity"] in ORDER else "warning",
                  f"alert rule {r['name']} is firing: {r['summary']}", "see the Alerts page")
             for r in report["alerts_firing"]]
    return sorted(recs, key=lambda r: ORDER.get(r["severity"], 3))


def render_html(report: dict) -> str:
    """A self-contained HTML page of the report (no external assets)."""
    esc = html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_at"]))
    recs = "".join(f"<tr><td>{esc(r['severity'])}</td><td>{esc(r['area'])}</td><td>{esc(r['finding'])}</td>"
                   f"<td>{esc(r['action'])}</td></tr>" for r in report["recommendations"])
    lat = "".join(
        f"<tr><td>{esc(stage)}</td><td>{s.get('count') or 0}</td>"
        + "".join(f"<td>{'' if s.get(k) is None else f'{s[k]:.0f}'}</td>" for k in
                  ("p50_us", "p95_us", "p99_us", "p999_us", "threshold_us"))
        + "</tr>" for stage, s in report["latency"].items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Performance report {esc(when)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse;margin-bottom:2em}</style></head><body>"
            f"<h1>Performance report</h1><p>{esc(when)}, window {report['window_s']} s, "
            f"overall health: {esc(report['health']['status'])}</p>"
            "<h2>Recommendations</h2><table><tr><th>Severity</th><th>Area</th><th>Finding</th>"
            f"<th>Action</th></tr>{recs or '<tr><td colspan=4>None</td></tr>'}</table>"
            "<h2>Latency (us)</h2><table><tr><th>Stage</th><th>Count</th><th>p50</th><th>p95</th>"
            f"<th>p99</th><th>p99.9</th><th>Threshold</th></tr>{lat}</table></body></html>")
