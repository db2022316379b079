"""`safety.evaluate`: the thin task halts on a breached rule, skips under the lock, reports
Redis outages; a real worker runs it, and beat schedules it every second with `expires`."""
from __future__ import annotations

import time

import pytest

from celery_config import CeleryConfig, celery_app
from core import safety, schema
from tests.conftest import wait_for
from workers import safety_tasks

DB = 10


@pytest.fixture
def db_client(redis_url, monkeypatch):
    client = schema.connect(redis_url.rsplit("/", 1)[0] + f"/{DB}")
    client.flushdb()
    monkeypatch.setattr(safety_tasks, "_client", lambda: client)
    yield client
    client.flushdb()


def test_task_halts_when_the_daily_loss_rule_is_breached(db_client):
    db_client.hset(schema.BROKER_ACCOUNT, mapping={"equity": "900000", "day_start_equity": "1000000"})
    out = safety_tasks.evaluate()
    assert out["state"] == "HALTED" and "daily_loss" in out["breached"]
    assert safety.read_meta(db_client)["source"] == "rule:daily_loss"
    db_client.delete(schema.SAFETY_LOCK)
    assert safety_tasks.evaluate()["transition"] is None          # idempotent: already halted


def test_task_skips_while_another_evaluation_holds_the_lock(db_client):
    db_client.set(schema.SAFETY_LOCK, "x", px=5000)
    assert safety_tasks.evaluate() == "skipped"


def test_task_reports_failed_when_redis_is_down(monkeypatch):
    dead = schema.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    monkeypatch.setattr(safety_tasks, "_client", lambda: dead)
    assert safety_tasks.evaluate() == "failed"


def test_beat_schedules_safety_evaluate_every_second_with_expires():
    entry = CeleryConfig.beat_schedule["safety.evaluate"]
    assert entry["task"] == "safety.evaluate" and entry["schedule"] == 1.0
    assert entry["options"]["expires"] >= 1.0
    assert "workers.safety_tasks" in CeleryConfig.include


@pytest.mark.timeout(60)
def test_real_worker_runs_the_evaluation(redis_url, celery_worker_process):
    client = schema.connect(redis_url)                  # the worker's db 0: not flushed
    before = time.time()
    client.delete(schema.SAFETY_LOCK)
    celery_app.send_task("safety.evaluate")
    status = wait_for(lambda: (lambda s: s if s and s["ts"] >= before else None)(
        schema.loads(client.get(schema.SAFETY_STATUS))), 20, what="an evaluation by the worker")
    assert {r["name"] for r in status["rules"]} == {"daily_loss", "drawdown", "latency", "error_rate"}
