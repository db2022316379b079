"""MemoryManager: measure the console's memory, find trends and leaks, reclaim and recover.

monitor_memory_usage   system total/available/percent/swap + RSS and USS per console process
get_memory_trend       least-squares slope over a window with a 95 % confidence interval;
                       a process is a leak suspect when it grows steadily (CI above zero, R^2 high)
optimize_memory        gc per generation with objects and bytes freed (measured), L1 clean-up
memory-mapped arrays   `store_array` writes an array with its meta as one file under
                       var/mmap; readers map it read-only (`shared_arrays(var_dir).get(name)`
                       keeps one mapping per process, re-opened when the file is replaced) and
                       share the page cache instead of holding private copies. What it saves
                       is measured twice: `mapped_usage` reads the live readers' smaps (rss,
                       pss, uss of the mapping), `measure_mmap_saving` runs two processes
                       holding it at once, as private copies and as mappings. The one array
                       mapped in the product is the daily closes matrix (core.shared_closes).
recover                automatic recovery: above settings.gc_threshold_pct collect, above
                       settings.memory_threshold_pct also clean caches and raise an alert
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
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
              "console_uss_bytes": sum(p["uss_bytes"] or 0 for p in procs)}
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
# One file per array under var/mmap, replaced atomically and never modified in place:
#   MMAP_MAGIC | header length (uint32 LE) | header JSON, space-padded so the data starts on a
#   64-byte boundary | the array's bytes in C order.
# The header is {"dtype", "shape", "meta", "written_at"}: the writer's description travels in
# the same file as the data, so a reader never pairs one version's rows with another's meta.
# No fsync: a file cut short by a crash fails the size check on open and is rebuilt.
MMAP_MAGIC = b"CMMAP\x00\x01\n"
_PREFIX_BYTES = len(MMAP_MAGIC) + 4
_ALIGN = 64
_MAX_HEADER_BYTES = 1 << 20


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"array name must be 1-64 characters of [A-Za-z0-9_.-], got {name!r}")


def array_path(var_dir: Path, name: str) -> Path:
    """Where the array `name` lives: var_dir/mmap/<name>.mmap."""
    _check_name(name)
    return Path(var_dir) / "mmap" / f"{name}.mmap"


@dataclass(frozen=True, eq=False)
class MappedArray:
    """One version of a stored array. `array` is a read-only np.memmap (writes raise
    ValueError); `version` identifies the file (device, inode, mtime, size)."""

    array: np.ndarray
    meta: dict
    path: Path
    version: tuple
    written_at: float


def _file_version(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def store_array(var_dir: Path, name: str, array, client: redis.Redis | None = None,
                meta: dict | None = None) -> Path:
    """Write `array` (a fixed-size dtype) with `meta` (JSON-able) as `array_path(var_dir, name)`.
    Atomic (a temporary file renamed over the old one): readers see the old version or the new
    one, and a reader that mapped the old one keeps it until it re-opens. With `client`, the
    array is listed in schema.MEMORY_MMAP."""
    path = array_path(var_dir, name)
    arr = np.ascontiguousarray(array)
    if arr.dtype.hasobject:
        raise TypeError("only fixed-size dtypes can be memory-mapped")
    now = time.time()
    header = json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape), "meta": meta or {},
                         "written_at": now}).encode()
    header += b" " * (-(_PREFIX_BYTES + len(header)) % _ALIGN)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MMAP_MAGIC + struct.pack("<I", len(header)) + header)
            f.write(arr.reshape(-1).view(np.uint8).data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if client is not None:
        client.hset(schema.MEMORY_MMAP, name, schema.dumps(
            {"path": str(path), "shape": list(arr.shape), "dtype": arr.dtype.str,
             "bytes": int(arr.nbytes), "t": now, "meta": meta or {}}))
    return path


def _read_header(f, path: Path) -> tuple[dict, int]:
    prefix = f.read(_PREFIX_BYTES)
    if len(prefix) < _PREFIX_BYTES or prefix[:len(MMAP_MAGIC)] != MMAP_MAGIC:
        raise ValueError(f"{path}: not a memory-mapped array file (bad magic)")
    (size,) = struct.unpack("<I", prefix[len(MMAP_MAGIC):])
    if size > _MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header of {size} bytes is over the {_MAX_HEADER_BYTES} byte limit")
    try:
        header = json.loads(f.read(size))
        header["dtype"] = np.dtype(header["dtype"])
        header["shape"] = tuple(int(n) for n in header["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: corrupt header ({type(exc).__name__}: {exc})") from None
    if header["dtype"].hasobject or any(n < 0 for n in header["shape"]):
        raise ValueError(f"{path}: header describes no fixed-size array")
    return header, _PREFIX_BYTES + size


def open_array(var_dir: Path, name: str) -> MappedArray:
    """The stored array mapped read-only, with its meta. FileNotFoundError when absent,
    ValueError when the file is not one `store_array` wrote completely."""
    path = array_path(var_dir, name)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"no memory-mapped array {name!r} under {path.parent}") from None
    with f:
        st = os.fstat(f.fileno())
        header, offset = _read_header(f, path)
        dtype, shape = header["dtype"], header["shape"]
        expected = offset + dtype.itemsize * math.prod(shape)
        if st.st_size != expected:
            raise ValueError(f"{path}: {st.st_size} bytes where the header says {expected}")
        if math.prod(shape) == 0:               # mmap cannot map zero bytes
            data = np.empty(shape, dtype)
            data.flags.writeable = False
        else:                                   # the mapping holds its own descriptor
            data = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape)
    return MappedArray(data, dict(header.get("meta") or {}), path, _file_version(st),
                       float(header.get("written_at") or 0.0))


class SharedArrays:
    """This process's read-only mappings, one per array name, kept between reads so that the
    pages stay shared with every other process mapping the same file, and re-opened when the
    writer has replaced it (one os.stat per read). None, never an exception, for an array
    that is absent or unreadable: the caller reads its source instead."""

    def __init__(self, var_dir: Path):
        self.var_dir = Path(var_dir)
        self._maps: dict[str, MappedArray] = {}
        self._bad: dict[str, tuple] = {}        # name -> version logged as unreadable
        self._lock = threading.Lock()

    def get(self, name: str) -> MappedArray | None:
        try:
            version = _file_version(os.stat(array_path(self.var_dir, name)))
        except FileNotFoundError:
            self._maps.pop(name, None)
            return None
        current = self._maps.get(name)
        if current is not None and current.version == version:
            return current
        with self._lock:
            try:
                current = open_array(self.var_dir, name)
            except FileNotFoundError:            # replaced and removed between stat and open
                return None
            except ValueError as exc:
                if self._bad.get(name) != version:
                    self._bad[name] = version
                    log.warning("memory-mapped array %s unreadable, not used: %s", name, exc)
                return None
            self._maps[name] = current
            return current

    def drop(self, name: str) -> None:
        """Forget the mapping (it is unmapped when no array taken from it is left)."""
        self._maps.pop(name, None)


_SHARED: dict[tuple[int, str], SharedArrays] = {}   # per process: the mappings ARE per process
_SHARED_LOCK = threading.Lock()


def shared_arrays(var_dir: Path) -> SharedArrays:
    """This process's SharedArrays for `var_dir` (a forked child gets its own)."""
    key = (os.getpid(), str(var_dir))
    found = _SHARED.get(key)
    if found is None:
        with _SHARED_LOCK:
            found = _SHARED.setdefault(key, SharedArrays(var_dir))
    return found


