"""The comprehensive report and its recommendations, each tied to a measured number."""
from __future__ import annotations

import json

from core import report, schema
from core.settings import get_settings


def _report(latency=None, bottleneck=None, system=None, bench=None, model=None, cache=None,
            throughput=None, firing=(), budget=2 * 1024**3):
    return {"window_s": 300, "latency": latency or {}, "bottleneck": bottleneck or {},
            "system": system or {}, "memory_budget_bytes": budget,
            "kernels": {"selection": {}, "bench": bench or {}},
            "model": model or {}, "cache": cache, "alerts_firing": list(firing),
            "throughput": throughput or {"target_ops_s": 900.0, "ops_s": None}}


def test_stage_over_threshold_is_critical_and_quotes_the_measured_ratio():
    rep = _report(bottleneck={"over_threshold": [{"stage": "model_inference", "p99_us": 250_000.0,
                                                  "threshold_us": 100_000.0, "excess_ratio": 2.5}]})
    [rec] = report.generate_optimization_recommendations(rep)
    assert rec["severity"] == "critical" and "250.00 ms, 2.5x its 100 ms threshold" in rec["finding"]


def test_kernel_speedup_and_a_faster_unselected_backend_are_reported_with_timings():
    rows = [{"kernel": "squash", "backend": "numpy", "ms": 145.0, "ok": True, "selected": False},
            {"kernel": "squash", "backend": "numba", "ms": 10.8, "ok": True, "selected": True},
            {"kernel": "ewma", "backend": "numpy", "ms": 10.0, "ok": True, "selected": True},
            {"kernel": "ewma", "backend": "numba", "ms": 2.0, "ok": True, "selected": False}]
    recs = report.generate_optimization_recommendations(_report(bench={"rows": rows}))
    text = " | ".join(r["finding"] for r in recs)
    assert "squash: numba measured 13.4x numpy (10.8 vs 145.0 ms) and is selected" in text
    assert "ewma: numba (2.0 ms) is faster than the selected numpy (10.0 ms)" in text
    assert recs[0]["severity"] == "warning"                       # most severe first


def test_resources_cache_model_and_throughput_findings():
    rep = _report(system={"cpu_pct": 91.0, "console_rss_bytes": 1.9 * 1024**3},
                  cache={"requests": 1000, "multitier_hit_rate": 0.62},
                  model={"hit_rate": 0.501, "ci_low": 0.49},
                  throughput={"target_ops_s": 900.0, "ops_s": 700.0, "direction": "down",
                              "slope_per_s": -2.0})
    areas = {r["area"]: r for r in report.generate_optimization_recommendations(rep)}
    assert "CPU at 91%" in areas["system"]["finding"]
    assert "1.90 GiB of the 2 GiB budget" in areas["memory"]["finding"]
    assert "62.0% over 1000 requests" in areas["cache"]["finding"]
    assert "no demonstrated edge" in areas["model"]["finding"]
    assert "700 ticks/s under the 900 target, trend down" in areas["throughput"]["finding"]
    assert report.generate_optimization_recommendations(_report()) == []


def test_memory_finding_uses_the_configured_budget():
    half = _report(system={"console_rss_bytes": 1.2 * 1024**3}, budget=1024**3)
    [rec] = report.generate_optimization_recommendations(half)
    assert rec["severity"] == "critical" and "1.20 GiB of the 1 GiB budget" in rec["finding"]
    assert report.generate_optimization_recommendations(_report(system={"console_rss_bytes": 1.2 * 1024**3})) == []


def test_live_report_from_redis_is_json_and_html_even_with_no_data(isolated_client):
    rep = report.get_comprehensive_performance_report(isolated_client, get_settings())
    json.dumps(rep)
    assert rep["memory_budget_bytes"] == 2048 * 1024**2           # the alert rule's default budget
    assert set(rep["latency"]) >= {"total_pipeline", "data_processing"}
    page = report.render_html(rep)
    assert page.startswith("<!DOCTYPE html>") and "Recommendations" in page and "http" not in page
    isolated_client.set(schema.MODEL_METRICS, schema.dumps({"hit_rate": 0.52, "ci_low": 0.51}))
    assert report.get_comprehensive_performance_report(isolated_client, get_settings())["model"]["ci_low"] == 0.51
