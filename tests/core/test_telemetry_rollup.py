"""Rollup of raw per-process flushes into per-second and per-minute series."""
from __future__ import annotations

import numpy as np
import pytest

from core import schema
from core.telemetry.histogram import Histogram
from core.telemetry.rollup import GRACE_S, rollup, unpack_member

BASE = 1_700_000_020                       # 20 s before a minute boundary (1_700_000_040)


def flush(client, proc: str, second: int, samples: dict, delay_ms: int = 0) -> None:
    """Write a raw entry the way a flusher does, stamped when that flusher would write it."""
    fields = {"proc": proc, "role": "test", "sec": str(second)}
    fields.update({f"h:{st}": Histogram.from_values(np.asarray(v, dtype=np.int64)).encode()
                   for st, v in samples.items()})
    ts = (second + 1) * 1000 + delay_ms
    last = client.xrevrange(schema.TELE_RAW, count=1)
    seq = 0
    if last and int(last[0][0].split(b"-")[0]) >= ts:
        ts, seq = int(last[0][0].split(b"-")[0]), int(last[0][0].split(b"-")[1]) + 1
    client.xadd(schema.TELE_RAW, fields, id=f"{ts}-{seq}")


def summaries(client, stage):
    return [schema.loads(m) for m in client.zrange(schema.tele_sec_summary(stage), 0, -1)]


def test_rollup_merges_two_processes_flushes_for_the_same_second(redis_client):
    rng = np.random.default_rng(1)
    a, b = rng.integers(1000, 10**6, 500), rng.integers(10**6, 10**8, 300)
    flush(redis_client, "p1", BASE, {"alpha": a})
    flush(redis_client, "p2", BASE, {"alpha": b, "beta": [5]})
    report = rollup(redis_client, now=BASE + GRACE_S + 0.5)
    assert report == {"last": BASE, "entries": 2, "seconds": 2, "minutes": 2, "bad": 0, "late": 0}
    both = np.concatenate([a, b])
    [s] = summaries(redis_client, "alpha")
    assert set(s) == {"t", "count", "ops_s", "mean_us", "p50_us", "p95_us", "p99_us", "p999_us",
                      "max_us"}
    assert s["t"] == BASE and s["count"] == 800 and s["ops_s"] == 800.0
    assert s["max_us"] == both.max() / 1000 and s["mean_us"] == pytest.approx(both.mean() / 1000)
    exact_p99 = np.percentile(both, 99, method="inverted_cdf") / 1000
    assert s["p99_us"] == pytest.approx(exact_p99, rel=1 / 256)
    [blob] = redis_client.zrange(schema.tele_sec_hist("alpha"), 0, -1)
    assert Histogram.decode(unpack_member(blob)) == Histogram.from_values(both)
    [minute] = redis_client.zrange(schema.tele_min_hist("alpha"), 0, -1, withscores=True)
    assert minute[1] == BASE - BASE % 60
    assert int(redis_client.get(schema.TELE_ROLLUP_LAST)) == BASE


def test_second_is_finalized_only_after_the_grace_so_late_flushes_count(redis_client):
    flush(redis_client, "p1", BASE, {"alpha": [1000]})
    rollup(redis_client, now=BASE + GRACE_S - 0.5)
    assert summaries(redis_client, "alpha") == []
    flush(redis_client, "p2", BASE, {"alpha": [2000]}, delay_ms=1500)   # a slow process
    rollup(redis_client, now=BASE + GRACE_S + 0.5)
    assert [s["count"] for s in summaries(redis_client, "alpha")] == [2]


def test_flush_arriving_after_finalization_is_reported_late_not_merged(redis_client):
    flush(redis_client, "p1", BASE, {"alpha": [1000]})
    rollup(redis_client, now=BASE + GRACE_S + 0.5)
    flush(redis_client, "p2", BASE, {"alpha": [2000]}, delay_ms=10_000)
    flush(redis_client, "p1", BASE + 10, {"alpha": [3000]})
    report = rollup(redis_client, now=BASE + 10 + GRACE_S + 0.5)
    assert report["late"] == 1 and report["seconds"] == 1
    assert [s["count"] for s in summaries(redis_client, "alpha")] == [1, 1]


