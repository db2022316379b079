"""CacheManager: LRU/TTL with an injected clock, tier fall-through and fill, tier policy by
measurement, stampede protection, failure handling, serialization, cross-process invalidation
with two real processes, and the optimizer's decisions on synthetic access logs."""
from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from core import cache, schema
from tests.conftest import free_port

DB = 4


@pytest.fixture
def r(own_db):
    return own_db


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_l1_evicts_least_recently_used_when_over_entry_bound():
    cm = cache.CacheManager(None, max_entries=3, record_telemetry=False)
    for k in "abc":
        cm.set(f"p:{k}", k)
    assert cm.get_l1("p:a") == "a"          # a becomes most recent
    cm.set("p:d", "d")                      # evicts b, the least recently used
    assert cm.get_l1("p:b") is None
    assert [cm.get_l1(f"p:{k}") for k in "acd"] == ["a", "c", "d"]
    assert cm.get_cache_statistics()["l1"]["evictions"] == 1


def test_l1_entry_expires_after_its_ttl_on_the_injected_clock():
    clock = Clock()
    cm = cache.CacheManager(None, default_ttl_s=10, clock=clock, record_telemetry=False)
    cm.set("p:x", 1)
    clock.now += 9.9
    assert cm.get_l1("p:x") == 1
    clock.now += 0.2
    assert cm.get_l1("p:x") is None
    assert cm.get_cache_statistics()["l1"]["expirations"] == 1
    assert len(cm) == 0


def test_l1_evicts_to_stay_within_its_byte_bound():
    cm = cache.CacheManager(None, max_entries=100, max_bytes=50_000, record_telemetry=False)
    for i in range(10):
        cm.set(f"a:{i}", np.zeros(1000))     # 8 kB each
    stats = cm.get_cache_statistics()["l1"]
    assert stats["bytes"] <= 50_000 and stats["size"] < 10 and stats["evictions"] >= 4
    assert cm.get_l1("a:9") is not None and cm.get_l1("a:0") is None


