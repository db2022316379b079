"""metrics.collect: the lock, outage handling, and a real worker collecting real numbers."""
from __future__ import annotations

import os
import socket
import time

import psutil
import pytest

from core import schema
from core.metrics import SAMPLE_KEYS, latest_metrics
from core.procs import console_processes
from core.settings import get_settings
from tests.conftest import free_port, wait_for
from workers import metrics_tasks


@pytest.fixture
def own_db(redis_url, monkeypatch):
    """Point the task at a database of its own: a session-wide console may be collecting too."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    client = schema.connect(url)
    client.flushdb()
    monkeypatch.setattr(metrics_tasks, "_client", lambda: schema.connect(url))
    yield client
    client.flushdb()
    client.close()


def test_collect_writes_a_sample_registers_itself_and_releases_the_lock(own_db):
    assert metrics_tasks.collect() == "collected"
    assert list(latest_metrics(own_db)) == list(SAMPLE_KEYS)
    assert [p["pid"] for p in latest_metrics(own_db)["procs"]] == [os.getpid()]
    assert own_db.get(schema.METRICS_LOCK) is None


def test_collect_skips_while_another_run_holds_the_lock(own_db):
    own_db.set(schema.METRICS_LOCK, "other-run", px=5000)
    assert metrics_tasks.collect() == "skipped"
    assert own_db.zcard(schema.METRICS_SEC) == 0
    assert own_db.get(schema.METRICS_LOCK) == b"other-run"      # someone else's lock kept


def test_collect_with_redis_down_reports_failure_without_raising(monkeypatch, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(metrics_tasks, "_client", lambda: schema.connect(dead))
    assert metrics_tasks.collect() == "failed"
    assert "Redis unavailable" in caplog.text


def _worker_pids(worker) -> set[int]:
    main = psutil.Process(worker.pid)
    return {main.pid} | {c.pid for c in main.children()}


def _roles(client, role: str) -> set[int]:
    return {p["pid"] for p in console_processes(client) if p["role"] == role}


@pytest.mark.timeout(90)
def test_real_worker_collects_real_numbers_for_its_own_processes(redis_url, celery_worker_process):
    client = schema.connect(redis_url)
    # the main process re-registers on a timer, so it is back within seconds of being lost
    client.hdel(schema.PROCS, f"{socket.gethostname()}:{celery_worker_process.pid}")
    wait_for(lambda: celery_worker_process.pid in _roles(client, "worker"),
             metrics_tasks.REREGISTER_EVERY_S + 5, what="worker main process registered")
    samples = []
    for _ in range(2):                      # the second run has counters to diff against
        sent = time.time()
        metrics_tasks.collect.delay()
        samples.append(wait_for(lambda: (s := latest_metrics(client)) and s["t"] >= sent and s,
                                15, what="a sample from the worker"))
        time.sleep(0.3)
    sample = samples[-1]
    assert sample["cpu_pct"] is not None and sample["mem_total_bytes"] == psutil.virtual_memory().total
    workers = [p for p in sample["procs"] if p["role"] == "worker"]
    assert workers and {p["pid"] for p in workers} <= _worker_pids(celery_worker_process)
    for p in workers:
        real_rss = psutil.Process(p["pid"]).memory_info().rss
        assert 0.5 * real_rss <= p["rss_bytes"] <= 2 * real_rss
    main = next(p for p in workers if p["pid"] == celery_worker_process.pid)
    assert main["cpu_pct"] is not None and 0.0 <= main["cpu_pct"] <= 100.0


@pytest.fixture(scope="session")
def var_dir_made():
    # beat keeps its schedule file under var/, which a fresh test session has not created yet
    get_settings().var_dir.mkdir(parents=True, exist_ok=True)


@pytest.mark.timeout(90)
def test_real_beat_registers_itself(redis_url, var_dir_made, celery_beat_process):
    client = schema.connect(redis_url)
    wait_for(lambda: celery_beat_process.pid in _roles(client, "beat"),
             metrics_tasks.REREGISTER_EVERY_S + 5, what="beat process registered")
