"""The single-run lock: one holder at a time, expiry, and release only by the holder."""
from __future__ import annotations

import time

from core.locks import single_run


def test_second_caller_is_refused_while_the_first_holds_the_lock(redis_client):
    with single_run(redis_client, "t:lock", 5) as first:
        with single_run(redis_client, "t:lock", 5) as second:
            assert first is True and second is False
    with single_run(redis_client, "t:lock", 5) as again:
        assert again is True                      # released on exit


def test_an_expired_lock_taken_by_another_is_not_released_by_the_first_holder(redis_client):
    with single_run(redis_client, "t:lock", 0.05) as first:
        assert first
        time.sleep(0.1)                           # expired: the next run takes it
        redis_client.set("t:lock", "someone-else")
    assert redis_client.get("t:lock") == b"someone-else"
