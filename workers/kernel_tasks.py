"""Celery task `kernels.optimize` (beat: every settings.kernels_optimize_interval_s, and once
when a worker starts): benchmark and verify every enabled kernel backend, pick the fastest
correct one per kernel, batch size, threads and ONNX Runtime session options, and measure the
signal model out of sample (core.optimizer.run_kernels_optimization). The results land in
Redis (schema.KERNELS_SELECTION / KERNELS_BENCH / KERNELS_HISTORY / MODEL_METRICS) where the
pipeline runner and the Latency page read them. A `SET NX EX` lock keeps runs from overlapping
(two at once would also time each other); a re-run overwrites, so running twice is harmless.
quick=True: a quarter of the rows (250,000 x 16) and fewer repeats; the table shows the shape.
"""
from __future__ import annotations

import functools
import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready

from celery_config import celery_app
from core import runtime_config, schema
from core.locks import single_run
from core.optimizer import read_selection, run_kernels_optimization
from core.settings import get_settings

log = logging.getLogger(__name__)

SOFT_LIMIT_S = 120
LOCK_TTL_S = SOFT_LIMIT_S + 30
START_DELAY_S = 10            # let the worker's other start-up work finish first


@functools.lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url, socket_timeout=10.0)


@celery_app.task(name="kernels.optimize", soft_time_limit=SOFT_LIMIT_S, ignore_result=True)
def optimize(quick: bool = False, if_older_than_s: float | None = None) -> dict:
    """Run the measured selection. With if_older_than_s, skip when the stored selection is
    newer than that (the start-up trigger must not redo a fresh run)."""
    if not isinstance(quick, bool) or (if_older_than_s is not None and not
                                       isinstance(if_older_than_s, (int, float))):
        return {"status": "failed", "reason": "quick must be a bool, if_older_than_s a number"}
    client = _client()
    try:
        if if_older_than_s is not None:
            ts = read_selection(client).get("ts") or 0
            if time.time() - ts < if_older_than_s:
                return {"status": "skipped", "reason": "selection is fresh"}
        with single_run(client, schema.KERNELS_LOCK, LOCK_TTL_S) as mine:
            if not mine:
                return {"status": "skipped", "reason": "another run holds the lock"}
            live = runtime_config.live("worker")
            live.refresh()     # a change saved just before this run (the Settings page starts one)
            result = run_kernels_optimization(runtime_config.effective_settings(live.values), client, quick=quick)
    except redis.RedisError as exc:
        log.warning("kernels.optimize: Redis unavailable: %s", exc)
        return {"status": "failed", "reason": f"Redis unavailable: {exc}"}
    except SoftTimeLimitExceeded:
        log.warning("kernels.optimize: over its soft time limit")
        return {"status": "failed", "reason": "soft time limit"}
    log.info("kernels.optimize: %s", result)
    return {"status": "done", **result}


@worker_ready.connect
def _optimize_at_start(sender=None, **_kwargs) -> None:
    interval = get_settings().kernels_optimize_interval_s
    # quick (a quarter of the rows): a worker start should not hold a core for long; the
    # beat's runs measure the full 1,000,000 x 16 shape
    optimize.apply_async(kwargs={"quick": True, "if_older_than_s": interval}, countdown=START_DELAY_S,
                         expires=START_DELAY_S + interval)
