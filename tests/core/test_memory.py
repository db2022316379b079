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
from tests.conftest import ROOT

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


def test_mapped_array_round_trips_with_its_meta_and_is_read_only(tmp_path, r):
    arr = np.arange(12.0).reshape(3, 4)
    memory.store_array(tmp_path, "closes", arr, r, meta={"symbols": ["A", "B", "C", "D"], "last_day": 7})
    mapped = memory.open_array(tmp_path, "closes")
    assert isinstance(mapped.array, np.memmap) and np.array_equal(mapped.array, arr)
    assert mapped.meta == {"symbols": ["A", "B", "C", "D"], "last_day": 7}
    assert mapped.array.offset % 64 == 0                     # the data starts on a 64-byte boundary
    with pytest.raises(ValueError):
        mapped.array[0, 0] = 1.0
    listed = schema.loads(r.hget(schema.MEMORY_MMAP, "closes"))
    assert listed["bytes"] == arr.nbytes and listed["meta"]["last_day"] == 7
    empty = memory.store_array(tmp_path, "empty", np.empty((0, 4)))
    assert memory.open_array(tmp_path, "empty").array.shape == (0, 4) and empty.name == "empty.mmap"


@pytest.mark.parametrize("name, array, error", [
    ("../evil", np.zeros(3), ValueError), ("", np.zeros(3), ValueError),
    ("objects", np.array([object()]), TypeError)])
def test_storing_a_bad_name_or_an_object_array_is_a_clear_error(tmp_path, name, array, error):
    with pytest.raises(error):
        memory.store_array(tmp_path, name, array)
    assert not (tmp_path / "mmap").exists() or not any((tmp_path / "mmap").iterdir())


def test_a_missing_truncated_or_foreign_file_is_refused_and_never_mapped(tmp_path):
    with pytest.raises(FileNotFoundError, match="no memory-mapped array 'missing'"):
        memory.open_array(tmp_path, "missing")
    path = memory.store_array(tmp_path, "cut", np.ones((100, 10)))
    path.write_bytes(path.read_bytes()[:-8])                 # a crash mid-write
    with pytest.raises(ValueError, match="header says"):
        memory.open_array(tmp_path, "cut")
    memory.array_path(tmp_path, "npy").write_bytes(b"\x93NUMPY" + b"\0" * 100)
    with pytest.raises(ValueError, match="bad magic"):
        memory.open_array(tmp_path, "npy")
    shared = memory.SharedArrays(tmp_path)
    assert shared.get("cut") is None and shared.get("npy") is None and shared.get("missing") is None


def test_shared_mapping_is_kept_between_reads_and_reopened_when_the_writer_replaces_it(tmp_path):
    memory.store_array(tmp_path, "m", np.zeros((4, 2)), meta={"v": 1})
    shared = memory.SharedArrays(tmp_path)
    first = shared.get("m")
    assert shared.get("m") is first                          # one mapping per process
    memory.store_array(tmp_path, "m", np.ones((5, 2)), meta={"v": 2})
    second = shared.get("m")
    assert second is not first and second.meta == {"v": 2} and second.array.shape == (5, 2)
    assert first.array.sum() == 0.0                          # the old version stays readable
    memory.array_path(tmp_path, "m").unlink()
    assert shared.get("m") is None
    assert memory.shared_arrays(tmp_path) is memory.shared_arrays(tmp_path)


def test_two_processes_holding_the_mapping_share_its_pages_where_copies_do_not(tmp_path):
    arr = np.random.default_rng(0).normal(size=(2000, 1000))        # 16 MB
    memory.store_array(tmp_path, "returns", arr)
    out = memory.measure_mmap_saving(tmp_path, "returns", readers=2)
    n = arr.nbytes
    assert out["array_bytes"] == n and out["readers"] == 2
    assert min(out["copy"]["uss_added"]) > 0.95 * n                  # each copy is private
    assert max(out["mmap"]["uss_added"]) < 0.05 * n                  # the mapped pages are shared
    assert min(out["mmap"]["rss_added"]) > 0.95 * n                  # ... yet every reader has them all
    assert sum(out["mmap"]["pss_added"]) == pytest.approx(n, rel=0.05)   # held once between the two
    assert out["saved_bytes"] > 1.9 * n
    with pytest.raises(ValueError, match="one reader shares nothing"):
        memory.measure_mmap_saving(tmp_path, "returns", readers=1)


_HOLDER = """
import sys, numpy as np
from core import memory
m = memory.shared_arrays(sys.argv[1]).get("held")
print(float(np.asarray(m.array).sum()), flush=True)
sys.stdin.readline()
"""


def test_mapped_usage_names_the_processes_that_map_the_array_and_what_they_save(tmp_path):
    arr = np.ones((1000, 1000))                                      # 8 MB
    memory.store_array(tmp_path, "held", arr)
    holders = [subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
               for _ in range(2)]
    try:
        assert [h.stdout.readline().strip() for h in holders] == ["1000000.0"] * 2
        pids = {h.pid: "worker" for h in holders} | {os.getpid(): "self"}
        usage = memory.mapped_usage(tmp_path, "held", pids)
    finally:
        for h in holders:
            h.communicate("\n", timeout=10)
    assert {x["pid"] for x in usage["readers"]} == {h.pid for h in holders}     # not this process
    for reader in usage["readers"]:
        assert reader["rss_bytes"] >= arr.nbytes and reader["uss_bytes"] < 0.05 * arr.nbytes
        assert reader["stale"] is False
    assert usage["uss_saved_bytes"] > 1.9 * arr.nbytes
    assert usage["physical_saved_bytes"] == pytest.approx(arr.nbytes, rel=0.05)
