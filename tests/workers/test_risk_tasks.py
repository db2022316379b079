"""risk.compute: the lock, outage handling, and the real worker + beat producing the figures."""
from __future__ import annotations

import time

import pytest

from core import risk_manager, schema
from tests.conftest import free_port, wait_for
from workers import risk_tasks

DB = 14


@pytest.fixture
def own_db(own_db, redis_url, monkeypatch):
    """The task on a database of its own: a session-wide console may be computing too."""
    # the conftest database DB, and the task module's client pointed at it
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    monkeypatch.setattr(risk_tasks, "_client", lambda: schema.connect(url))
    return own_db


def test_compute_writes_the_risk_document_and_releases_the_lock(own_db):
    before = time.time()
    assert risk_tasks.compute() == "computed"
    latest = risk_manager.latest(own_db)
    assert latest["ts"] >= before
    assert {r["method"] for r in latest["var"]} == {"historical", "parametric", "cornish_fisher",
                                                    "monte_carlo"}
    assert own_db.zcard(schema.RISK_HISTORY) == 1
    assert own_db.get(schema.RISK_LOCK) is None


def test_compute_skips_while_another_run_holds_the_lock(own_db):
    own_db.set(schema.RISK_LOCK, "other-run", px=5000)
    assert risk_tasks.compute() == "skipped"
    assert own_db.get(schema.RISK_LATEST) is None
    assert own_db.get(schema.RISK_LOCK) == b"other-run"


def test_compute_with_redis_down_reports_failure_without_raising(monkeypatch, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(risk_tasks, "_client", lambda: schema.connect(dead))
    assert risk_tasks.compute() == "failed"
    assert "Redis unavailable" in caplog.text


@pytest.mark.timeout(90)
def test_beat_schedules_risk_compute_and_the_real_worker_stores_it(redis_url, celery_worker_process,
                                                                   celery_beat_process):
    client = schema.connect(redis_url)
    started = time.time()
    latest = wait_for(lambda: (d := risk_manager.latest(client)) and d["ts"] > started and d,
                      40, 0.5, "a risk document computed after the test started")
    assert len(latest["var"]) == 8 and "model" in latest and "pnl" in latest