# ---- what mapping saves, measured ------------------------------------------------------------
def mapped_usage(var_dir: Path, name: str, pids: dict[int, str]) -> dict:
    """Which of `pids` ({pid: role}) map the array now, and what its pages cost each (smaps):
    rss (resident pages of the mapping), pss (each shared page split between its mappers) and
    uss (pages no other process maps). A version replaced since a process mapped it shows as
    "stale" (the file name with " (deleted)").

    A reader holding a private copy of what it touched would have its rss as USS, so
    uss_saved_bytes = sum(rss - uss) over the readers; physical_saved_bytes = sum(rss) -
    sum(pss) counts the page cache's one copy against them."""
    target = str(array_path(var_dir, name))
    readers = []
    for pid, role in sorted(pids.items()):
        try:
            maps = [m for m in psutil.Process(pid).memory_maps(grouped=True)
                    if m.path in (target, target + " (deleted)")]
        except (psutil.Error, OSError):
            continue
        if maps:
            readers.append({"pid": pid, "role": role, "rss_bytes": sum(m.rss for m in maps),
                            "pss_bytes": sum(m.pss for m in maps),
                            "uss_bytes": sum(m.private_clean + m.private_dirty for m in maps),
                            "stale": any(m.path != target for m in maps)})
    rss, pss, uss = (sum(r[k] for r in readers) for k in ("rss_bytes", "pss_bytes", "uss_bytes"))
    return {"name": name, "readers": readers, "rss_bytes": rss, "pss_bytes": pss, "uss_bytes": uss,
            "uss_saved_bytes": rss - uss, "physical_saved_bytes": rss - pss}


