"""Each group of settings is read live by its consumer: a change saved through
runtime_config.apply reaches the code that uses it without a restart (here through a real
listener on its own thread; tests/workers/test_config_hot_reload.py does it across processes)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.beat import ScheduleEntry

from core import alerting, prometheus, runtime_config as rc
from core.cache import CacheManager
from core.limits import REJECT_LEVERAGE, LimitMonitor
from core.optimizer import enabled_backends
from core.settings import get_settings
from core.telemetry import query
from tests.conftest import wait_for

DB = 2


@pytest.fixture
def live(own_db, redis_url):
    cfg = rc.LiveConfig(redis_url.rsplit("/", 1)[0] + f"/{DB}", "test", poll_s=0.5).start()
    yield cfg
    cfg.stop()


def _save(client, live, changes: dict) -> None:
    version = rc.apply(client, changes, "tester")["version"]
    wait_for(lambda: live.version == version, 5, 0.02, f"listener at v{version}")


def test_latency_thresholds_reach_the_query_the_alert_rules_and_metrics(own_db):
    rc.apply(own_db, {"stage_ms.total_pipeline": 0.25, "alerts.latency_for_s": 2}, "tester")
    assert query.registered_stages(own_db)["total_pipeline"] == 0.25
    assert query.get_latency_statistics(own_db, 10)["total_pipeline"]["threshold_us"] == 250.0
    rule = next(r for r in alerting.default_rules(rc.current(own_db)) if r.name == "latency_total_pipeline")
    assert rule.for_s == 2 and "0.25 ms" in rule.summary
    assert 'console_stage_threshold_seconds{stage="total_pipeline"} 0.00025' in \
        prometheus.render(own_db, get_settings())


def test_alert_rule_thresholds_and_for_durations_follow_the_settings(own_db, live):
    _save(own_db, live, {"alerts.cpu_pct": 95, "memory_threshold_pct": 90, "alerts.throughput_target_ops_s": 400,
                         "alerts.resource_for_s": 5, "alerts.console_memory_budget_mib": 1024})
    rules = {r.name: r for r in alerting.default_rules(live.values)}
    assert (rules["cpu_high"].threshold, rules["cpu_high"].for_s) == (95, 5)
    assert rules["memory_high"].threshold == 90 and rules["throughput_low"].threshold == 400
    assert rules["console_memory_budget"].threshold == 1024**3
    events = alerting.evaluate(own_db, [rules["cpu_high"]], {"cpu_pct": 92.0}, now=0)
    assert events == []                                   # 92 % is under the new 95 % threshold


def test_memory_thresholds_reach_the_optimizer_settings(own_db, live):
    _save(own_db, live, {"gc_threshold_pct": 50, "memory_threshold_pct": 60})
    s = rc.effective_settings(live.values)
    assert (s.gc_threshold_pct, s.memory_threshold_pct) == (50.0, 60.0)
    assert s.redis_url == get_settings().redis_url        # everything else is the environment's


def test_cache_ttl_and_size_are_applied_by_the_listener_callback(own_db, live):
    cache = CacheManager(None, max_entries=100, default_ttl_s=300, record_telemetry=False)
    cache.follow_config(live)
    for i in range(10):
        cache.set(f"k:{i}", i)
    _save(own_db, live, {"cache_max_entries": 3, "cache_ttl_s": 5})
    assert (cache.max_entries, cache.default_ttl_s) == (3, 5.0)
    assert cache.get_cache_statistics()["l1"]["size"] == 3


def test_risk_limits_and_safety_rules_reach_the_pipeline_runner(own_db, live):
    from workers.pipeline_runner import Runner
    runner = SimpleNamespace(limits=LimitMonitor(), safety_config=None, safety_interval_s=1.0)
    live.on_change(lambda values, changed: Runner._on_config(runner, values))
    ok, _ = runner.limits.check_order(0, 10, 100.0, gross=0, net=0, equity=1000.0, day_start_equity=1000.0)
    assert ok
    _save(own_db, live, {"limits.max_leverage": 0.5, "limits.max_position_per_symbol": "",
                         "safety.latency_threshold_ms": 7, "safety_interval_s": 0.5})
    assert runner.limits.check_order(0, 10, 100.0, gross=0, net=0, equity=1000.0,
                                     day_start_equity=1000.0) == (False, REJECT_LEVERAGE)
    assert runner.limits.config.max_position_per_symbol is None
    assert runner.safety_config.latency_threshold_ms == 7.0 and runner.safety_interval_s == 0.5


def test_optimization_flags_and_max_workers_reach_the_kernel_selection(own_db, live):
    assert "numba" in enabled_backends(rc.effective_settings(live.values))
    _save(own_db, live, {"numba_enabled": False, "max_workers": 1})
    s = rc.effective_settings(live.values)
    assert "numba" not in enabled_backends(s) and s.max_workers == 1


def test_beat_entries_take_new_periods_with_their_expiry_policy(own_db, live):
    from celery_config import celery_app
    from workers.health import apply_intervals, period_s
    entries = {"metrics.collect": ScheduleEntry("metrics.collect", "metrics.collect", schedule=1.0,
                                                options={"expires": 2.0}, app=celery_app),
               "risk.compute": ScheduleEntry("risk.compute", "risk.compute", schedule=5.0,
                                             options={"expires": 5.0}, app=celery_app)}
    assert apply_intervals(entries, live.values, celery_app) == {}
    _save(own_db, live, {"metrics_interval_s": 3, "risk_interval_s": 20})
    changed = apply_intervals(entries, live.values, celery_app)
    assert changed == {"metrics.collect": (1.0, 3.0), "risk.compute": (5.0, 20.0)}
    assert period_s(entries["metrics.collect"]) == 3.0 and entries["metrics.collect"].options["expires"] == 6.0
    assert entries["risk.compute"].options["expires"] == 20.0


def test_low_throughput_recovery_adds_workers_then_caching_within_bounds():
    base = rc.defaults()
    values = {**base, "max_workers": 2}
    assert alerting.throughput_recovery(values, base, cpu_count=8) == {"max_workers": 4}
    assert alerting.throughput_recovery({**values, "max_workers": 6}, base, cpu_count=8) == {"max_workers": 8}
    more = alerting.throughput_recovery({**values, "max_workers": 8}, base, cpu_count=8)
    assert more == {"cache_max_entries": 2 * base["cache_max_entries"], "cache_ttl_s": 2 * base["cache_ttl_s"]}
    capped = {**values, "max_workers": 8, "cache_max_entries": 8 * base["cache_max_entries"],
              "cache_ttl_s": 8 * base["cache_ttl_s"]}
    assert alerting.throughput_recovery(capped, base, cpu_count=8) == {}
    assert rc.validate(more) == (more, {})
