"""Query API used by the dashboard: exact shapes, window merging, trend, bottlenecks, speed."""
from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from core import schema
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS
from core.telemetry.histogram import Histogram
from core.telemetry.query import (get_latency_statistics, identify_bottlenecks,
                                  latency_distribution, stage_series, throughput_trend, trend_of,
                                  window_histogram)
from core.telemetry.rollup import GRACE_S, pack_member, rollup, summarize
from tests.core.test_telemetry_rollup import flush

M0 = 1_700_000_040                                      # a minute boundary
SERIES_KEYS = {"t", "count", "ops_s", "mean_us", "p50_us", "p95_us", "p99_us", "p999_us", "max_us"}
STATS_KEYS = SERIES_KEYS - {"t"} | {"threshold_us", "over_threshold"}


def _register(client, stages: dict) -> None:
    client.hset(schema.TELE_STAGES, mapping={k: schema.dumps({"threshold_ms": v})
                                             for k, v in stages.items()})


def _samples(second: int, stage: str) -> np.ndarray:
    rng = np.random.default_rng(second * 31 + len(stage))
    return rng.lognormal(11, 1, 40 + second % 7).astype(np.int64)


@pytest.fixture
def rolled(redis_client):
    """150 s of data (M0-20 .. M0+129) for two stages, rolled up as the worker would."""
    _register(redis_client, {"alpha": 0.1, "total_pipeline": 100.0, "idle": 5.0})
    for sec in range(M0 - 20, M0 + 130):
        flush(redis_client, "p1", sec, {"alpha": _samples(sec, "alpha"),
                                        "total_pipeline": _samples(sec, "total_pipeline") * 3})
        if sec % 20 == 0:
            rollup(redis_client, now=sec + GRACE_S)
    rollup(redis_client, now=M0 + 129 + GRACE_S)
    return redis_client


def test_window_histogram_over_minute_and_second_blobs_equals_merging_raw_samples(rolled):
    for start, end in [(M0 - 10, M0 + 125), (M0, M0 + 59), (M0 + 5, M0 + 50), (M0 - 20, M0 + 129)]:
        expected = Histogram.from_values(np.concatenate(
            [_samples(s, "alpha") for s in range(start, end + 1)]))
        assert window_histogram(rolled, "alpha", start, end) == expected, (start, end)


def test_latency_statistics_shape_values_and_idle_stage(rolled):
    stats = get_latency_statistics(rolled, window_s=60, now=M0 + 200)
    assert set(stats) == {"alpha", "idle"} | set(DEFAULT_STAGE_THRESHOLDS_MS)   # spec's 7 always
    assert all(set(s) == STATS_KEYS for s in stats.values())
    raw = np.concatenate([_samples(s, "alpha") for s in range(M0 + 70, M0 + 130)])
    alpha = stats["alpha"]
    assert alpha["count"] == raw.size and alpha["ops_s"] == raw.size / 60
    assert alpha["p99_us"] == pytest.approx(np.percentile(raw, 99, method="inverted_cdf") / 1000,
                                            rel=1 / 256)
    assert alpha["threshold_us"] == 100.0 and alpha["over_threshold"] is True
    assert stats["total_pipeline"]["over_threshold"] is False
    assert stats["total_pipeline"]["threshold_us"] == 100_000.0 and stats["cache_access"]["count"] == 0
    assert stats["idle"] == {"count": 0, "ops_s": 0.0, "mean_us": None, "p50_us": None,
                             "p95_us": None, "p99_us": None, "p999_us": None, "max_us": None,
                             "threshold_us": 5000.0, "over_threshold": False}


def test_ops_per_second_counts_only_the_part_of_the_window_since_the_first_sample(rolled):
    stats = get_latency_statistics(rolled, window_s=3600, now=M0 + 129)
    total = sum(_samples(s, "alpha").size for s in range(M0 - 20, M0 + 130))
    assert stats["alpha"]["count"] == total and stats["alpha"]["ops_s"] == total / 150


def test_stage_series_is_one_summary_per_second_oldest_first(rolled):
    series = stage_series(rolled, "alpha", 30, now=M0 + 129)
    assert [p["t"] for p in series] == list(range(M0 + 100, M0 + 130))
    assert all(set(p) == SERIES_KEYS for p in series)
    assert series[0]["count"] == _samples(M0 + 100, "alpha").size
    assert stage_series(rolled, "nothing_here", 30, now=M0 + 129) == []


def test_windows_end_at_the_last_rolled_up_second(rolled):
    # now is later than the rollup's progress: seconds still in grace must not count as empty
    assert stage_series(rolled, "alpha", 5, now=M0 + 10_000)[-1]["t"] == M0 + 129


def test_latency_distribution_is_a_bounded_monotone_cdf(rolled):
    dist = latency_distribution(rolled, "alpha", 150, now=M0 + 129)
    assert set(dist) == {"values_us", "cdf"}
    assert 10 < len(dist["values_us"]) == len(dist["cdf"]) <= 300
    assert np.all(np.diff(dist["values_us"]) > 0) and np.all(np.diff(dist["cdf"]) > 0)
    assert dist["cdf"][-1] == 1.0
    assert latency_distribution(rolled, "idle", 60) == {"values_us": [], "cdf": []}


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "60", None])
def test_bad_window_is_a_clear_value_error(rolled, bad):
    with pytest.raises(ValueError, match="window_s"):
        get_latency_statistics(rolled, window_s=bad)


