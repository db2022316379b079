"""Non-overlapping runs across processes and machines: a Redis `SET NX` lock with a token.

As Superset's `tasks/locks.py`: the lock expires by itself (a crashed holder cannot block
forever) and is released only by its holder (after an expiry it may belong to the next run).
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import redis

# delete the lock only while it is still ours
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
            "end return 0")


@contextlib.contextmanager
def single_run(client: redis.Redis, key: str, ttl_s: float) -> Iterator[bool]:
    """Yield True when this caller holds `key` for at most ttl_s, False when another does.
    Redis errors propagate: the caller decides what a failed run means."""
    token = uuid.uuid4().hex
    acquired = bool(client.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))))
    try:
        yield acquired
    finally:
        if acquired:
            client.eval(_RELEASE, 1, key, token)
