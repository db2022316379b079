"""telemetry.rollup: the lock, outage handling, and a real worker rolling up real flushes."""
from __future__ import annotations

import time

import pytest

from core import schema
from core.telemetry import get_latency_statistics, stage_series
from core.telemetry.flusher import Flusher
from core.telemetry.recorder import Recorder
from core.telemetry.rollup import GRACE_S
from tests.conftest import free_port, wait_for
from workers import telemetry_tasks

TELE_KEYS = [schema.TELE_RAW, schema.TELE_ROLLUP_LAST, schema.TELE_ROLLUP_LOCK, schema.TELE_STAGES]


@pytest.fixture
def own_db(redis_url, monkeypatch):
    """A database of its own: a session-wide console may be writing telemetry to db 0."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    client = schema.connect(url)
    client.flushdb()
    monkeypatch.setattr(telemetry_tasks, "_client", lambda: client)
    yield client
    client.flushdb()
    client.close()


def _ship_one_second(url: str, values: list[int]) -> int:
    """Record values through a real flusher, labelled with a second already past the grace."""
    rec = Recorder({"alpha": 1.0})
    flusher = Flusher("test", url, interval_s=1.0, recorder=rec)
    for v in values:
        rec.record("alpha", v)
    second = int(time.time()) - GRACE_S - 1
    flusher.flush_once(second)
    assert flusher.stats()["flushed"] == 1
    return second


def test_rollup_task_rolls_up_and_releases_its_lock(own_db, redis_url):
    second = _ship_one_second(redis_url.rsplit("/", 1)[0] + "/12", [1000, 2000, 3000])
    report = telemetry_tasks.rollup_task()
    assert report["seconds"] == 1 and report["last"] >= second
    assert [p["count"] for p in stage_series(own_db, "alpha", 60)] == [3]
    assert own_db.get(schema.TELE_ROLLUP_LOCK) is None


def test_rollup_task_skips_while_another_run_holds_the_lock(own_db, redis_url):
    _ship_one_second(redis_url.rsplit("/", 1)[0] + "/12", [1000])
    own_db.set(schema.TELE_ROLLUP_LOCK, "other-run", ex=5)
    assert telemetry_tasks.rollup_task() == "skipped"
    assert own_db.get(schema.TELE_ROLLUP_LAST) is None
    assert own_db.get(schema.TELE_ROLLUP_LOCK) == b"other-run"


def test_rollup_task_with_redis_down_reports_failure_without_raising(monkeypatch, caplog):
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(telemetry_tasks, "_client", lambda: dead)
    assert telemetry_tasks.rollup_task() == "failed"
    assert "Redis unavailable" in caplog.text


@pytest.mark.timeout(90)
def test_real_worker_rolls_up_flushes_sent_with_delay(redis_url, celery_worker_process):
    client = schema.connect(redis_url)
    client.delete(*TELE_KEYS)
    second = _ship_one_second(redis_url, [5000] * 40)
    # forget progress after the flush: a beat in this session may have rolled up meanwhile
    client.delete(schema.TELE_ROLLUP_LAST)
    telemetry_tasks.rollup_task.delay()
    wait_for(lambda: stage_series(client, "alpha", 120), 30, what="summaries from the worker")
    [point] = [p for p in stage_series(client, "alpha", 120) if p["t"] == second]
    assert point["count"] == 40 and point["p99_us"] == 5.0
    stats = get_latency_statistics(client, window_s=120)
    assert stats["alpha"]["count"] == 40 and stats["alpha"]["threshold_us"] == 1000.0
    client.close()
