"""The Prometheus exposition: parseable, cumulative stage histograms, the console's figures."""
from __future__ import annotations

import numpy as np

from core import alerts, prometheus, schema
from core.settings import get_settings
from core.telemetry.rollup import GRACE_S, rollup
from tests.core.test_telemetry_rollup import BASE, flush


def _parse(text: str) -> dict[str, float]:
    """name{labels} -> value, checking every line is a comment or a `name value` sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_stage_histogram_is_cumulative_across_rollups_with_le_buckets(redis_client):
    flush(redis_client, "p1", BASE, {"data_processing": [800, 3000, 40_000]})
    rollup(redis_client, now=BASE + GRACE_S + 0.5)
    flush(redis_client, "p1", BASE + 1, {"data_processing": [2_000_000]})
    rollup(redis_client, now=BASE + 1 + GRACE_S + 0.5)
    rollup(redis_client, now=BASE + 1 + GRACE_S + 0.9)          # a rerun adds nothing
    s = _parse(prometheus.render(redis_client, get_settings()))
    bucket = 'console_stage_latency_seconds_bucket{stage="data_processing",le="%s"}'
    assert s[bucket % "1e-06"] == 1 and s[bucket % "5e-06"] == 2
    assert s[bucket % "5e-05"] == 3 and s[bucket % "0.0025"] == 4 and s[bucket % "+Inf"] == 4
    assert s['console_stage_latency_seconds_count{stage="data_processing"}'] == 4
    assert np.isclose(s['console_stage_latency_seconds_sum{stage="data_processing"}'], 2_043_800e-9)
    assert s['console_stage_threshold_seconds{stage="total_pipeline"}'] == 0.1


def test_trading_state_alert_counts_and_pipeline_counters_are_exported(redis_client):
    redis_client.set(schema.TRADING_STATE, "HALTED")
    redis_client.set(schema.PIPELINE_STATUS, schema.dumps({"ticks_total": 1234, "orders_total": 5}))
    alerts.raise_alert(redis_client, "critical", "test", "boom")
    alerts.raise_alert(redis_client, "warning", "test", "hm")
    s = _parse(prometheus.render(redis_client, get_settings()))
    assert s['console_trading_state{state="HALTED"}'] == 1 and s['console_trading_state{state="ACTIVE"}'] == 0
    assert s['console_alerts_total{severity="critical"}'] == 1
    assert s['console_alerts_total{severity="info"}'] == 0
    assert s["console_pipeline_ticks_total"] == 1234 and s['console_up{part="redis"}'] == 1


def test_redis_unreachable_exports_only_up_gauges():
    from tests.conftest import free_port
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    s = _parse(prometheus.render(dead, get_settings()))
    assert s['console_up{part="redis"}'] == 0
    assert not any(k.startswith("console_stage") for k in s)


def test_corrupt_cumulative_blob_is_exported_as_empty_not_a_crash(redis_client):
    redis_client.set(schema.tele_cumulative_hist("total_pipeline"), b"garbage")
    s = _parse(prometheus.render(redis_client, get_settings()))
    assert s['console_stage_latency_seconds_count{stage="total_pipeline"}'] == 0
