"""MemoryManager: measure the console's memory, find trends and leaks, reclaim and recover.

monitor_memory_usage   system total/available/percent/swap + RSS and USS per console process
get_memory_trend       least-squares slope over a window with a 95 % confidence interval;
                       a process is a leak suspect when it grows steadily (CI above zero, R^2 high)
optimize_memory        gc per generation with objects and bytes freed (measured), L1 clean-up
memory-mapped arrays   `store_array` writes a large array as an np.memmap file under var/mmap;
                       other processes `open_array` it read-only and share the page cache
                       instead of holding private copies (`measure_mmap_saving` measures it)
recover                automatic recovery: above settings.gc_threshold_pct collect, above
                       settings.memory_threshold_pct also clean caches and raise an alert
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil
import redis

from core import schema
from core.alerts import raise_alert
from core.procs import console_processes

log = logging.getLogger(__name__)

SERIES_RETENTION_S = schema.SECOND_SERIES_RETENTION_S
MEMORY_BUDGET_BYTES = 2 * 1024**3      # the spec's 2 GB for all console processes
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ---- monitoring -------------------------------------------------------------------------
def process_memory(pid: int) -> dict | None:
    """{"pid", "rss_bytes", "uss_bytes"} of one process, None when it is gone or unreadable.
    USS (memory unique to the process) needs /proc/<pid>/smaps; None when not permitted."""
    try:
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss
        try:
            uss = proc.memory_full_info().uss
        except (psutil.AccessDenied, AttributeError):
            uss = None
    except psutil.Error:
        return None
    return {"pid": pid, "rss_bytes": rss, "uss_bytes": uss}


def monitor_memory_usage(client: redis.Redis | None = None, pids: dict[int, str] | None = None,
                         now: float | None = None) -> dict:
    """A snapshot: system memory and each console process's RSS and USS.

    Processes come from the registry (core.procs) when `client` is given, else `pids`
    ({pid: role}), else this process only. With `client`, the sample is also appended to
    schema.MEMORY_SERIES (1 h).
    """
    now = time.time() if now is None else now
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    if pids is None:
        entries = console_processes(client) if client is not None else []
        pids = {int(e["pid"]): e["role"] for e in entries} or {os.getpid(): "self"}
    procs = []
    for pid, role in sorted(pids.items()):
        m = process_memory(pid)
        if m is not None:
            procs.append({**m, "role": role})
    sample = {"t": now, "total_bytes": vm.total, "available_bytes": vm.available,
              "percent": vm.percent, "swap_bytes": sw.used, "swap_percent": sw.percent,
              "procs": procs,
              "console_rss_bytes": sum(p["rss_bytes"] for p in procs),
              "console_uss_bytes": sum(p["uss_bytes"] or 0 for p in procs),
              "budget_bytes": MEMORY_BUDGET_BYTES}
    if client is not None:
        pipe = client.pipeline(transaction=False)
        schema.add_to_series(pipe, schema.MEMORY_SERIES, now, schema.dumps(sample), SERIES_RETENTION_S)
        pipe.execute()
    return sample


def memory_series(client: redis.Redis, window_s: float, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    return [s for s in schema.read_series(client, schema.MEMORY_SERIES, now - window_s) if isinstance(s, dict)]


# ---- trend and leak suspicion --------------------------------------------------------------
def linear_trend(t: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares slope of y over t with a 95 % confidence interval (Student t).

    Returns {"slope", "ci_low", "ci_high", "r2", "n"} (units of y per unit of t); NaN when
    fewer than 3 points or no spread in t.
    """
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    n = t.size
    nan = {"slope": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "r2": float("nan"), "n": n}
    if n < 3 or np.ptp(t) == 0:
        return nan
    from scipy import stats
    tc = t - t.mean()
    sxx = float(tc @ tc)
    slope = float(tc @ (y - y.mean()) / sxx)
    resid = y - (y.mean() + slope * tc)
    sse = float(resid @ resid)
    sst = float(((y - y.mean()) ** 2).sum())
    se = (sse / (n - 2) / sxx) ** 0.5
    half = float(stats.t.ppf(0.975, n - 2)) * se
    return {"slope": slope, "ci_low": slope - half, "ci_high": slope + half,
            "r2": 1.0 - sse / sst if sst > 0 else 1.0, "n": n}


