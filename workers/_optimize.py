"""The lock-and-record frame shared by the scheduled optimization tasks (memory, cache, database).

A run holds `schema.opt_lock(area)` (SET NX EX) so runs never overlap; a second one answers
"skipped". Whatever the core function returns is stored with a timestamp and its duration in
the area's history stream and as the latest result, so the pages show before/after figures.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import redis
from celery.exceptions import SoftTimeLimitExceeded

from core import schema
from core.locks import single_run
from core.memory import record_run
from core.settings import get_settings

log = logging.getLogger(__name__)


def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url)


def run_locked(area: str, lock_s: int, work: Callable[[redis.Redis], dict], trigger: str) -> dict:
    client = _client()
    try:
        with single_run(client, schema.opt_lock(area), lock_s) as mine:
            if not mine:
                return {"status": "skipped", "reason": "another run holds the lock"}
            started = time.time()
            result = work(client)
            result.update(status="done", area=area, trigger=trigger, ts=started,
                          duration_s=round(time.time() - started, 3))
            record_run(client, area, result)
            return {"status": "done", "ts": started, "changes": result.get("changes", [])}
    except redis.RedisError as exc:
        log.warning("%s.optimize: Redis unavailable: %s", area, exc)
        return {"status": "failed", "reason": f"Redis unavailable: {exc}"}
    except SoftTimeLimitExceeded:
        log.warning("%s: over its soft time limit", area)
        return {"status": "failed", "reason": "soft time limit"}
    finally:
        client.close()
