"""Stress jobs on the real Celery worker (prefork, `-Q celery,stress`): queued -> running ->
done with progress seen rising and the fanned-out Monte Carlo equal to one process; cancel in
the middle of a Monte Carlo stops its chunks; a double submit is one job; the worker reports
its capacity; and the tasks' delivery options, routes and beat entries."""
from __future__ import annotations

import threading
import time

import pytest

from celery_config import celery_app
from core import schema, stress, stress_jobs
from core.settings import get_settings, load_settings
from tests.conftest import wait_for
from workers import stress_tasks

pytestmark = pytest.mark.timeout(180)
DB = 2
TERMINAL = stress_jobs.TERMINAL_STATUSES


@pytest.fixture
def own_db(own_db, redis_url, monkeypatch):
    """In-process task calls on a database of their own (the session worker uses db 0)."""
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    monkeypatch.setattr(stress_tasks, "_client", lambda: schema.connect(url))
    return own_db


@pytest.fixture
def live(redis_url, celery_worker_process):
    """A client on the worker's database."""
    client = schema.connect(redis_url)
    wait_for(lambda: stress_jobs.stress_processes(client, fallback=0) > 0, 30, what="stress capacity")
    yield client
    client.close()


def submit(client, scenarios, portfolio, **options):
    return stress_jobs.start_job(client, user="tess", source="web", scenarios=scenarios,
                                 portfolio=portfolio, options=options or None)