def test_read_through_falls_to_the_loader_then_fills_l1_and_l2(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    calls = []
    loader = lambda: calls.append(1) or np.arange(5.0)  # noqa: E731
    assert np.array_equal(cm.get_cached_data("bars:1", loader), np.arange(5.0))
    assert cm.flush()                                          # the sent L2 fill is acknowledged
    assert len(calls) == 1 and r.exists(schema.cache_value("bars:1"))
    assert not list(r.scan_iter(match=schema.NS + "lock:cache:*"))    # the load lock was released
    cm.get_cached_data("bars:1", loader)                       # L1 hit
    other = cache.CacheManager(r, record_telemetry=False)      # a cold process: L2 hit
    assert np.array_equal(other.get_cached_data("bars:1", loader), np.arange(5.0))
    assert len(calls) == 1
    assert other.get_cache_statistics()["l2"]["hits"] == 1 and len(other) == 1
    s = cm.get_cache_statistics()
    assert (s["l1"]["hits"], s["l3"]["hits"], s["multitier_hit_rate"]) == (1, 1, 0.5)


def test_miss_without_loader_returns_none_and_counts_a_miss(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    assert cm.get_cached_data("x:nothing") is None
    assert cm.get_cache_statistics()["l3"]["misses"] == 1


def test_tier_policy_skips_redis_for_a_prefix_whose_loader_is_faster_than_redis(r):
    cm = cache.CacheManager(r, record_telemetry=False)

    def slow():
        time.sleep(0.003)
        return 1
    for i in range(25):
        for prefix, loader in (("fast", lambda: 1), ("slow", slow)):
            key = f"{prefix}:k"
            cm.invalidate(key)
            cm.get_cached_data(key, loader)        # L3
            cm.flush()
            cm.clear_l1()
            cm.get_cached_data(key, loader)        # L2
    assert cm.choose_tiers() == {"fast": True, "slow": False}
    cm.invalidate("fast:new")
    cm.get_cached_data("fast:new", lambda: 2)
    cm.flush()
    assert not r.exists(schema.cache_value("fast:new"))   # skipped L2
    assert cm.get_l1("fast:new") == 2


def test_only_one_loader_runs_for_a_key_under_concurrent_misses(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    calls = []

    def loader():
        calls.append(1)
        time.sleep(0.1)
        return "v"
    results = []
    threads = [threading.Thread(target=lambda: results.append(cm.get_cached_data("s:k", loader)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["v"] * 8 and len(calls) == 1


def test_unserializable_value_raises_type_error_and_stores_nothing(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    for bad in ({1, 2}, object(), np.array([object()]), {"a": (1, 2)}):
        with pytest.raises(TypeError):
            cm.set("u:k", bad)
    assert cm.get_l1("u:k") is None and not r.exists(schema.cache_value("u:k"))


def test_oversized_key_or_value_is_rejected_with_a_message(r):
    cm = cache.CacheManager(r, max_value_bytes=1000, record_telemetry=False)
    with pytest.raises(ValueError, match="over the limit"):
        cm.set("k" * 300, 1)
    with pytest.raises(ValueError, match="bytes serialized, over the limit"):
        cm.set("big:k", np.zeros(1000))
    assert not r.exists(schema.cache_value("big:k"))


def test_redis_down_still_serves_from_l1_and_the_loader_without_raising():
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    cm = cache.CacheManager(dead, record_telemetry=False)
    assert cm.get_cached_data("d:k", lambda: 42) == 42
    assert cm.get_cached_data("d:k", lambda: 0) == 42     # L1
    cm.set("d:j", 7)
    cm.invalidate("d:k")
    stats = cm.get_cache_statistics()
    assert stats["l2"]["errors"] >= 1 and stats["l2"]["degraded"]
    assert cm.get_cached_data("d:k", lambda: 43) == 43


def test_redis_dying_mid_run_degrades_to_l1_and_the_loader_and_recovers_when_it_returns(tmp_path):
    from core import redis_server
    port = free_port()
    server = redis_server.start(port, tmp_path / "redis", appendonly=False)
    try:
        cm = cache.CacheManager(schema.connect(f"redis://127.0.0.1:{port}/0"), record_telemetry=False)
        for i in range(20):                                  # open the read and fill connections
            assert cm.get_cached_data(f"m:{i}", lambda i=i: i) == i
        server.terminate()
        server.wait(timeout=10)
        assert [cm.get_cached_data(f"m:{i}", lambda: -1) for i in range(20)] == list(range(20))  # L1
        assert [cm.get_cached_data(f"n:{i}", lambda i=i: 100 + i) for i in range(20)] == list(range(100, 120))
        stats = cm.get_cache_statistics()
        assert stats["l2"]["errors"] >= 1 and stats["l2"]["degraded"] and stats["l3"]["hits"] == 40
        server = redis_server.start(port, tmp_path / "redis", appendonly=False)
        time.sleep(cache.L2_BACKOFF_S + 0.1)
        cm.get_cached_data("back:1", lambda: "again")
        assert cm.flush() and not cm.get_cache_statistics()["l2"]["degraded"]
        other = cache.CacheManager(schema.connect(f"redis://127.0.0.1:{port}/0"), record_telemetry=False)
        assert other.get_cached_data("back:1", lambda: "not loaded") == "again"   # filled into L2 again
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_corrupt_l2_entry_is_a_miss_and_is_deleted(r, caplog):
    cm = cache.CacheManager(r, record_telemetry=False)
    r.set(schema.cache_value("c:k"), b"\x00garbage")
    assert cm.get_cached_data("c:k", lambda: "fresh") == "fresh"
    assert cm.get_cache_statistics()["l2"]["corrupt"] == 1 and cm.flush()
    assert cache.decode(r.get(schema.cache_value("c:k"))) == "fresh"   # replaced by the load
    assert "corrupt L2 entry" in caplog.text


def test_serialization_round_trips_numpy_and_pandas_exactly():
    frame = pd.DataFrame({"close": [1.5, np.nan, 3.0], "sym": ["A", "B", "C"],
                          "n": np.array([1, 2, 3], dtype=np.int32)},
                         index=pd.date_range("2024-01-01", periods=3, name="date"))
    values = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(["a", "bc"]), frame,
              frame["close"], pd.DataFrame({"x": [1, 2]}), b"\x00\x01", "text", {"a": [1, 2.5, None]}]
    for v in values:
        back = cache.decode(cache.encode(v))
        if isinstance(v, np.ndarray):
            assert back.dtype == v.dtype and np.array_equal(back, v)
        elif hasattr(v, "equals"):
            assert type(back) is type(v) and back.equals(v) and back.index.equals(v.index)
            dtypes = (lambda x: list(x.dtypes) if isinstance(x, pd.DataFrame) else [x.dtype])
            assert dtypes(back) == dtypes(v)
        else:
            assert back == v
    with pytest.raises(cache.CorruptEntryError):
        cache.decode(cache.encode(np.arange(4))[:-3])


def test_get_many_and_set_many_are_pipelined_across_tiers(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    cm.set_many({"m:1": 1, "m:2": 2})
    cold = cache.CacheManager(r, record_telemetry=False)
    got = cold.get_many(["m:1", "m:2", "m:3"], loader=lambda keys: {k: k.upper() for k in keys})
    assert got == {"m:1": 1, "m:2": 2, "m:3": "M:3"}
    assert cold.get_cache_statistics()["l2"]["hits"] == 2
    assert cache.decode(r.get(schema.cache_value("m:3"))) == "M:3"


@pytest.mark.timeout(60)
def test_a_write_in_one_process_invalidates_l1_of_another_within_100_ms_p99(r, redis_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    stale = cache.measure_staleness(r, url, updates=40)
    assert len(stale) == 40                          # every write reached the other process's L1
    p99 = float(np.percentile(stale, 99))
    assert p99 <= 0.100, f"staleness p99 {p99 * 1000:.1f} ms"    # the contract


def test_optimizer_sets_ttl_from_reread_intervals_and_l1_from_the_working_set():
    log_rows = []
    for step in range(100):                  # "hot": 50 keys re-read every 2 s
        t = step * 2.0
        log_rows += [(t + i * 0.01, f"hot:{i}", "l1" if step else "l3") for i in range(50)]
    log_rows += [(i * 0.1, f"once:{i}", "l3") for i in range(2000)]   # read once each
    profile = cache.analyze_access_log(sorted(log_rows))
    assert profile["hot"]["working_set"] == 50 and profile["once"]["interval_p50_s"] is None
    rec = cache.recommend(profile, {}, current_l1=1000, default_ttl_s=300.0, max_l1=10_000)
    assert rec["ttl_s"] == {"hot": pytest.approx(4.0)}
    assert rec["l1_max_entries"] == max(50, cache.MIN_L1_ENTRIES)   # re-read set: 50 entries
    assert {c["what"] for c in rec["changes"]} == {"ttl:hot", "l1_max_entries"}


def test_optimize_cache_grows_l1_to_a_drifting_working_set_and_gains_hit_rate():
    rng = np.random.default_rng(1)
    clock = Clock()
    cm = cache.CacheManager(None, max_entries=200, clock=clock, record_telemetry=False)
    cm.enable_access_log()

    def run(start, n):
        hits0 = cm.stats["l1"].hits
        for j in range(n):
            clock.now += 0.01
            base = (start + j) // 20                  # the hot set drifts by a key every 20 requests
            key = f"d:{base + int(rng.integers(0, 600))}"
            cm.get_cached_data(key, lambda: 1)
        return (cm.stats["l1"].hits - hits0) / n
    before = run(0, 20_000)
    report = cache.optimize_cache(cm)
    after = run(20_000, 20_000)
    assert cm.max_entries > 200 and any(c["what"] == "l1_max_entries" for c in report["changes"])
    assert after - before > 0.2


def test_l2_capacity_is_enforced_idlest_first(r):
    cm = cache.CacheManager(r, record_telemetry=False)
    for i in range(20):
        cm.set(f"cap:{i}", np.zeros(100))        # ~900 bytes each
    out = cache.enforce_l2_capacity(r, 9000)
    assert out["evicted"] >= 10 and out["bytes"] <= 9000
    assert len(list(r.scan_iter(match=schema.CACHE_VALUE_PREFIX + "*"))) == out["keys"]


def test_every_access_is_recorded_as_the_cache_access_stage(r):
    from core.telemetry import RECORDER
    RECORDER.collect()
    cm = cache.CacheManager(r)
    for _ in range(10):
        cm.get_cached_data("t:k", lambda: 1)
    assert int(RECORDER.collect()["cache_access"].counts.sum()) == 10


def test_a_process_that_finds_the_load_lock_taken_waits_for_the_fill_instead_of_loading(r):
    r.set(schema.NS + "lock:cache:w:k", "another-process", px=5000)    # another process is loading
    other = cache.CacheManager(r, record_telemetry=False)
    threading.Timer(0.15, lambda: other.set("w:k", "from the other loader")).start()
    cm = cache.CacheManager(r, record_telemetry=False)
    calls = []
    t0 = time.monotonic()
    assert cm.get_cached_data("w:k", lambda: calls.append(1) or "mine") == "from the other loader"
    assert calls == [] and 0.1 < time.monotonic() - t0 < 2.0


def test_manager_from_settings_takes_the_spec_bounds(settings):
    cm = cache.CacheManager.from_settings(None, settings)
    assert (cm.max_entries, cm.default_ttl_s) == (1000, 300.0)
    with pytest.raises(ValueError):
        cache.CacheManager(None, max_entries=0)


def test_a_few_accesses_change_nothing_and_l1_never_shrinks_below_its_floor():
    few = cache.analyze_access_log([(float(t), f"risk:k{t % 2}", "l1") for t in range(14)])
    rec = cache.recommend(few, {}, current_l1=1000, default_ttl_s=300.0, max_l1=10_000)
    assert rec["changes"] == [] and rec["l1_max_entries"] == 1000
    many = cache.analyze_access_log([(float(t), f"risk:k{t % 2}", "l1") for t in range(400)])
    rec = cache.recommend(many, {}, current_l1=1000, default_ttl_s=300.0, max_l1=10_000)
    assert rec["l1_max_entries"] == cache.MIN_L1_ENTRIES



def test_merge_statistics_sums_counts_keeps_the_slowest_percentiles_and_ignores_malformed_parts():
    a = {"l1": {"hits": 90, "misses": 10, "size": 5, "evictions": 2, "p50_us": 0.5, "p99_us": 2.0},
         "l2": {"hits": 6, "misses": 4, "errors": 1, "p50_us": 100.0, "p99_us": 300.0},
         "l3": {"hits": 4, "misses": 0, "p50_us": 700.0}}
    b = {"l1": {"hits": 10, "misses": 90, "size": 7, "evictions": 1, "p50_us": 0.8, "p99_us": 1.0},
         "l2": {"hits": 45, "misses": 45, "p50_us": 90.0, "p99_us": None},
         "l3": "garbage"}
    merged = cache.merge_statistics({"p1": a, "p2": b, "p3": {"l1": {"hits": "x", "misses": -3}}})
    l1, l2, l3 = (merged["tiers"][t] for t in ("l1", "l2", "l3"))
    assert (l1["hits"], l1["misses"], l1["hit_rate"]) == (100, 100, 0.5)
    assert (l1["p50_us"], l1["p99_us"]) == (0.8, 2.0)            # the slowest process's
    assert (l2["hits"], l2["misses"], l2["errors"], l2["p99_us"]) == (51, 49, 1, 300.0)
    assert (l3["hits"], l3["hit_rate"], l3["p99_us"]) == (4, 1.0, None)
    assert (merged["requests"], merged["multitier_hit_rate"]) == (200, (100 + 51) / 200)
    assert (merged["l1_size"], merged["l1_evictions"], merged["processes"]) == (12, 3, 3)
    empty = cache.merge_statistics({})
    assert empty["multitier_hit_rate"] is None and empty["tiers"]["l2"]["hit_rate"] is None


def test_published_statistics_of_two_processes_merge_into_the_report_summary(r):
    from core import report
    for name in ("a", "b"):
        cm = cache.CacheManager(r, record_telemetry=False)
        for i in range(4):
            cm.get_cached_data(f"m{name}:{i % 2}", lambda: 1)     # 2 loads, then hits
        cache.publish_statistics(r, cm, proc=f"host:{name}")
    assert report._cache_summary(r) == {"requests": 8, "multitier_hit_rate": 0.5}
