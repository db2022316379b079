"""MemoryManager: per-process RSS/USS, trend with confidence interval and leak suspicion,
GC with per-generation figures, automatic recovery thresholds, and memory-mapped arrays."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from core import cache, memory, schema
from core.procs import register_process

DB = 5


@pytest.fixture
def r(own_db):
    return own_db


def test_monitor_reports_system_memory_and_rss_uss_of_registered_processes(r):
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(30)"])
    try:
        register_process(r, "worker", child.pid)
        register_process(r, "web")
        time.sleep(0.5)
        sample = memory.monitor_memory_usage(r)
    finally:
        child.kill()
        child.wait()
    assert sample["total_bytes"] > sample["available_bytes"] > 0 and 0 < sample["percent"] < 100
    by_pid = {p["pid"]: p for p in sample["procs"]}
    assert set(by_pid) == {os.getpid(), child.pid}
    assert by_pid[child.pid]["uss_bytes"] >= 50_000_000 and by_pid[child.pid]["rss_bytes"] >= by_pid[child.pid]["uss_bytes"]
    assert sample["console_rss_bytes"] == sum(p["rss_bytes"] for p in sample["procs"])
    assert memory.memory_series(r, 60)[-1]["t"] == sample["t"]


def test_trend_slope_and_ci_recover_a_known_growth_and_flag_a_steady_leak():
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 1200.0, 10.0)                                 # 20 minutes, one sample / 10 s
    leak = 100e6 + 50_000 * t + rng.normal(0, 20_000, t.size)      # 180 MB/h
    flat = 100e6 + rng.normal(0, 2e6, t.size)
    samples = [{"t": ti, "console_rss_bytes": a + b,
                "procs": [{"role": "worker", "pid": 1, "rss_bytes": a}, {"role": "web", "pid": 2, "rss_bytes": b}]}
               for ti, a, b in zip(t, leak, flat)]
    out = memory.get_memory_trend(samples)
    w = out["procs"]["worker:1"]
    assert w["ci_low"] < 50_000 < w["ci_high"] and w["ci_high"] - w["ci_low"] < 2_000
    assert out["suspects"] == ["worker:1"] and not out["procs"]["web:2"]["leak_suspected"]
    assert np.isnan(memory.linear_trend([1, 2], [1, 2])["slope"])
    # the same growth over the first minute after start is warm-up, not a leak
    t1 = np.arange(60.0)
    early = memory.get_memory_trend([{"t": ti, "console_rss_bytes": 100e6 + 50_000 * ti,
                                      "procs": [{"role": "beat", "pid": 3, "rss_bytes": 100e6 + 50_000 * ti}]}
                                     for ti in t1])
    assert early["procs"]["beat:3"]["ci_low"] > 0 and early["suspects"] == []


def test_optimize_memory_collects_cycles_per_generation_and_cleans_expired_cache_entries():
    class Node:
        def __init__(self):
            self.me = self
    gc.disable()
    try:
        for _ in range(5000):
            Node()
        clock = [0.0]
        cm = cache.CacheManager(None, default_ttl_s=1, clock=lambda: clock[0], record_telemetry=False)
        for i in range(10):
            cm.set(f"m:{i}", np.zeros(1000))
        clock[0] = 5.0
        out = memory.optimize_memory([cm])
    finally:
        gc.enable()
    assert [g["generation"] for g in out["gc"]] == [0, 1, 2]
    assert out["freed_objects"] >= 5000
    assert out["cache_entries_removed"] == 10 and out["cache_freed_bytes"] >= 80_000
    assert out["rss_before"] > 0 and out["freed_bytes"] >= 0


def test_recovery_collects_above_gc_threshold_and_cleans_and_alerts_above_memory_threshold(r):
    cm = cache.CacheManager(None, record_telemetry=False)
    for i in range(10):
        cm.set(f"r:{i}", i)
    assert memory.recover(r, 50.0, 70.0, 80.0, [cm])["action"] == "none"
    assert memory.recover(r, 75.0, 70.0, 80.0, [cm])["action"] == "gc" and len(cm) == 10
    assert r.xlen(schema.ALERTS) == 0
    out = memory.recover(r, 85.0, 70.0, 80.0, [cm])
    assert out["action"] == "clean" and len(cm) == 5
    [(_id, fields)] = r.xrange(schema.ALERTS)
    assert fields[b"source"] == b"memory" and b"85%" in fields[b"message"]


def test_memory_mapped_array_is_read_only_and_saves_reader_memory(tmp_path, r):
    arr = np.random.default_rng(0).normal(size=(4000, 1000))       # 32 MB
    path = memory.store_array(tmp_path, "returns", arr, r)
    mapped = memory.open_array(tmp_path, "returns")
    assert np.array_equal(mapped, arr)
    with pytest.raises(ValueError):
        mapped[0, 0] = 1.0
    assert schema.loads(r.hget(schema.MEMORY_MMAP, "returns"))["bytes"] == arr.nbytes
    out = memory.measure_mmap_saving(path, readers=2)
    assert min(out["copy"]["uss_added"]) > 0.9 * arr.nbytes
    assert max(out["mmap"]["uss_added"]) < 0.2 * arr.nbytes
    assert out["saved_bytes"] > 1.5 * arr.nbytes
    with pytest.raises(ValueError):
        memory.store_array(tmp_path, "../evil", arr)
    with pytest.raises(FileNotFoundError):
        memory.open_array(tmp_path, "missing")