def watch(client, job_id, timeout=120.0) -> tuple[dict, list[tuple[str, int]]]:
    """Poll the job until it ends: (final job, distinct (status, done) seen in order)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stress_jobs.get_job(client, job_id)
        point = (job["status"], job["progress"]["done"])
        if not seen or seen[-1] != point:
            seen.append(point)
        if job["status"] in TERMINAL:
            return job, seen
        time.sleep(0.005)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout}s")


def test_real_worker_runs_a_job_to_done_with_rising_progress_and_the_exact_monte_carlo(live):
    book = stress.synthetic_portfolio(100, seed=11)
    mc = {"kind": "monte_carlo", "params": {"n_paths": 1_000_000, "n_chunks": 40}}
    job_id, created = submit(live, [{"kind": k} for k in stress.STANDARD_KINDS] + [mc], book, seed=4)
    assert created and stress_jobs.get_job(live, job_id)["status"] == "queued"
    job, seen = watch(live, job_id)
    assert job["status"] == "done", job["error"]
    statuses = [s for s, _ in seen]
    assert "running" in statuses and statuses == sorted(statuses, key=("queued", "running", "done").index)
    dones = [d for _, d in seen]
    assert dones == sorted(dones) and len(set(dones)) >= 4, seen          # rising, seen in steps
    assert job["progress"] == {"done": 44, "total": 44, "stage": "done"}
    assert [r["kind"] for r in job["results"]] == list(stress.STANDARD_KINDS) + ["monte_carlo"]
    expected = stress.mc_single(book, 1_000_000, 40, 4, (0.95, 0.99))
    assert job["mc"]["by_confidence"] == expected["by_confidence"]          # bit for bit
    assert job["mc"]["histogram"]["counts"] == expected["histogram"]["counts"]
    assert job["results"][4]["pnl"] == -expected["by_confidence"][0]["var"]
    starts = {int(k): int(v) for k, v in live.hgetall(schema.stress_job(job_id, "starts")).items()}
    assert starts == {i: 1 for i in range(40)}
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]


def test_cancel_in_the_middle_of_a_monte_carlo_stops_its_chunks(live):
    book = stress.synthetic_portfolio(500, seed=12)
    job_id, _ = submit(live, [{"kind": "monte_carlo", "params": {"n_paths": 1_000_000, "n_chunks": 40}}], book)
    wait_for(lambda: stress_jobs.get_job(live, job_id)["progress"]["done"] >= 2, 60, 0.01, "two chunks done")
    assert stress_jobs.request_cancel(live, job_id, "tess")
    job = stress_jobs.get_job(live, job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled by tess"
    started_at_cancel = job["chunk_starts_at_end"]
    assert 2 <= started_at_cancel < 40
    # the queue drains: every remaining chunk task is taken and refuses to start
    wait_for(lambda: live.llen("stress") == 0, 60, 0.1, "the stress queue drained")
    time.sleep(1.0)
    assert live.hlen(schema.stress_job(job_id, "starts")) == started_at_cancel
    final = stress_jobs.get_job(live, job_id)
    assert final["status"] == "cancelled" and final["results"] == [] and final["mc"] is None
    assert not live.exists(schema.stress_job(job_id, "chunks"))


def test_a_double_submit_from_two_threads_runs_one_job(live):
    book = stress.synthetic_portfolio(30, seed=13)
    out = []
    threads = [threading.Thread(target=lambda: out.append(submit(live, [{"kind": "market_crash"}], book)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job_id for job_id, _ in out}) == 1 and sorted(c for _, c in out) == [False, True]
    job, _ = watch(live, out[0][0])
    assert job["status"] == "done" and job["run_starts"] == 1


def test_the_stress_worker_reports_its_pool_as_capacity(live):
    entry = schema.read_json_hash(live, schema.STRESS_CAPACITY)
    mine = [e for host, e in entry.items() if host.startswith("testworker@")]
    assert mine and mine[0]["processes"] == 2 and time.time() - mine[0]["ts"] < 10


def test_work_tasks_are_redelivered_on_worker_loss_and_routed_to_the_stress_queue():
    settings = get_settings()
    for task in (stress_tasks.run, stress_tasks.mc_chunk):
        assert task.acks_late and task.reject_on_worker_lost
        assert task.soft_time_limit < task.time_limit < settings.stress_visibility_timeout_s
        assert celery_app.amqp.router.route({}, task.name)["queue"].name == "stress"
    assert celery_app.conf.broker_transport_options["visibility_timeout"] == settings.stress_visibility_timeout_s
    assert celery_app.amqp.router.route({}, "risk.compute")["queue"].name == "celery"


def test_beat_reaps_stale_jobs_and_runs_the_standard_scenarios_daily_from_settings():
    settings = get_settings()
    sched = celery_app.conf.beat_schedule
    assert sched["stress.reap"]["schedule"] == settings.stress_reap_interval_s
    assert sched["stress.reap"]["options"]["expires"] > 0
    daily = sched["stress.daily"]
    hour, minute = settings.stress_daily_at.split(":")
    assert daily["schedule"].hour == {int(hour)} and daily["schedule"].minute == {int(minute)}
    assert daily["options"]["expires"] > 0
    assert load_settings({"CONSOLE_STRESS_DAILY_AT": "off"}).stress_daily_at == "off"


@pytest.mark.parametrize("env,text", [
    ({"CONSOLE_STRESS_DAILY_AT": "25:00"}, "hour must be"),
    ({"CONSOLE_STRESS_DAILY_AT": "noon"}, "HH:MM"),
    ({"CONSOLE_STRESS_VISIBILITY_TIMEOUT": "600", "CONSOLE_STRESS_STALE_AFTER": "500"}, "must exceed"),
    ({"CONSOLE_STRESS_CHUNKS_PER_PROCESS": "1"}, ">= 2"),
])
def test_stress_settings_are_range_checked(env, text):
    from core.settings import SettingsError
    with pytest.raises(SettingsError, match=text):
        load_settings(env)


def test_reap_task_fails_a_silent_job_and_run_ignores_what_it_cannot_run(own_db):
    book = stress.synthetic_portfolio(10, seed=14)
    job_id, _ = stress_jobs.start_job(own_db, user="tess", source="api", scenarios=[{"kind": "market_crash"}],
                                      portfolio=book, send=lambda *_: None)
    stress_jobs.begin_run(own_db, job_id)
    own_db.hset(schema.stress_job(job_id), "updated", repr(time.time() - get_settings().stress_stale_after_s - 5))
    assert stress_tasks.reap() == 1
    job = stress_jobs.get_job(own_db, job_id)
    assert job["status"] == "failed" and "no progress" in job["error"]
    assert stress_tasks.run(job_id) == "skipped"                     # ended: nothing runs
    assert stress_tasks.run("not-a-job-id") == "ignored"
    assert stress_tasks.mc_chunk("0123456789abcdef", 0) == "skipped"


def test_a_job_whose_snapshot_vanished_fails_with_the_reason(own_db):
    book = stress.synthetic_portfolio(10, seed=15)
    job_id, _ = stress_jobs.start_job(own_db, user="tess", source="api", scenarios=[{"kind": "market_crash"}],
                                      portfolio=book, send=lambda *_: None)
    own_db.delete(schema.stress_job(job_id, "portfolio"))
    assert stress_tasks.run(job_id) == "failed"
    job = stress_jobs.get_job(own_db, job_id)
    assert job["status"] == "failed" and "portfolio snapshot missing" in job["error"]
