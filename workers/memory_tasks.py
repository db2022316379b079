"""`memory.optimize`: measure, collect, recover, keep the risk matrices memory-mapped.

Thin: the work is core.memory; this module picks the inputs from settings and writes the
result (with before/after figures) to the optimization history through workers._optimize.
"""
from __future__ import annotations

import time

from celery_config import celery_app
from core import history, memory, runtime_config
from workers._optimize import run_locked

LOCK_S = 120
MMAP_REFRESH_S = 3600.0
RETURNS_NAME = "risk_returns"


def _refresh_mmap(client, settings) -> dict | None:
    """Store the daily return matrix (what risk reads) as an np.memmap under var/, at most
    hourly, and measure the memory two read-only readers save against private copies."""
    path = settings.var_dir / "mmap" / f"{RETURNS_NAME}.npy"
    if path.exists() and time.time() - path.stat().st_mtime < MMAP_REFRESH_S:
        return None
    if settings.sqlite_path is None or not settings.sqlite_path.exists():
        return None
    conn = history.connect(settings.database_url)
    try:
        symbols = [r[0] for r in conn.execute("SELECT symbol FROM symbols ORDER BY symbol")]
        closes = history.closes_matrix(conn, symbols) if symbols else None
    finally:
        conn.close()
    if closes is None or len(closes) < 2:
        return None
    returns = closes[1:] / closes[:-1] - 1.0
    memory.store_array(settings.var_dir, RETURNS_NAME, returns, client)
    saving = memory.measure_mmap_saving(path, readers=2)
    return {"name": RETURNS_NAME, "shape": list(returns.shape), **saving}


def _work(client, trigger: str) -> dict:
    s = runtime_config.effective_settings(runtime_config.live("worker").values)
    before = memory.monitor_memory_usage(client)
    recovery = memory.recover(client, before["percent"], s.gc_threshold_pct, s.memory_threshold_pct)
    result = recovery if recovery["action"] != "none" else memory.optimize_memory()
    after = memory.monitor_memory_usage(client)
    trend = memory.get_memory_trend(memory.memory_series(client, 900))
    mmap = _refresh_mmap(client, s)
    changes = [{"what": "worker rss_bytes", "before": result["rss_before"], "after": result["rss_after"]},
               {"what": "gc objects collected", "before": None, "after": result["freed_objects"]},
               {"what": "console rss_bytes", "before": before["console_rss_bytes"],
                "after": after["console_rss_bytes"]}]
    if mmap:
        changes.append({"what": f"mmap {mmap['name']} reader USS (2 readers)",
                        "before": sum(mmap["copy"]["uss_added"]), "after": sum(mmap["mmap"]["uss_added"])})
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


