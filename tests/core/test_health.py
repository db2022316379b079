"""health_status: fresh, stale, missing and unreadable heartbeats, and Redis unreachable."""
from __future__ import annotations

import time

import pytest

from core import schema
from core.health import health_status
from tests.conftest import free_port


@pytest.fixture
def client(isolated_client):
    return isolated_client


NOW = 1_800_000_000.0


def _beat(client, part: str, age_s: float) -> None:
    client.set(schema.heartbeat(part), f"{NOW - age_s:.3f}")


def _all_fresh(client) -> None:
    for part in ("beat", "pipeline", "worker:w1@host"):
        _beat(client, part, 1.0)


def test_all_parts_fresh_is_ok(client, settings):
    _all_fresh(client)
    health = health_status(client, settings, now=NOW)
    assert health["status"] == "ok" and health["checked_at"] == NOW
    assert set(health["parts"]) == {"redis", "worker", "beat", "pipeline"}
    assert all(p["status"] == "ok" for p in health["parts"].values())
    assert health["parts"]["beat"]["age_s"] == pytest.approx(1.0)


def test_stale_heartbeat_fails_that_part_and_the_whole(client, settings):
    _all_fresh(client)
    _beat(client, "beat", settings.heartbeat_stale_s + 5)
    health = health_status(client, settings, now=NOW)
    assert health["status"] == "fail"
    beat = health["parts"]["beat"]
    assert beat["status"] == "fail" and "stale" in beat["detail"]
    assert beat["age_s"] == pytest.approx(settings.heartbeat_stale_s + 5)
    assert health["parts"]["pipeline"]["status"] == "ok"


def test_missing_heartbeat_fails_with_a_named_detail(client, settings):
    _all_fresh(client)
    client.delete(schema.heartbeat("pipeline"))
    health = health_status(client, settings, now=NOW)
    pipeline = health["parts"]["pipeline"]
    assert health["status"] == "fail"
    assert pipeline == {"status": "fail", "detail": "no pipeline heartbeat", "age_s": None}


def test_unreadable_heartbeat_is_a_failure_not_a_crash(client, settings):
    _all_fresh(client)
    client.set(schema.heartbeat("beat"), "yesterday")
    assert health_status(client, settings, now=NOW)["parts"]["beat"]["status"] == "fail"


def test_freshest_of_several_workers_counts(client, settings):
    _all_fresh(client)
    _beat(client, "worker:w1@host", settings.heartbeat_stale_s + 60)
    _beat(client, "worker:w2@host", 2.0)
    worker = health_status(client, settings, now=NOW)["parts"]["worker"]
    assert worker["status"] == "ok" and worker["age_s"] == pytest.approx(2.0)
    assert "w2@host" in worker["detail"]


def test_no_worker_at_all_fails_the_worker_part(client, settings):
    _beat(client, "beat", 1.0)
    _beat(client, "pipeline", 1.0)
    assert health_status(client, settings, now=NOW)["parts"]["worker"]["status"] == "fail"


@pytest.mark.timeout(10)
def test_redis_unreachable_names_redis_and_never_raises(settings):
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    health = health_status(dead, settings, now=NOW)
    assert time.monotonic() - started < 3.0
    assert health["status"] == "fail"
    redis_part = health["parts"]["redis"]
    assert redis_part["status"] == "fail" and "refused" in redis_part["detail"].lower()
    for part in ("worker", "beat", "pipeline"):
        assert health["parts"][part]["status"] == "unknown"