LEAK_MIN_SPAN_S = 600.0   # a process warming up (imports, JIT, caches) grows for minutes


def leak_suspected(trend: dict, span_s: float, min_bytes_per_hour: float = 16 * 1024**2,
                   min_r2: float = 0.8, min_span_s: float = LEAK_MIN_SPAN_S) -> bool:
    """Steady growth: observed for at least `min_span_s`, the whole CI above zero, growth of
    at least `min_bytes_per_hour` (slope in bytes/s), and a good linear fit (noise around a
    flat line is not a leak). Seen live without the span rule: beat and redis were
    "suspected" one minute after start while they were only warming up."""
    return (span_s >= min_span_s and trend["n"] >= 10 and trend["ci_low"] > 0
            and trend["slope"] * 3600 >= min_bytes_per_hour and trend["r2"] >= min_r2)


def get_memory_trend(samples: Sequence[dict], window_s: float | None = None) -> dict:
    """Trend of the console total and of each process over `samples` (monitor_memory_usage
    outputs, oldest first), limited to the last `window_s` seconds.

    Returns {"console": trend, "procs": {"role:pid": trend + "leak_suspected"}, "suspects": [...]}
    with slopes in bytes per second.
    """
    rows = [s for s in samples if isinstance(s, dict) and "t" in s]
    if window_s is not None and rows:
        rows = [s for s in rows if s["t"] >= rows[-1]["t"] - window_s]
    total = linear_trend([s["t"] for s in rows], [s.get("console_rss_bytes", 0) for s in rows])
    series: dict[str, tuple[list, list]] = {}
    for s in rows:
        for p in s.get("procs", []):
            name = f"{p.get('role')}:{p.get('pid')}"
            series.setdefault(name, ([], []))
            series[name][0].append(s["t"])
            series[name][1].append(p.get("rss_bytes", 0))
    procs = {}
    for name, (t, y) in series.items():
        tr = linear_trend(t, y)
        tr["leak_suspected"] = leak_suspected(tr, span_s=t[-1] - t[0] if t else 0.0)
        procs[name] = tr
    return {"console": total, "procs": procs,
            "suspects": sorted(n for n, tr in procs.items() if tr["leak_suspected"])}


# ---- optimization ---------------------------------------------------------------------------
def optimize_memory(caches: Sequence = (), cold: bool = False) -> dict:
    """Collect every generation and clean the given CacheManagers' L1 (expired entries, and
    with `cold` the least recently used half).

    Reports per generation: objects tracked before/after, collected and uncollectable (gc's own
    counts); RSS before/after; and the cache clean-up. Freed bytes are the RSS difference (what
    the OS got back, may be 0 when the allocator keeps freed pages) and the caches' own bytes.
    """
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    gens = []
    for gen in range(3):
        before = len(gc.get_objects(generation=gen)) if sys.version_info >= (3, 8) else None
        collected = gc.collect(gen)
        gens.append({"generation": gen, "objects_before": before, "collected": collected,
                     "objects_after": len(gc.get_objects(generation=gen)),
                     "uncollectable": len(gc.garbage)})
    cleaned = [c.cleanup(cold=cold) for c in caches]
    rss_after = proc.memory_info().rss
    return {"gc": gens, "freed_objects": sum(g["collected"] for g in gens),
            "rss_before": rss_before, "rss_after": rss_after,
            "freed_bytes": max(0, rss_before - rss_after),
            "cache_freed_bytes": sum(c["freed_bytes"] for c in cleaned),
            "cache_entries_removed": sum(c["expired"] + c["cold"] for c in cleaned),
            "gc_stats": gc.get_stats()}


