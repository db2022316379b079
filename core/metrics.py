"""RealtimeMetricsCollector: system and console-process metrics via psutil, kept in Redis.

The collector runs as a Celery task on whichever pool process picks it up, so it keeps no
state in memory: rates and CPU percentages are deltas against the previous raw counters
stored in Redis (schema.METRICS_PREV). The first sample, a counter that went backwards
(reboot, wrap, a re-created interface) and a gap too long to mean "now" give None, never a
made-up number. Samples go to a 1 h second series and a 24 h minute series (mean and max).

CPU percentages are shares of the whole machine (0-100 for all cores together), so process,
console and machine figures can share one axis; `cpu_per_core` is 0-100 per core.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import psutil
import redis

from core import schema
from core.procs import console_processes
from core.settings import get_settings

log = logging.getLogger(__name__)

# Past this gap a delta is an average over minutes, not a current rate: report None instead.
MAX_RATE_GAP_S = 120.0
PREV_TTL_S = 600
SAMPLE_KEYS = ("t", "cpu_pct", "cpu_per_core", "mem_pct", "mem_used_bytes", "mem_total_bytes",
               "mem_available_bytes", "swap_pct", "disk_pct", "disk_read_bps", "disk_write_bps",
               "net_sent_bps", "net_recv_bps", "console_rss_bytes", "console_cpu_pct", "procs")


# ---- stateless delta arithmetic ------------------------------------------------------
def cpu_busy_pct(prev: dict | None, cur: dict | None) -> float | None:
    """Busy share (0-100) between two psutil cpu_times snapshots given as {field: seconds}.

    Busy = total - idle - iowait, where total excludes guest time because Linux already
    counts it in user/nice (psutil's own formula). None when there is no previous snapshot
    or the total did not advance (no time passed, or counters reset). Linux's iowait may
    step back a little on its own (proc(5)); that only clamps the result into 0-100.
    """
    if not prev or not cur:
        return None

    def total_idle(t: dict) -> tuple[float, float]:
        total = sum(t.values()) - t.get("guest", 0.0) - t.get("guest_nice", 0.0)
        return total, t.get("idle", 0.0) + t.get("iowait", 0.0)

    (t0, i0), (t1, i1) = total_idle(prev), total_idle(cur)
    d_total = t1 - t0
    if d_total <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * (d_total - (i1 - i0)) / d_total))


def counter_rate(prev: float | None, cur: float | None, dt: float | None) -> float | None:
    """Per-second rate of a monotonic counter; None on first sample, reset or bad interval."""
    if prev is None or cur is None or dt is None or not 0 < dt <= MAX_RATE_GAP_S or cur < prev:
        return None
    return (cur - prev) / dt


def process_cpu_pct(prev_s: float | None, cur_s: float | None, dt: float | None,
                    ncpu: int) -> float | None:
    """A process's CPU (user+system seconds) as a share of the whole machine, 0-100."""
    rate = counter_rate(prev_s, cur_s, dt)
    if rate is None or ncpu < 1:
        return None
    return min(100.0, 100.0 * rate / ncpu)


# ---- reading psutil ------------------------------------------------------------------
def _proc_id(pid: int, started: float) -> str:
    # pid plus start time: a reused pid must not be diffed against its predecessor
    return f"{pid}:{started:.2f}"


def read_counters(procs: list[dict], now: float) -> dict:
    """Raw monotonic counters, JSON-ready: what the next run diffs against."""
    disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
    counters = {
        "t": now,
        "ncpu": psutil.cpu_count() or 1,
        "cpu": psutil.cpu_times()._asdict(),
        "cpu_per_core": [c._asdict() for c in psutil.cpu_times(percpu=True)],
        "disk": {"read": disk.read_bytes, "write": disk.write_bytes} if disk else None,
        "net": {"sent": net.bytes_sent, "recv": net.bytes_recv} if net else None,
        "procs": {},
    }
    for entry in procs:
        try:
            proc = psutil.Process(entry["pid"])
            with proc.oneshot():
                cpu, rss = proc.cpu_times(), proc.memory_info().rss
        except psutil.Error:
            continue  # exited since the registry was read
        counters["procs"][_proc_id(entry["pid"], entry["started"])] = {
            "role": entry["role"], "pid": entry["pid"], "cpu_s": cpu.user + cpu.system, "rss": rss}
    return counters


def _disk_path() -> str:
    """The filesystem holding the console's data (var/), else the root filesystem."""
    path = Path(get_settings().var_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    return str(path)


def read_gauges(disk_path: str | None = None) -> dict:
    """Point-in-time values that need no previous sample."""
    mem, swap = psutil.virtual_memory(), psutil.swap_memory()
    try:
        disk_pct = psutil.disk_usage(disk_path or _disk_path()).percent
    except OSError:
        disk_pct = None
    return {"mem_pct": mem.percent, "mem_used_bytes": mem.used, "mem_total_bytes": mem.total,
            "mem_available_bytes": mem.available, "swap_pct": swap.percent, "disk_pct": disk_pct}


# ---- the sample ----------------------------------------------------------------------
def _sub(d: dict | None, key: str):
    return None if d is None else d.get(key)


def build_sample(cur: dict, prev: dict | None, gauges: dict) -> dict:
    """The published sample (exact shape of SAMPLE_KEYS) from raw counters and gauges."""
    prev = prev or {}
    dt = cur["t"] - prev["t"] if "t" in prev else None
    per_core_prev = prev.get("cpu_per_core") or []
    per_core = [cpu_busy_pct(per_core_prev[i] if i < len(per_core_prev) else None, c)
                for i, c in enumerate(cur["cpu_per_core"])]
    prev_procs = prev.get("procs") or {}
    procs = []
    for key, p in cur["procs"].items():
        prev_cpu = _sub(prev_procs.get(key), "cpu_s")
        procs.append({"role": p["role"], "pid": p["pid"],
                      "cpu_pct": process_cpu_pct(prev_cpu, p["cpu_s"], dt, cur["ncpu"]),
                      "rss_bytes": p["rss"]})
    procs.sort(key=lambda p: (p["role"], p["pid"]))
    # a process seen for the first time has no CPU figure yet; the console total sums the rest
    cpus = [p["cpu_pct"] for p in procs if p["cpu_pct"] is not None]
    pd, cd, pn, cn = prev.get("disk"), cur["disk"], prev.get("net"), cur["net"]
    sample = {
        "t": float(cur["t"]),
        "cpu_pct": cpu_busy_pct(prev.get("cpu"), cur["cpu"]),
        "cpu_per_core": per_core,
        **gauges,
        "disk_read_bps": counter_rate(_sub(pd, "read"), _sub(cd, "read"), dt),
        "disk_write_bps": counter_rate(_sub(pd, "write"), _sub(cd, "write"), dt),
        "net_sent_bps": counter_rate(_sub(pn, "sent"), _sub(cn, "sent"), dt),
        "net_recv_bps": counter_rate(_sub(pn, "recv"), _sub(cn, "recv"), dt),
        "console_rss_bytes": sum(p["rss_bytes"] for p in procs) if procs else None,
        "console_cpu_pct": min(100.0, sum(cpus)) if cpus else None,
        "procs": procs,
    }
    return {k: sample.get(k) for k in SAMPLE_KEYS}


# ---- minute aggregates ---------------------------------------------------------------
def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _max(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _core(sample: dict, i: int) -> float | None:
    cores = sample.get("cpu_per_core") or []
    return cores[i] if i < len(cores) else None


def aggregate_minute(samples: list[dict], minute_start: float) -> dict:
    """One minute of samples as one sample of the same shape: means, plus "max" and "n".

    Byte counts stay integers; per-core and per-process values are averaged per core / per
    process over the samples in which they appear.
    """
    agg: dict = {"t": float(minute_start)}
    maxima: dict = {}
    for key in SAMPLE_KEYS:
        if key in ("t", "cpu_per_core", "procs"):
            continue
        column = [s.get(key) for s in samples]
        mean = _mean(column)
        agg[key] = round(mean) if mean is not None and key.endswith("_bytes") else mean
        maxima[key] = _max(column)
    ncores = max((len(s.get("cpu_per_core") or []) for s in samples), default=0)
    agg["cpu_per_core"] = [_mean([_core(s, i) for s in samples]) for i in range(ncores)]
    by_proc: dict = {}
    for s in samples:
        for p in s.get("procs") or []:
            by_proc.setdefault((p["role"], p["pid"]), []).append(p)
    agg["procs"] = [{"role": role, "pid": pid,
                     "cpu_pct": _mean([p.get("cpu_pct") for p in rows]),
                     "rss_bytes": round(_mean([p.get("rss_bytes") for p in rows]) or 0)}
                    for (role, pid), rows in sorted(by_proc.items())]
    out = {k: agg.get(k) for k in SAMPLE_KEYS}
    out["n"] = len(samples)
    out["max"] = maxima
    return out


def _close_minutes(client: redis.Redis, pipe, prev: dict | None, now: float) -> int:
    """Queue the aggregates of every completed minute not yet aggregated; return the last one.

    Stateless like the rates: the last aggregated minute travels in METRICS_PREV, so a missed
    boundary (a skipped run, a restart) is caught up on the next run, up to the 1 h that the
    second series still holds. Rewriting a minute replaces it, so a repeat is harmless.
    """
    current = int(now // 60)
    done = (prev or {}).get("min_done")
    start = done + 1 if isinstance(done, int) else current - 1
    for minute in range(max(start, current - 60), current):
        lo = minute * 60
        rows = client.zrangebyscore(schema.METRICS_SEC, lo, f"({lo + 60}")
        if not rows:
            continue
        agg = aggregate_minute([schema.loads(r) for r in rows], lo)
        pipe.zremrangebyscore(schema.METRICS_MIN, lo, lo)
        schema.add_to_series(pipe, schema.METRICS_MIN, lo, schema.dumps(agg),
                             schema.MINUTE_SERIES_RETENTION_S)
    return current - 1


# ---- collection and queries ----------------------------------------------------------
def collect_sample(client: redis.Redis, now: float | None = None) -> dict:
    """Read psutil once, publish one sample (and any completed minute); return the sample.

    The caller serialises runs (workers.metrics_tasks holds schema.METRICS_LOCK): two
    interleaved runs would diff against each other's counters. Raises redis.RedisError when
    Redis is down.
    """
    now = time.time() if now is None else float(now)
    prev = schema.loads(client.get(schema.METRICS_PREV))
    prev = prev if isinstance(prev, dict) else None
    counters = read_counters(console_processes(client), now)
    sample = build_sample(counters, prev, read_gauges())
    pipe = client.pipeline(transaction=False)
    counters["min_done"] = _close_minutes(client, pipe, prev, now)
    pipe.set(schema.METRICS_PREV, schema.dumps(counters), ex=PREV_TTL_S)
    schema.add_to_series(pipe, schema.METRICS_SEC, now, schema.dumps(sample),
                         schema.SECOND_SERIES_RETENTION_S)
    pipe.execute()
    return sample


def metrics_series(client: redis.Redis, window_s: float, now: float | None = None) -> list[dict]:
    """Samples of the last `window_s` seconds, oldest first.

    Up to 1 h: the 1-second samples. Longer: the 1-minute aggregates (24 h kept; the minute
    in progress is not aggregated yet). Raises ValueError for a window that is not a
    positive number, redis.RedisError when Redis is down.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) \
            or not math.isfinite(window_s) or window_s <= 0:
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
    now = time.time() if now is None else float(now)
    key = schema.METRICS_SEC if window_s <= schema.SECOND_SERIES_RETENTION_S else schema.METRICS_MIN
    rows = client.zrangebyscore(key, now - window_s, now)
    return [schema.loads(r) for r in rows]


def latest_metrics(client: redis.Redis) -> dict | None:
    """The newest 1-second sample, or None before the first collection."""
    newest = client.zrevrange(schema.METRICS_SEC, 0, 0)
    return schema.loads(newest[0]) if newest else None
