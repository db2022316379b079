"""Alert rules with an injected clock: fire only after `for`, resolve, never flap."""
from __future__ import annotations

import pytest

from core import alerting, alerts, schema
from core.settings import get_settings

CPU = alerting.Rule("cpu_high", "cpu_pct", ">", 80.0, 60.0, "warning", "CPU above 80 %")


def _run(client, seq, rules=(CPU,)):
    """Evaluate a (time, value) sequence; returns the events."""
    events = []
    for now, value in seq:
        events += alerting.evaluate(client, list(rules), {"cpu_pct": value}, now=now)
    return events


def test_rule_fires_only_after_its_for_duration_then_resolves(isolated_client):
    events = _run(isolated_client, [(0, 95), (30, 96), (59, 97)])
    assert events == [] and alerting.rule_states(isolated_client, [CPU])[0]["state"] == "pending"
    events = _run(isolated_client, [(60, 98)])
    assert [e["event"] for e in events] == ["fired"]
    [fired] = alerts.recent_alerts(isolated_client)
    assert fired["severity"] == "warning" and fired["source"] == "rule:cpu_high"
    assert "for 60 s" in fired["message"]
    assert [e["event"] for e in _run(isolated_client, [(61, 50)])] == ["resolved"]
    assert alerts.recent_alerts(isolated_client)[0]["severity"] == "info"


def test_short_spikes_never_fire_so_alerts_do_not_flap(isolated_client):
    seq = [(t, 95 if (t // 20) % 2 == 0 else 10) for t in range(0, 600, 5)]   # 20 s on, 20 s off
    assert _run(isolated_client, seq) == []
    assert alerts.recent_alerts(isolated_client) == []


def test_firing_rule_does_not_repeat_while_the_condition_holds(isolated_client):
    events = _run(isolated_client, [(t, 99) for t in range(0, 600, 2)])
    assert [e["event"] for e in events] == ["fired"]


def test_missing_data_neither_fires_nor_resolves(isolated_client):
    _run(isolated_client, [(0, 95), (60, 95)])
    assert _run(isolated_client, [(70, None), (500, None)]) == []
    assert alerting.rule_states(isolated_client, [CPU])[0]["state"] == "firing"


def test_acknowledge_and_manual_resolve_are_recorded_with_the_user(isolated_client):
    assert "not firing" in alerting.acknowledge(isolated_client, "cpu_high", "olga", now=1)
    _run(isolated_client, [(0, 95), (60, 95)])
    assert "acknowledged by olga" in alerting.acknowledge(isolated_client, "cpu_high", "olga", now=61)
    state = alerting.rule_states(isolated_client, [CPU])[0]
    assert state["state"] == "firing" and state["acked_by"] == "olga"
    alerting.resolve(isolated_client, "cpu_high", "olga", now=62)
    assert alerting.rule_states(isolated_client, [CPU])[0]["state"] == "ok"
    events = [h["event"] for h in alerting.history(isolated_client)]
    assert events == ["resolved", "acknowledged", "fired"]
    # still hot: it fires again only after a new full `for` duration
    assert _run(isolated_client, [(63, 95), (100, 95)]) == []
    assert [e["event"] for e in _run(isolated_client, [(123, 95)])] == ["fired"]


def test_default_rules_cover_the_spec_and_reject_unknown_metrics():
    rules = alerting.default_rules()
    names = {r.name for r in rules}
    assert {"cpu_high", "memory_high", "throughput_low", "latency_total_pipeline"} <= names
    assert next(r for r in rules if r.name == "latency_total_pipeline").severity == "critical"
    assert next(r for r in rules if r.name == "throughput_low").severity == "degraded"
    alerting.validate_rules(rules, get_settings().stage_thresholds_ms)
    with pytest.raises(ValueError, match="unknown metric"):
        alerting.validate_rules([alerting.Rule("x", "gpu_pct", ">", 1, 0, "info", "x")], [])
    with pytest.raises(ValueError, match="op"):
        alerting.Rule("x", "cpu_pct", ">=", 1, 0, "info", "x")
    with pytest.raises(ValueError, match="threshold"):
        alerting.Rule("x", "cpu_pct", ">", float("nan"), 0, "info", "x")


def test_measure_reads_stage_ratios_from_telemetry(isolated_client):
    values = alerting.measure(isolated_client)
    assert values["cpu_pct"] is None and values["p99_over_threshold:total_pipeline"] is None
    assert set(values) >= alerting.known_metrics(get_settings().stage_thresholds_ms)
    isolated_client.delete(schema.ALERTING_STATE)


def test_fired_rules_plan_their_recovery_once_per_task_and_it_is_logged(isolated_client):
    events = [{"rule": "memory_high", "event": "fired"}, {"rule": "console_memory_budget", "event": "fired"},
              {"rule": "latency_total_pipeline", "event": "fired"}, {"rule": "cpu_high", "event": "fired"},
              {"rule": "throughput_low", "event": "resolved"}]
    assert alerting.recovery_plan(events) == [("memory_high", "memory.optimize", {"trigger": "auto"}),
                                              ("latency_total_pipeline", "kernels.optimize", {})]
    alerting.record_recovery(isolated_client, "memory_high", "memory.optimize", now=5.0)
    [entry] = alerting.history(isolated_client)
    assert entry["event"] == "recovery" and entry["value"] == "memory.optimize"
    assert "automatic recovery: memory.optimize" in alerts.recent_alerts(isolated_client)[0]["message"]
