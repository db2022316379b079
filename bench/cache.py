"""Area `cache`: the CacheManager's tiers against each other and against the database.

Everything runs against a private redis-server (maxmemory stated below, allkeys-lru) and a
dedicated SQLite history built with core.history.backfill in a temp dir. Every miss is the
risk code's read: a window of daily closes of all series (core.db.read_closes_window).

Figures (exactly the issue's):
  cache.l1_hit_ns          median L1 hit (batches of 1,000 calls, median batch)
  cache.l2_hit_us          median L2 hit (L1 emptied before each call) on the path reads take
                           (with a loader: one script reads the entry or takes the load lock),
                           same value and server as
  cache.redis_get_us       a raw redis-py GET of the stored bytes, interleaved in the same run
  cache.multitier_hit_rate Zipf(1.1), 100,000 keys, 1,000,000 requests from cold, L1 = 1,000
  cache.cold_ceiling_hit_rate  1 - distinct keys / requests of that sequence: no key-level cache
                           can beat it from a cold start (every first request of a key misses)
  cache.speedup_vs_db      mean access with the database alone / mean access with all tiers
  cache.invalidation_p99_ms  p99 staleness of another process's L1 copy after a write
                           (core.cache.measure_staleness: two real processes; goal <= 100 ms)
  cache.optimize_gain_pp   L1 hit-rate gain (percentage points) optimize_cache achieves on a
                           workload whose hot set drifts
  cache.chunked_hit_rate   the same 1,000,000 windows read from cached 64-day blocks
                           (core.db.cached_closes, range-chunked caching): requests served
                           without a database read; a different technique, reported beside
                           the key-level figures, never instead of them
  cache.chunked_speedup_vs_db  mean access with the database alone / with the day blocks
The spec's table (no cache / memory only / Redis only / multi-tier) is printed for the first
100,000 requests of the same sequence (the full run of the slow configurations would take many
minutes); the database-alone mean is measured on a random sample of those requests. The full
multi-tier run is broken down by the tier that served each request (share x mean cost).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from core import cache, db, history, redis_server, schema
from core.market import FactorModel

N_KEYS = 100_000
N_REQUESTS = 1_000_000
ZIPF_S = 1.1
L1_CAPACITY = 1_000
L2_CAPACITY_BYTES = 1024 * 1024**2        # stated L2 capacity: maxmemory 1 GiB, allkeys-lru
TABLE_REQUESTS = 100_000
DB_SAMPLE = 5_000
DAYS = 2_600
STARTS = 2_500                            # windows start on days 0..2499, 20..59 days long


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _window(k: int) -> tuple[int, int]:
    return k % STARTS, 20 + k // STARTS


def _zipf_sequence(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.arange(1, N_KEYS + 1, dtype=float) ** -ZIPF_S
    p /= p.sum()
    ranks = rng.choice(N_KEYS, N_REQUESTS, p=p)
    return rng.permutation(N_KEYS)[ranks]       # popular keys scattered over the key space


def _run(cm: cache.CacheManager, database: db.Database, keys: np.ndarray) -> dict:
    """Request every key through `cm`: the mean access time over the whole loop, and per tier
    that served a request (L1, L2, the database) its count and summed time."""
    l1, l2 = cm.stats["l1"], cm.stats["l2"]
    count, spent = [0, 0, 0], [0, 0, 0]
    t0 = perf_counter_ns()
    for k in keys.tolist():
        start, days = _window(k)
        h1, h2 = l1.hits, l2.hits
        t = perf_counter_ns()
        cm.get_cached_data(f"bars:{k}", lambda s=start, d=days: db.read_closes_window(database, s, d))
        d = perf_counter_ns() - t
        tier = 0 if l1.hits != h1 else 1 if l2.hits != h2 else 2
        count[tier] += 1
        spent[tier] += d
    elapsed = perf_counter_ns() - t0
    st = cm.get_cache_statistics()
    return {"mean_us": elapsed / len(keys) / 1e3, "hit_rate": st["multitier_hit_rate"],
            "l1_hit_rate": st["l1"]["hit_rate"], "l1_bytes": st["l1"]["bytes"], "stats": st,
            "tiers": {name: {"share": c / len(keys), "mean_us": s / c / 1e3 if c else 0.0}
                      for name, c, s in zip(("L1 hit", "L2 hit", "miss: database + fill"), count, spent)}}


def _db_mean(database: db.Database, sample: np.ndarray) -> float:
    """Mean µs of the database read alone over the sampled windows (the "no cache" access)."""
    t0 = perf_counter_ns()
    for k in sample.tolist():
        db.read_closes_window(database, *_window(k))
    return (perf_counter_ns() - t0) / len(sample) / 1e3


def _breakdown(run: dict, db_mean_us: float) -> str:
    parts = [f"{name} {t['share']:.4f} x {t['mean_us']:.1f} us = {t['share'] * t['mean_us']:.1f} us"
             for name, t in run["tiers"].items()]
    miss = run["tiers"]["miss: database + fill"]
    return ("; ".join(parts) + f" (a miss costs {miss['mean_us'] - db_mean_us:.0f} us over the "
            f"{db_mean_us:.0f} us database read: lock, serialization, fill)")


def _run_chunked(cm: cache.CacheManager, database: db.Database, keys: np.ndarray, symbols: list[str]) -> dict:
    """Every window read from cached day blocks; a request is a hit when it read no block from
    the database."""
    newest = DAYS - 1
    missed = 0
    t0 = perf_counter_ns()
    for k in keys.tolist():
        start, days = _window(k)
        loads = cm.loads
        db.cached_closes(cm, database.query, symbols, start, start + days - 1, newest)
        missed += cm.loads != loads
    elapsed = perf_counter_ns() - t0
    return {"mean_us": elapsed / len(keys) / 1e3, "hit_rate": 1 - missed / len(keys),
            "blocks_loaded": cm.loads, "l1_bytes": cm.get_cache_statistics()["l1"]["bytes"]}


def _chunked_identical(database: db.Database, symbols: list[str], n: int) -> bool:
    """The block path returns exactly what the direct read returns, on `n` random windows."""
    cm = cache.CacheManager(None, max_entries=L1_CAPACITY, record_telemetry=False)
    rng = np.random.default_rng(5)
    for k in rng.integers(0, N_KEYS, n).tolist():
        start, days = _window(k)
        got = db.cached_closes(cm, database.query, symbols, start, start + days - 1, DAYS - 1)
        if not np.array_equal(got, db.read_closes_window(database, start, days)):
            return False
    return True


def _redis_used(client) -> int:
    return int(client.info("memory")["used_memory"])


def _micro(client, database) -> dict:
    cm = cache.CacheManager(client, max_entries=L1_CAPACITY, record_telemetry=True)
    value = db.read_closes_window(database, 100, 40)
    cm.set("bars:micro", value)
    l1 = []
    for _ in range(300):
        t0 = perf_counter_ns()
        for _ in range(1000):
            cm.get_cached_data("bars:micro")
        l1.append((perf_counter_ns() - t0) / 1000)
    l2, l2_get, raw = [], [], []
    key = schema.cache_value("bars:micro")
    loader = lambda: db.read_closes_window(database, 100, 40)   # noqa: E731  (never runs: L2 has it)
    for _ in range(3000):
        cm.clear_l1()
        t0 = perf_counter_ns()
        cm.get_cached_data("bars:micro", loader)
        l2.append(perf_counter_ns() - t0)
        cm.clear_l1()
        t0 = perf_counter_ns()
        cm.get_cached_data("bars:micro")
        l2_get.append(perf_counter_ns() - t0)
        t0 = perf_counter_ns()
        client.get(key)
        raw.append(perf_counter_ns() - t0)
    assert cm.loads == 0
    return {"l1_ns": statistics.median(l1), "l2_us": statistics.median(l2) / 1e3,
            "l2_get_us": statistics.median(l2_get) / 1e3,
            "raw_us": statistics.median(raw) / 1e3, "value_bytes": len(cache.encode(value))}


def _drift_gain(database) -> dict:
    """Hot set of 2,500 keys sliding one key every 10 requests; L1 only (+ the database)."""
    rng = np.random.default_rng(11)
    clock = [0.0]
    cm = cache.CacheManager(None, max_entries=L1_CAPACITY, clock=lambda: clock[0], record_telemetry=False)
    cm.enable_access_log()

    def run(first: int, n: int) -> float:
        h0, m0 = cm.stats["l1"].hits, cm.stats["l1"].misses
        for j in range(first, first + n):
            clock[0] += 0.001
            k = j // 10 + int(rng.integers(0, 2500))
            start, days = _window(k % N_KEYS)
            cm.get_cached_data(f"drift:{k}", lambda s=start, d=days: db.read_closes_window(database, s, d))
        return (cm.stats["l1"].hits - h0) / ((cm.stats["l1"].hits - h0) + (cm.stats["l1"].misses - m0))
    run(0, 5_000)                               # warm-up: the L1 fills
    before = run(5_000, 30_000)
    bytes_before = cm.get_cache_statistics()["l1"]["bytes"]
    report = cache.optimize_cache(cm)
    after = run(35_000, 30_000)
    return {"before": before, "after": after, "changes": report["changes"],
            "l1_bytes_before": bytes_before, "l1_bytes_after": cm.get_cache_statistics()["l1"]["bytes"]}


def run(quick: bool) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    port = _free_port()
    server = redis_server.start(port, tmp / "redis", appendonly=False)
    try:
        client = schema.connect(f"redis://127.0.0.1:{port}/0", socket_timeout=5.0)
        client.config_set("maxmemory", L2_CAPACITY_BYTES)
        client.config_set("maxmemory-policy", "allkeys-lru")
        url = db.sqlite_url(tmp / "history.db")
        conn = history.connect(url)
        history.backfill(conn, FactorModel.from_seed(20, 7), DAYS, 7)
        conn.close()
        database = db.Database(url, pool_size=2)

        micro = _micro(client, database)
        print(f"   L1 hit {micro['l1_ns']:.0f} ns (goal <= 1,000) | L2 hit {micro['l2_us']:.1f} us vs raw "
              f"GET {micro['raw_us']:.1f} us of the same {micro['value_bytes']:,}-byte value: "
              f"{micro['l2_us'] / micro['raw_us']:.2f}x (goal <= 2x); without a loader (a plain GET) "
              f"{micro['l2_get_us']:.1f} us", flush=True)
        stale = cache.measure_staleness(client, f"redis://127.0.0.1:{port}/0", updates=40 if quick else 100)
        stale_p99_ms = 1000 * float(np.percentile(stale, 99))
        print(f"   cross-process invalidation: {len(stale)} writes seen by the other process's L1, staleness "
              f"p50 {1000 * float(np.percentile(stale, 50)):.1f} ms, p99 {stale_p99_ms:.1f} ms (goal <= 100 ms)",
              flush=True)
        client.flushdb()

        seq = _zipf_sequence(7)
        ceiling = 1 - len(np.unique(seq)) / len(seq)
        prefix = seq[:TABLE_REQUESTS]
        rng = np.random.default_rng(3)
        sample = prefix[rng.choice(len(prefix), DB_SAMPLE if not quick else DB_SAMPLE // 2, replace=False)]
        db_mean_us = _db_mean(database, sample)
        rows = {"no cache": {"mean_us": db_mean_us, "hit_rate": 0.0, "memory": 0}}
        base = _redis_used(client)
        mem = _run(cache.CacheManager(None, max_entries=L1_CAPACITY, record_telemetry=False), database, prefix)
        rows["memory only"] = {**mem, "memory": mem["l1_bytes"]}
        redis_only = cache.CacheManager(client, max_entries=1, record_telemetry=False)
        r = _run(redis_only, database, prefix)
        r["hit_rate"] = r["stats"]["l2"]["hits"] / len(prefix)
        rows["Redis only"] = {**r, "memory": _redis_used(client) - base}
        client.flushdb()
        base = _redis_used(client)
        multi = _run(cache.CacheManager(client, max_entries=L1_CAPACITY, record_telemetry=False), database, prefix)
        rows["multi-tier"] = {**multi, "memory": multi["l1_bytes"] + _redis_used(client) - base}
        print(f"   spec table, first {TABLE_REQUESTS:,} requests of the Zipf sequence (cold):")
        print(f"   {'configuration':<14}{'hit rate':>10}{'memory':>12}{'mean access':>14}")
        for name, row in rows.items():
            print(f"   {name:<14}{row['hit_rate']:>10.3f}{row['memory'] / 1024**2:>10.1f}MB"
                  f"{row['mean_us']:>12.1f}us")

        client.flushdb()
        base = _redis_used(client)
        full_cm = cache.CacheManager(client, max_entries=L1_CAPACITY, record_telemetry=False)
        db_mean_us = _db_mean(database, sample)       # again, next to the run it is compared with
        started = time.perf_counter()
        full = _run(full_cm, database, seq)
        decided = full_cm.choose_tiers()
        print(f"   full run: {N_REQUESTS:,} requests over {N_KEYS:,} keys in {time.perf_counter() - started:.0f}s: "
              f"multi-tier hit rate {full['hit_rate']:.4f} (L1 {full['l1_hit_rate']:.3f}); a cold start "
              f"cannot exceed {ceiling:.4f} (1 - distinct keys / requests); mean {full['mean_us']:.1f} us vs "
              f"database alone {db_mean_us:.1f} us: {db_mean_us / full['mean_us']:.1f}x; L2 used "
              f"{(_redis_used(client) - base) / 1024**2:.0f} MB of {L2_CAPACITY_BYTES / 1024**2:.0f} MB stated; "
              f"tier policy by measurement: {decided} (True = skip Redis)", flush=True)
        print(f"   where the time goes (per request): {_breakdown(full, db_mean_us)}", flush=True)

        client.flushdb()
        base = _redis_used(client)
        symbols = [r[0] for r in database.query("SELECT DISTINCT symbol FROM daily_bars ORDER BY symbol")]
        identical = _chunked_identical(database, symbols, 500 if quick else 2000)
        db_mean_chunked_us = _db_mean(database, sample)
        chunked = _run_chunked(cache.CacheManager(client, max_entries=L1_CAPACITY, record_telemetry=False),
                               database, seq, symbols)
        print(f"   range-chunked (same {N_REQUESTS:,} windows from {db.BLOCK_DAYS}-day blocks, cold): hit rate "
              f"{chunked['hit_rate']:.5f}, {chunked['blocks_loaded']} block loads, mean {chunked['mean_us']:.1f} us: "
              f"{db_mean_chunked_us / chunked['mean_us']:.1f}x the database ({db_mean_chunked_us:.0f} us, "
              f"measured just before); memory L1 "
              f"{chunked['l1_bytes'] / 1024**2:.2f} MB + Redis {(_redis_used(client) - base) / 1024**2:.2f} MB; "
              f"results identical to the direct read: {identical}", flush=True)
        if not identical:
            raise AssertionError("the day-block read differs from the direct read")

        drift = _drift_gain(database)
        print(f"   drifting hot set (L1 + database): L1 hit rate {drift['before']:.3f} -> {drift['after']:.3f} "
              f"after optimize_cache; changes {drift['changes']}; L1 memory "
              f"{drift['l1_bytes_before'] / 1024**2:.1f} -> {drift['l1_bytes_after'] / 1024**2:.1f} MB")
        database.close()
        client.close()
        return {"cache.l1_hit_ns": float(micro["l1_ns"]), "cache.l2_hit_us": float(micro["l2_us"]),
                "cache.redis_get_us": float(micro["raw_us"]),
                "cache.multitier_hit_rate": float(full["hit_rate"]),
                "cache.cold_ceiling_hit_rate": float(ceiling),
                "cache.invalidation_p99_ms": stale_p99_ms,
                "cache.speedup_vs_db": float(db_mean_us / full["mean_us"]),
                "cache.chunked_hit_rate": float(chunked["hit_rate"]),
                "cache.chunked_speedup_vs_db": float(db_mean_chunked_us / chunked["mean_us"]),
                "cache.optimize_gain_pp": float(100 * (drift["after"] - drift["before"]))}
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    print(run(quick=False))