def test_trend_flat_up_and_down_on_constructed_series():
    rng = np.random.default_rng(0)
    t = list(range(100, 160))
    noise = rng.normal(0, 20, len(t))
    flat = trend_of(t, list(1000 + noise))
    up = trend_of(t, [1000 + 5 * i + n for i, n in enumerate(noise)])
    down = trend_of(t, [1000 - 5 * i + n for i, n in enumerate(noise)])
    assert flat["direction"] == "flat" and flat["ci_low"] < 0 < flat["ci_high"]
    assert up["direction"] == "up" and up["slope_per_s"] == pytest.approx(5, abs=0.5)
    assert down["direction"] == "down" and down["ci_high"] < 0
    assert set(up) == {"ops_s", "slope_per_s", "ci_low", "ci_high", "direction", "n"} and up["n"] == 60
    assert trend_of([], []) == {"ops_s": None, "slope_per_s": None, "ci_low": None,
                                "ci_high": None, "direction": "flat", "n": 0}
    assert trend_of([1, 2], [5.0, 6.0])["slope_per_s"] is None


def test_throughput_trend_reads_per_second_ops_from_the_rollup(rolled):
    trend = throughput_trend(rolled, "alpha", 150, now=M0 + 129)
    counts = [_samples(s, "alpha").size for s in range(M0 - 20, M0 + 130)]
    assert trend["n"] == 150 and trend["ops_s"] == pytest.approx(np.mean(counts))
    assert trend["direction"] == "flat"     # periodic counts: no trend


def test_bottlenecks_weigh_stages_per_tick_and_report_threshold_excess():
    def row(mean, p99, threshold, count=1000):
        return {"mean_us": mean, "p99_us": p99, "threshold_us": threshold, "count": count}
    stats = {"total_pipeline": row(1000.0, 3000.0, 100_000.0),
             "data_processing": row(200.0, 900.0, 50_000.0),
             "model_inference": row(600.0, 250_000.0, 100_000.0),
             # runs on 1 tick in 100: 1000 us per call is only 10 us per tick
             "order_execution": row(1000.0, 2000.0, 50_000.0, count=10),
             "cache_access": row(5.0, 1500.0, 1000.0),
             "idle": row(None, None, 10_000.0, count=0)}
    out = identify_bottlenecks(stats)
    assert out["dominant_stage"] == "model_inference" and out["dominant_share"] == 0.6
    assert out["per_tick_us"] == {"data_processing": 200.0, "model_inference": 600.0,
                                  "order_execution": 10.0}
    assert out["queueing_us"] == pytest.approx(190.0) and out["queueing_share"] == pytest.approx(0.19)
    assert out["over_threshold"] == [
        {"stage": "model_inference", "p99_us": 250_000.0, "threshold_us": 100_000.0, "excess_ratio": 2.5},
        {"stage": "cache_access", "p99_us": 1500.0, "threshold_us": 1000.0, "excess_ratio": 1.5}]
    empty = identify_bottlenecks({})
    assert empty["dominant_stage"] is None and empty["over_threshold"] == [] and empty["queueing_us"] is None


def _write_hour(client, stages: list[str], end: int) -> None:
    """An hour of rolled-up data for each stage, written straight into the series keys."""
    blobs = [Histogram.from_values(_samples(i, "x")) for i in range(60)]
    pipe = client.pipeline(transaction=False)
    for stage in stages:
        for sec in range(end - 3599, end + 1):
            h = blobs[sec % 60]
            pipe.zadd(schema.tele_sec_hist(stage), {pack_member(sec, h.encode()): sec})
            pipe.zadd(schema.tele_sec_summary(stage), {schema.dumps(summarize(sec, h)): sec})
        for minute in range((end - 3599) // 60 * 60, end + 1, 60):
            pipe.zadd(schema.tele_min_hist(stage),
                      {pack_member(minute, Histogram.merged(blobs).encode()): minute})
    pipe.execute()
    client.set(schema.TELE_ROLLUP_LAST, end)


@pytest.mark.timeout(60)
def test_each_query_answers_a_60_minute_window_of_8_stages_well_under_100_ms(redis_client):
    stages = [f"stage_{i}" for i in range(8)]
    end = M0 + 3600 + 17
    _register(redis_client, {s: 10.0 for s in stages})
    _write_hour(redis_client, stages, end)
    calls = {
        "get_latency_statistics": lambda: get_latency_statistics(redis_client, 3600, now=end),
        "stage_series": lambda: stage_series(redis_client, "stage_0", 3600, now=end),
        "latency_distribution": lambda: latency_distribution(redis_client, "stage_0", 3600, now=end),
        "throughput_trend": lambda: throughput_trend(redis_client, "stage_0", 3600, now=end),
    }
    assert get_latency_statistics(redis_client, 3600, now=end)["stage_7"]["count"] > 3600 * 40
    for name, call in calls.items():
        times = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        assert statistics.median(times) < 0.1, (name, times)