_READER = r"""
import sys
sys.path.insert(0, sys.argv[4])
import mmap
import numpy as np, psutil
from core.memory import open_array
mode, var_dir, name = sys.argv[1:4]
p = psutil.Process()
base = p.memory_full_info()
m = open_array(var_dir, name)
if mode == "copy":    # a private copy read from the file, as np.load or a cache would hold it,
    # in fresh anonymous pages: malloc might reuse freed heap and hide part of its cost
    buf = mmap.mmap(-1, max(1, m.array.nbytes))
    with open(m.path, "rb") as f:
        f.seek(m.array.offset)
        f.readinto(buf)
    arr = np.frombuffer(buf, m.array.dtype, m.array.size).reshape(m.array.shape)
    del m
else:
    arr = m.array
total = float(arr.sum())   # touches every page, allocates nothing (nansum would copy)
print("ready", flush=True)
sys.stdin.readline()  # every reader holds its array now
now = p.memory_full_info()
print(now.rss - base.rss, now.uss - base.uss, now.pss - base.pss, total, flush=True)
sys.stdin.readline()
"""
_ROOT = Path(__file__).resolve().parent.parent


def _run_readers(mode: str, var_dir: Path, name: str, readers: int, timeout_s: float) -> dict:
    """`readers` processes that each hold the whole array (copy or mapping) at the same time."""
    cmd = [sys.executable, "-c", _READER, mode, str(var_dir), name, str(_ROOT)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(readers)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{mode} reader failed: {p.communicate(timeout=timeout_s)[1][-500:]}")
        for p in procs:
            p.stdin.write("measure\n")
            p.stdin.flush()
        rows = [p.stdout.readline().split() for p in procs]
        for p in procs:
            p.communicate(timeout=timeout_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(len(r) != 4 for r in rows):
        raise RuntimeError(f"{mode} reader gave no measurement: {rows}")
    return {"rss_added": [int(r[0]) for r in rows], "uss_added": [int(r[1]) for r in rows],
            "pss_added": [int(r[2]) for r in rows]}


def measure_mmap_saving(var_dir: Path, name: str, readers: int = 2, timeout_s: float = 60.0) -> dict:
    """`readers` processes hold the whole array at once, first each as a private copy, then
    each as the shared read-only mapping; the USS, RSS and PSS each added, per mode.

    Copies are private to every reader; the mapped pages are the page cache's, shared between
    the readers, so their USS barely grows. saved_bytes = (copy USS - mapped USS) summed over
    the readers. With a single reader there is nothing to share (its mapped pages count as its
    own), so at least two are needed."""
    if isinstance(readers, bool) or not isinstance(readers, int) or readers < 2:
        raise ValueError(f"readers must be an int >= 2 (one reader shares nothing), got {readers!r}")
    array_bytes = int(open_array(var_dir, name).array.nbytes)
    res = {mode: _run_readers(mode, var_dir, name, readers, timeout_s) for mode in ("copy", "mmap")}
    saved = sum(res["copy"]["uss_added"]) - sum(res["mmap"]["uss_added"])
    return {**res, "readers": readers, "saved_bytes": saved, "array_bytes": array_bytes}


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
