"""Hot reload across processes: settings saved after the real Celery worker and beat started
reach them without a restart (pub/sub listeners in the worker's pool processes and in beat),
and low throughput's automatic recovery changes settings as user "system", logged with its
figures before and after."""
from __future__ import annotations

import time

import numpy as np
import pytest

from celery_config import celery_app
from core import alerts, runtime_config as rc, schema
from core.memory import read_history
from core.telemetry.histogram import Histogram
from core.telemetry.rollup import GRACE_S, rollup
from tests.conftest import wait_for
from workers import alert_tasks

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(redis_client):
    """Database 0 (the worker's and beat's), put back to the default settings afterwards so
    the processes shared with later tests run with their defaults again."""
    yield redis_client
    rc.reset(redis_client, "tests")


def _total_pipeline_at(client, micros: int, seconds: int = 6) -> None:
    """Telemetry of `seconds` finalized seconds ending a second ago, every sample `micros` µs."""
    last = int(time.time()) - 1
    blob = Histogram.from_values(np.full(200, micros * 1000, dtype=np.int64)).encode()
    for sec in range(last - seconds + 1, last + 1):
        client.xadd(schema.TELE_RAW, {"proc": "t", "role": "test", "sec": str(sec), "h:total_pipeline": blob})
    rollup(client, now=last + GRACE_S + 0.5)


def _rule_state(client, rule: str) -> str | None:
    return (schema.read_json_hash(client, schema.ALERTING_STATE).get(rule) or {}).get("state")


def test_worker_alert_rules_fire_on_a_threshold_saved_after_the_worker_started(celery_worker_process, client):
    _total_pipeline_at(client, 500)                    # p99 0.5 ms: far under the default 100 ms
    alert_tasks.evaluate_task.delay()
    wait_for(lambda: _rule_state(client, "latency_total_pipeline") == "ok", 20, 0.2, "rule evaluated: ok")
    rc.apply(client, {"stage_ms.total_pipeline": 0.1, "alerts.latency_for_s": 0}, "tester")

    def fired():
        if _rule_state(client, "latency_total_pipeline") == "firing":
            return True
        _total_pipeline_at(client, 500)
        alert_tasks.evaluate_task.delay()
        return False
    wait_for(fired, 30, 1.0, "latency_total_pipeline firing on the worker")
    fired_alert = next(a for a in alerts.recent_alerts(client, 50)
                       if a["source"] == "rule:latency_total_pipeline" and a["severity"] == "critical")
    assert "0.1 ms threshold" in fired_alert["message"]
    assert "for 0 s" in fired_alert["message"]


def test_worker_safety_rules_use_the_saved_thresholds(celery_worker_process, client):
    rc.apply(client, {"safety.latency_threshold_ms": 0.25, "safety.latency_windows": 2,
                      "safety.latency_action": "alert"}, "tester")

    def evaluated_with_new_threshold():
        client.delete(schema.SAFETY_LOCK)
        celery_app.send_task("safety.evaluate")
        time.sleep(0.3)
        status = schema.loads(client.get(schema.SAFETY_STATUS)) or {}
        return next((r for r in status.get("rules", []) if r["name"] == "latency" and r["threshold"] == 0.25), None)
    wait_for(evaluated_with_new_threshold, 30, 0.2, "safety.evaluate with latency threshold 0.25 ms")


def test_worker_memory_optimize_uses_the_saved_thresholds(celery_worker_process, client):
    rc.apply(client, {"gc_threshold_pct": 97, "memory_threshold_pct": 98}, "tester")
    celery_app.send_task("memory.optimize", kwargs={"trigger": "manual"})
    run = wait_for(lambda: next(iter(read_history(client, "memory", 5)), None), 60, 0.5, "memory.optimize run")
    assert run["thresholds"] == {"gc_pct": 97.0, "memory_pct": 98.0}


def test_beat_adopts_new_collection_intervals_without_a_restart(celery_beat_process, client):
    def beat_schedule():
        rows = [r for r in rc.applied(client) if r["role"] == "beat"]
        return rows and (rows[0].get("detail") or {}).get("schedule")
    assert wait_for(beat_schedule, 20, 0.2, "beat reporting its schedule")["metrics.collect"] == 1.0
    rc.apply(client, {"metrics_interval_s": 3, "risk_interval_s": 15}, "tester")
    wait_for(lambda: (beat_schedule() or {}).get("metrics.collect") == 3.0, 20, 0.2, "beat at 3 s")
    assert beat_schedule()["risk.compute"] == 15.0
    rc.reset(client, "tester")
    wait_for(lambda: (beat_schedule() or {}).get("metrics.collect") == 1.0, 20, 0.2, "beat back at 1 s")


def test_low_throughput_recovery_changes_settings_as_system_with_figures(celery_worker_process, client):
    _total_pipeline_at(client, 500)
    before = rc.current(client)
    alert_tasks.recover_throughput.delay(effect_delay_s=1.0)
    [change] = wait_for(lambda: rc.history(client, 5), 20, 0.2, "the recovery's settings change")
    assert change["user"] == "system" and change["source"] == "recovery" and change["changes"]
    for c in change["changes"]:
        assert c["new"] > c["old"] == before[c["key"]]
        assert c["key"] in ("max_workers", "cache_max_entries", "cache_ttl_s")
    messages = lambda: [a["message"] for a in alerts.recent_alerts(client, 20)]  # noqa: E731
    wait_for(lambda: any(m.startswith("recovery effect:") for m in messages()), 30, 0.3, "the effect logged")
    action = next(m for m in messages() if m.startswith("automatic recovery:"))
    effect = next(m for m in messages() if m.startswith("recovery effect:"))
    assert "->" in action and "throughput" in action and "ticks/s ->" in effect