def recover(client: redis.Redis | None, percent: float, gc_threshold_pct: float,
            memory_threshold_pct: float, caches: Sequence = ()) -> dict:
    """Automatic recovery from the system memory percentage: "none", "gc" (collect) or
    "clean" (collect, drop cold cache entries, raise an alert)."""
    if percent < gc_threshold_pct:
        return {"action": "none", "percent": percent}
    clean = percent >= memory_threshold_pct
    result = optimize_memory(caches, cold=clean)
    result.update(action="clean" if clean else "gc", percent=percent)
    if clean and client is not None:
        raise_alert(client, "warning", "memory",
                    f"system memory at {percent:.0f}% (threshold {memory_threshold_pct:.0f}%): "
                    f"caches cleaned, {result['freed_objects']} objects collected",
                    dedupe_key="memory:recover", dedupe_s=300)
    return result


# ---- memory-mapped arrays -------------------------------------------------------------------
def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"array name must be 1-64 characters of [A-Za-z0-9_.-], got {name!r}")


def store_array(var_dir: Path, name: str, array: np.ndarray, client: redis.Redis | None = None) -> Path:
    """Write `array` as `var_dir/mmap/<name>.npy` (a memory-mappable .npy), atomically."""
    _check_name(name)
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise TypeError("only fixed-size dtypes can be memory-mapped")
    folder = Path(var_dir) / "mmap"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npy"
    tmp = folder / f".{name}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
    out[...] = arr
    out.flush()
    del out
    os.replace(tmp, path)
    if client is not None:
        client.hset(schema.MEMORY_MMAP, name, schema.dumps(
            {"path": str(path), "shape": list(arr.shape), "dtype": arr.dtype.str, "bytes": int(arr.nbytes),
             "t": time.time()}))
    return path


def open_array(var_dir: Path, name: str) -> np.memmap:
    """The stored array, mapped read-only (writes raise ValueError)."""
    _check_name(name)
    path = Path(var_dir) / "mmap" / f"{name}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no memory-mapped array {name!r} under {path.parent}")
    return np.load(path, mmap_mode="r")


_READER = r"""
import sys, time, numpy as np, psutil
mode, path = sys.argv[1], sys.argv[2]
p = psutil.Process()
base = p.memory_full_info()
arr = np.load(path, mmap_mode="r") if mode == "mmap" else np.load(path)
total = float(arr.sum())
m = p.memory_full_info()
print(m.rss - base.rss, m.uss - base.uss, total, flush=True)
"""


def measure_mmap_saving(path: Path, readers: int = 2) -> dict:
    """Start `readers` processes that read the whole array, once as private copies (np.load)
    and once memory-mapped; report the RSS and USS each reader added in both cases.

    A mapped reader's pages are the shared page cache, so its USS barely grows; a copy is
    private to every reader. saved_bytes = (copy USS - mmap USS) summed over the readers.
    """
    res = {}
    for mode in ("copy", "mmap"):
        rss, uss = [], []
        for _ in range(readers):
            out = subprocess.run([sys.executable, "-c", _READER, mode, str(path)], capture_output=True,
                                 text=True, timeout=60, check=True).stdout.split()
            rss.append(int(out[0]))
            uss.append(int(out[1]))
        res[mode] = {"rss_added": rss, "uss_added": uss}
    saved = sum(res["copy"]["uss_added"]) - sum(res["mmap"]["uss_added"])
    return {**res, "readers": readers, "saved_bytes": saved, "array_bytes": int(np.load(path, mmap_mode="r").nbytes)}


def record_run(client: redis.Redis, area: str, result: dict) -> str:
    """Append an optimization run to its history stream and keep it as the latest."""
    if area not in schema.OPT_AREAS:
        raise ValueError(f"unknown optimization area {area!r}")
    doc = schema.dumps(result)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(schema.opt_history(area), {"doc": doc}, maxlen=schema.OPT_HISTORY_MAXLEN, approximate=True)
    pipe.set(schema.opt_last(area), doc)
    return pipe.execute()[0]


def read_history(client: redis.Redis, area: str, count: int = 20) -> list[dict]:
    out = []
    for _id, fields in client.xrevrange(schema.opt_history(area), count=count):
        try:
            out.append(json.loads(fields[b"doc"] if b"doc" in fields else fields["doc"]))
        except (KeyError, ValueError):
            continue
    return out
