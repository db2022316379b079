"""Celery side of risk analytics: the `risk.compute` beat task.

Thin: take the lock, call core.risk_manager.run_once, report. Beat schedules it every
settings.risk_interval_s; a SET NX PX lock makes an overlapping run skip instead of
computing the same figures twice (the result is overwritten anyway, so a rerun is harmless).
"""
from __future__ import annotations

import functools
import logging

import redis
from celery.exceptions import SoftTimeLimitExceeded

from celery_config import celery_app
from core import history, risk_manager, runtime_config, schema
from core.cache import CacheManager, publish_statistics
from core.locks import single_run
from core.settings import get_settings

log = logging.getLogger(__name__)

SOFT_TIME_LIMIT_S = 20
LOCK_TTL_MS = (SOFT_TIME_LIMIT_S + 5) * 1000   # outlives a running computation


def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url)


@functools.lru_cache(maxsize=1)
def _history_cache():
    """This pool process's read-through cache for the history database (L1 here, L2 Redis);
    its access log feeds cache.optimize, its statistics the Cache page. Its TTL and L1 size
    follow the runtime settings (the Settings page) through this process's listener."""
    settings = get_settings()
    cache = CacheManager.from_settings(schema.connect(settings.redis_url), settings)
    cache.follow_config(runtime_config.live("worker"))
    cache.enable_access_log()
    return cache


@celery_app.task(name="risk.compute", soft_time_limit=SOFT_TIME_LIMIT_S, ignore_result=True)
def compute() -> str:
    """Recompute the portfolio's risk into schema.RISK_LATEST: "computed", "skipped" (another
    run holds the lock) or "failed" (Redis or the database unavailable, or too slow)."""
    settings = get_settings()
    client = _client()
    try:
        with single_run(client, schema.RISK_LOCK, LOCK_TTL_MS / 1000) as mine:
            if not mine:
                return "skipped"
            conn = history.connect(settings.database_url)
            try:
                cache = _history_cache()
                risk_manager.run_once(client, conn, settings, cache=cache)
                publish_statistics(client, cache)
            finally:
                conn.close()
            return "computed"
    except redis.RedisError as exc:
        log.warning("risk.compute: Redis unavailable: %s", exc)
        return "failed"
    except (OSError, NotImplementedError, *history.DB_ERRORS) as exc:
        log.warning("risk.compute: history unavailable: %s", exc)
        return "failed"
    except SoftTimeLimitExceeded:
        log.warning("risk.compute: over its soft time limit, result dropped")
        return "failed"
    finally:
        client.close()
