"""`memory.optimize`: measure, collect, recover, keep the daily closes memory-mapped.

Thin: the work is core.memory and core.shared_closes; this module picks the inputs from
settings and writes the result (with before/after figures) to the optimization history
through workers._optimize.
"""
from __future__ import annotations

import logging
import subprocess

from celery_config import celery_app
from core import history, memory, runtime_config, shared_closes
from workers._optimize import run_locked

log = logging.getLogger(__name__)

LOCK_S = 120


def _work(client, trigger: str) -> dict:
    s = runtime_config.effective_settings(runtime_config.live("worker").values)
    before = memory.monitor_memory_usage(client)
    recovery = memory.recover(client, before["percent"], s.gc_threshold_pct, s.memory_threshold_pct)
    result = recovery if recovery["action"] != "none" else memory.optimize_memory()
    after = memory.monitor_memory_usage(client)
    trend = memory.get_memory_trend(memory.memory_series(client, 900))
    try:
        mmap = shared_closes.refresh_and_measure(client, s, {p["pid"]: p["role"] for p in after["procs"]})
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError, *history.DB_ERRORS) as exc:
        log.warning("memory.optimize: memory-mapped closes not refreshed or measured: %s", exc)
        mmap = None
    changes = [{"what": "worker rss_bytes", "before": result["rss_before"], "after": result["rss_after"]},
               {"what": "gc objects collected", "before": None, "after": result["freed_objects"]},
               {"what": "console rss_bytes", "before": before["console_rss_bytes"],
                "after": after["console_rss_bytes"]}]
    if mmap:
        changes += shared_closes.saving_changes(mmap)
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