def test_rollup_twice_overwrites_instead_of_duplicating(redis_client):
    for sec in range(BASE, BASE + 5):
        flush(redis_client, "p1", sec, {"alpha": [sec % 7 + 1]})
    rollup(redis_client, now=BASE + 10)
    keys = [schema.tele_sec_summary("alpha"), schema.tele_sec_hist("alpha"), schema.tele_min_hist("alpha")]
    first = [redis_client.zrange(k, 0, -1, withscores=True) for k in keys]
    assert rollup(redis_client, now=BASE + 10)["seconds"] == 0     # nothing new
    redis_client.delete(schema.TELE_ROLLUP_LAST)                   # forget progress: redo all
    assert rollup(redis_client, now=BASE + 10)["seconds"] == 5
    assert [redis_client.zrange(k, 0, -1, withscores=True) for k in keys] == first


def test_undecodable_raw_entry_is_skipped_and_counted_rest_is_rolled_up(redis_client, caplog):
    flush(redis_client, "p1", BASE, {"alpha": [1000]})
    redis_client.xadd(schema.TELE_RAW, {"proc": "p2", "sec": str(BASE), "h:alpha": b"garbage",
                                        "h:beta": Histogram.from_values([7]).encode()})
    redis_client.xadd(schema.TELE_RAW, {"proc": "p3", "sec": "not-a-number"})
    report = rollup(redis_client, now=BASE + GRACE_S + 1)
    assert report["bad"] == 2
    assert [s["count"] for s in summaries(redis_client, "alpha")] == [1]
    assert [s["count"] for s in summaries(redis_client, "beta")] == [1]
    assert "stage 'alpha' skipped: histogram blob too short" in caplog.text
    assert "has no valid 'sec'" in caplog.text


def test_minute_histogram_is_the_merge_of_all_its_seconds_across_runs(redis_client):
    minute = BASE + 20
    values = {sec: [10 * (sec - minute + 1)] * 3 for sec in range(minute, minute + 60)}
    for sec in range(minute, minute + 30):
        flush(redis_client, "p1", sec, {"alpha": values[sec]})
    rollup(redis_client, now=minute + 29 + GRACE_S)
    for sec in range(minute + 30, minute + 60):
        flush(redis_client, "p1", sec, {"alpha": values[sec]})
    rollup(redis_client, now=minute + 60 + GRACE_S)
    members = redis_client.zrange(schema.tele_min_hist("alpha"), 0, -1, withscores=True)
    assert [score for _, score in members] == [minute]
    expected = Histogram.from_values(np.concatenate(list(values.values())))
    assert Histogram.decode(unpack_member(members[0][0])) == expected


def test_second_series_is_trimmed_to_its_retention(redis_client):
    old = BASE - schema.SECOND_SERIES_RETENTION_S - 10
    flush(redis_client, "p1", old, {"alpha": [1]})
    rollup(redis_client, now=old + GRACE_S + 1)
    flush(redis_client, "p1", BASE, {"alpha": [1]})
    rollup(redis_client, now=BASE + GRACE_S + 1)
    assert [s["t"] for s in summaries(redis_client, "alpha")] == [BASE]


def test_ten_second_summaries_merge_their_seconds_and_count_ops_over_finalized_seconds(redis_client):
    first = BASE - BASE % 10
    for second in range(first, first + 4):
        flush(redis_client, "p1", second, {"alpha": [1000 * (second - first + 1)] * 100})
    rollup(redis_client, now=first + 3 + GRACE_S + 0.5)
    [block] = [schema.loads(m) for m in redis_client.zrange(schema.tele_10s_summary("alpha"), 0, -1)]
    assert block["t"] == first and block["count"] == 400
    assert block["ops_s"] == 100.0            # 4 finalized seconds so far, not 10
    assert block["max_us"] == 4.0
    from core.telemetry.query import stage_series
    series = stage_series(redis_client, "alpha", 60, now=first + 10, resolution_s=10)
    assert [row["count"] for row in series] == [400]
    with pytest.raises(ValueError, match="resolution_s"):
        stage_series(redis_client, "alpha", 60, resolution_s=5)
