"""`memory.optimize`: measure, collect, recover, keep the daily closes memory-mapped.

Thin: the work is core.memory; this module picks the inputs from settings and writes the
result (with before/after figures) to the optimization history through workers._optimize.
"""
from __future__ import annotations

import logging
import subprocess
import time

from celery_config import celery_app
from core import history, memory, runtime_config, schema, shared_closes
from workers._optimize import run_locked

log = logging.getLogger(__name__)

LOCK_S = 120
MEASURE_EVERY_S = 3600.0          # the two-process copy-vs-mapping measurement


def _measure_hourly(s, entry: dict) -> dict:
    """Two processes holding the closes at once, as private copies and as mappings
    (core.memory.measure_mmap_saving), at most every MEASURE_EVERY_S: the last one otherwise."""
    last = entry.get("measured") or None
    if last and time.time() - last.get("ts", 0) < MEASURE_EVERY_S:
        return last
    return {"ts": time.time(), **memory.measure_mmap_saving(s.var_dir, shared_closes.NAME, readers=2)}


def _shared_closes(client, s, pids: dict[int, str]) -> dict | None:
    """The memory-mapped daily closes (core.shared_closes): rebuilt when absent or behind the
    history (the pipeline runner keeps it current while it runs), then what it saves, measured:
    the console processes mapping it now (smaps) and the hourly two-process comparison."""
    conn = history.connect(s.database_url)
    try:
        mapped = shared_closes.current_mapping(conn, s.var_dir)
        if mapped is None and shared_closes.rebuild(conn, s.var_dir, shared_closes.keep_days(s), client):
            mapped = shared_closes.current_mapping(conn, s.var_dir)
    finally:
        conn.close()
    if mapped is None:
        return None                               # no history yet
    entry = schema.loads(client.hget(schema.MEMORY_MMAP, shared_closes.NAME)) or {}
    live = memory.mapped_usage(s.var_dir, shared_closes.NAME, pids)
    measured = _measure_hourly(s, entry)
    client.hset(schema.MEMORY_MMAP, shared_closes.NAME, schema.dumps(
        {"path": str(mapped.path), "shape": list(mapped.array.shape), "dtype": mapped.array.dtype.str,
         "bytes": int(mapped.array.nbytes), "t": mapped.written_at, "meta": mapped.meta,
         "live": live, "measured": measured}))
    return {"name": shared_closes.NAME, "shape": list(mapped.array.shape),
            "array_bytes": int(mapped.array.nbytes), "live": live, "measured": measured}


def _mmap_changes(mmap: dict) -> list[dict]:
    """The optimization history's rows: USS of the readers as private copies vs as mappings."""
    live, measured = mmap["live"], mmap["measured"]
    n = len(live["readers"])
    return [{"what": f"mmap {mmap['name']}: USS of its {n} live reader(s), private copies vs mapped",
             "before": live["rss_bytes"], "after": live["uss_bytes"]},
            {"what": f"mmap {mmap['name']}: USS of {measured['readers']} processes holding it, "
                     "copies vs mapped (measured)",
             "before": sum(measured["copy"]["uss_added"]), "after": sum(measured["mmap"]["uss_added"])}]


def _work(client, trigger: str) -> dict:
    s = runtime_config.effective_settings(runtime_config.live("worker").values)
    before = memory.monitor_memory_usage(client)
    recovery = memory.recover(client, before["percent"], s.gc_threshold_pct, s.memory_threshold_pct)
    result = recovery if recovery["action"] != "none" else memory.optimize_memory()
    after = memory.monitor_memory_usage(client)
    trend = memory.get_memory_trend(memory.memory_series(client, 900))
    try:
        mmap = _shared_closes(client, s, {p["pid"]: p["role"] for p in after["procs"]})
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError, *history.DB_ERRORS) as exc:
        log.warning("memory.optimize: memory-mapped closes not refreshed or measured: %s", exc)
        mmap = None
    changes = [{"what": "worker rss_bytes", "before": result["rss_before"], "after": result["rss_after"]},
               {"what": "gc objects collected", "before": None, "after": result["freed_objects"]},
               {"what": "console rss_bytes", "before": before["console_rss_bytes"],
                "after": after["console_rss_bytes"]}]
    if mmap:
        changes += _mmap_changes(mmap)
    result.pop("gc_stats", None)
    return {"action": recovery["action"], "percent": before["percent"], "gc": result["gc"],
            "freed_objects": result["freed_objects"], "freed_bytes": result["freed_bytes"],
            "changes": changes, "mmap": mmap, "leak_suspects": trend["suspects"],
            "console_trend_bytes_per_h": trend["console"]["slope"] * 3600,
            "thresholds": {"gc_pct": s.gc_threshold_pct, "memory_pct": s.memory_threshold_pct}}


@celery_app.task(name="memory.optimize", soft_time_limit=60, time_limit=90, ignore_result=False)
def optimize(trigger: str = "beat") -> dict:
    """One memory optimization run; "skipped" when another holds the lock."""
    if trigger not in ("beat", "manual", "auto"):
        return {"status": "failed", "reason": f"unknown trigger {trigger!r}"}
    return run_locked("memory", LOCK_S, lambda c: _work(c, trigger), trigger)


