"""Celery task `safety.evaluate` (beat: every settings.safety_interval_s): the SafetyController's
rules, a thin wrapper around core.safety.evaluate_once.

The same evaluation also runs inside the pipeline runner, so the rules keep firing when the
worker or beat is down (fail-safe); this task covers the case where the runner is stuck and
watches telemetry from any process. A `SET NX EX` lock (schema.SAFETY_LOCK) lets one
evaluation run at a time, and transitions are idempotent, so running both is harmless.
"""
from __future__ import annotations

import functools
import logging

import redis
from celery.exceptions import SoftTimeLimitExceeded

from celery_config import celery_app
from core import runtime_config, safety, schema
from core.settings import get_settings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # created lazily, i.e. in the prefork child after the fork, once per process
    return schema.connect(get_settings().redis_url)


@celery_app.task(name="safety.evaluate", soft_time_limit=3, ignore_result=True)
def evaluate() -> dict | str:
    """One rule evaluation: {"state", "transition", "breached"}, "skipped" (another run holds
    the lock) or "failed" (Redis unavailable)."""
    try:
        config = runtime_config.safety_config(runtime_config.live("worker").values)
        report = safety.evaluate_once(_client(), config)
    except redis.RedisError as exc:
        log.warning("safety.evaluate: Redis unavailable (%s); the runner's own evaluation "
                    "and the guards' fail-closed heartbeat still apply", exc)
        return "failed"
    except SoftTimeLimitExceeded:
        log.warning("safety.evaluate: over its soft time limit")
        return "failed"
    if report is None:
        return "skipped"
    return {"state": report["state"], "transition": report["transition"],
            "breached": [r["name"] for r in report["rules"] if r["breached"]]}
