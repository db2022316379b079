"""How the web process reaches Redis: one connection pool per process, and a guard that turns
"Redis unreachable" into a placeholder instead of a callback error (the shell shows the banner)."""
from __future__ import annotations

import functools
import logging
import time

import redis

from core import schema
from core.settings import get_settings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def client() -> redis.Redis:
    # A connection pool, not shared mutable state: safe per gunicorn worker and thread.
    return schema.connect(get_settings().redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)


def guarded(fallback):
    """Decorate a callback: on a Redis error return `fallback(*args)` and log once a minute."""
    def wrap(fn):
        last = [0.0]

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (redis.RedisError, OSError) as exc:
                now = time.monotonic()
                if now - last[0] > 60:
                    last[0] = now
                    log.warning("%s: Redis unreachable (%s); showing placeholders", fn.__name__, exc)
                return fallback(*args, **kwargs)
        return inner
    return wrap
