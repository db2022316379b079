"""Celery task `telemetry.rollup` (beat: every second): a thin wrapper around core rollup.

A `SET NX EX` lock keeps two workers from rolling up at once; the rollup itself is
idempotent (it overwrites by second), so a run that finds the lock taken is simply skipped.
"""
from __future__ import annotations

import functools
import logging

import redis

from celery_config import celery_app
from core import schema
from core.locks import single_run
from core.settings import get_settings
from core.telemetry.rollup import rollup

log = logging.getLogger(__name__)

LOCK_TTL_S = 10


@functools.lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # created lazily, i.e. in the prefork child after the fork, once per process
    return schema.connect(get_settings().redis_url)


@celery_app.task(name="telemetry.rollup", soft_time_limit=5, ignore_result=True)
def rollup_task():
    """Roll up finished seconds. Returns the rollup report, "skipped" or "failed"."""
    client = _client()
    try:
        with single_run(client, schema.TELE_ROLLUP_LOCK, LOCK_TTL_S) as mine:
            if not mine:
                return "skipped"
            report = rollup(client)
    except redis.RedisError as exc:
        log.warning("telemetry.rollup: Redis unavailable (%s); will retry on the next beat", exc)
        return "failed"
    if report["bad"] or report["late"]:
        log.warning("telemetry.rollup: skipped %d undecodable and %d late entries (%s)",
                    report["bad"], report["late"], report)
    return report
