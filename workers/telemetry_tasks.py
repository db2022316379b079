"""Celery task `telemetry.rollup` (beat: every second): a thin wrapper around core rollup.

A `SET NX EX` lock keeps two workers from rolling up at once; the rollup itself is
idempotent (it overwrites by second), so a run that finds the lock taken is simply skipped.
"""
from __future__ import annotations

import functools
import logging
import uuid

import redis

from celery_config import celery_app
from core import schema
from core.settings import get_settings
from core.telemetry.rollup import rollup

log = logging.getLogger(__name__)

LOCK_TTL_S = 10
# delete the lock only while it is still ours (it may have expired and been taken by another)
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
            "end return 0")


@functools.lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # created lazily, i.e. in the prefork child after the fork, once per process
    return schema.connect(get_settings().redis_url)


@celery_app.task(name="telemetry.rollup", soft_time_limit=5, ignore_result=True)
def rollup_task():
    """Roll up finished seconds. Returns the rollup report, "skipped" or "failed"."""
    client = _client()
    token = uuid.uuid4().hex
    try:
        if not client.set(schema.TELE_ROLLUP_LOCK, token, nx=True, ex=LOCK_TTL_S):
            return "skipped"
        try:
            report = rollup(client)
        finally:
            client.eval(_RELEASE, 1, schema.TELE_ROLLUP_LOCK, token)
    except redis.RedisError as exc:
        log.warning("telemetry.rollup: Redis unavailable (%s); will retry on the next beat", exc)
        return "failed"
    if report["bad"] or report["late"]:
        log.warning("telemetry.rollup: skipped %d undecodable and %d late entries (%s)",
                    report["bad"], report["late"], report)
    return report
