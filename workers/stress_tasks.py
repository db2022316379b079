"""Celery side of stress tests: stress.run, stress.mc_chunk, stress.reap, stress.daily.

Thin: every task takes a job id (never arrays), reads the job's portfolio snapshot from Redis
and reports through core.stress_jobs, whose writes are conditional on the job still running.

Fan-out. stress.run sends the Monte Carlo chunks first (a Celery `group` of
`stress.mc_chunk(job_id, i)`), so idle pool processes start on them at once, and then runs the
plain scenarios itself. Whoever stores the last unit (a chunk or the run) merges and finishes
the job (core.stress_jobs.try_finish). Not a chord: a chord's counter lives in the result
backend and counts task completions, so a redelivered chunk (acks_late after a lost worker)
is counted twice or never, and a lost chord callback leaves the job hanging; here completion
is "every field of the chunks hash present", which a redelivery cannot distort, and the merge
is deterministic, so two finishers at once store the same result.

Redelivery. Both work tasks are acks_late with reject_on_worker_lost: a pool process killed
mid-chunk gets its chunk re-queued at once; a whole worker killed gets its tasks back after
the broker's visibility_timeout (CONSOLE_STRESS_VISIBILITY_TIMEOUT). Units are idempotent:
a chunk already stored is skipped, a re-run chunk overwrites its own field with the same
numbers (same seed per chunk), a re-run stress.run skips the scenarios already stored and
does not fan out twice. Soft time limits stay below the default visibility timeout, so a
healthy task is never redelivered while it runs.

Capacity. A worker that consumes the `stress` queue reports its pool size every 2 s
(StressCapacity bootstep, schema.STRESS_CAPACITY); start_job sizes the Monte Carlo fan-out
from it (>= 2 chunks per process).
"""
from __future__ import annotations

import logging
import os
import socket

import redis
from celery import bootsteps, group
from celery.exceptions import SoftTimeLimitExceeded

from celery_config import celery_app
from core import schema, stress, stress_jobs
from core.settings import get_settings
from core.stress import StressInputError

log = logging.getLogger(__name__)

QUEUE = "stress"
RUN_SOFT_LIMIT_S, CHUNK_SOFT_LIMIT_S = 240, 120
CAPACITY_EVERY_S = 2.0


def _work(soft_limit_s: int) -> dict:
    """Options of a work task: redelivered when its worker dies, hard limit 30 s after soft."""
    return dict(acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                soft_time_limit=soft_limit_s, time_limit=soft_limit_s + 30)


def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url)


def _execute(kind: str, body, job_id, *args) -> str:
    """Run a task body; any exception (the soft time limit included) ends the job as failed
    with a precise reason. Redis errors propagate: nothing can be recorded then, the job goes
    stale and is reaped."""
    if not stress_jobs.valid_id(job_id):
        return "ignored"
    client = _client()
    try:
        return body(client, job_id, *args)
    except redis.RedisError:
        raise
    except Exception as exc:
        stress_jobs.fail_job(client, job_id, _reason(kind, job_id, exc))
        return "failed"
    finally:
        client.close()


def _reason(kind: str, job_id: str, exc: Exception) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"{kind} over its soft time limit"
    if isinstance(exc, (StressInputError, stress_jobs.JobError)):
        return f"{kind}: {exc}"
    log.exception("stress %s of job %s failed", kind, job_id)      # a bug: keep the traceback
    return f"{kind} failed: {type(exc).__name__}: {exc}"


@celery_app.task(name="stress.run", **_work(RUN_SOFT_LIMIT_S))
def run(job_id: str) -> str:
    """Fan out the Monte Carlo chunks, run the plain scenarios in order (progress after each,
    the cancel flag checked before each), then finish the job if the chunks are all in."""
    return _execute("run", _run, job_id)


def _run(client, job_id: str) -> str:
    job = stress_jobs.begin_run(client, job_id)
    if job is None:
        return "skipped"
    plan, options = job["plan"], job["options"]
    if plan and not job.get("fanned_out"):
        # sent, then marked: a run lost in between sends again, and a chunk already stored skips
        group(mc_chunk.si(job_id, i) for i in range(len(plan["rows"]))).apply_async()
        client.hset(schema.stress_job(job_id), "fanned_out", "1")
    for index, spec in enumerate(job["scenarios"]):
        if spec["kind"] == "monte_carlo" or stress_jobs.has_unit(client, job_id, "results", index):
            continue
        if not stress_jobs.touch(client, job_id, f"running {spec['name']}"):
            return "cancelled"
        result = stress.run_scenario(stress_jobs.load_portfolio(client, job_id), spec,
                                     confidence=options["confidence"], seed=options["seed"])
        if stress_jobs.record_result(client, job_id, index, result, f"{spec['name']} done") is None:
            return "cancelled"
    stress_jobs.try_finish(client, job_id)
    return "ran"


@celery_app.task(name="stress.mc_chunk", **_work(CHUNK_SOFT_LIMIT_S))
def mc_chunk(job_id: str, index: int) -> str:
    """Compute chunk `index` of the job's plan unless the job has ended or the chunk is in."""
    return _execute("Monte Carlo chunk", _mc_chunk, job_id, index)


def _mc_chunk(client, job_id: str, index: int) -> str:
    if stress_jobs.has_unit(client, job_id, "chunks", index):
        stress_jobs.try_finish(client, job_id)
        return "duplicate"
    starts = stress_jobs.begin_chunk(client, job_id, index)
    if starts is None:
        return "skipped"
    if starts > stress_jobs.MAX_UNIT_STARTS:
        stress_jobs.fail_job(client, job_id, f"Monte Carlo chunk {index} lost its worker {starts - 1} times")
        return "failed"
    plan = (stress_jobs.read_record(client, job_id) or {}).get("plan")
    if not plan or not isinstance(index, int) or not 0 <= index < len(plan["rows"]):
        raise stress_jobs.JobError(f"no Monte Carlo chunk {index!r} in this job's plan")
    chunk = stress.mc_chunk(stress_jobs.load_portfolio(client, job_id), plan["n_paths"], index,
                            plan["rows"][index], plan["seed"], tuple(plan["confidences"]),
                            plan["distribution"])
    chunk["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    if stress_jobs.record_chunk(client, job_id, index, chunk) is None:
        return "dropped"
    stress_jobs.try_finish(client, job_id)
    return "stored"


def enqueue_on(connection):
    """A start_job `send` that publishes stress.run on `connection`: a broker other than this
    process's settings name (a benchmark's or a fault test's private Redis)."""
    def send(job_id: str, expires_s: float) -> None:
        celery_app.send_task("stress.run", args=[job_id], expires=expires_s, connection=connection,
                             ignore_result=True)
    return send


@celery_app.task(name="stress.reap", soft_time_limit=10, ignore_result=True)
def reap() -> int:
    """Fail the jobs whose worker was lost beyond the stated bound (core.stress_jobs)."""
    client = _client()
    try:
        failed = stress_jobs.reap(client)
    except redis.RedisError as exc:
        log.warning("stress.reap: Redis unavailable: %s", exc)
        return 0
    finally:
        client.close()
    for item in failed:
        log.warning("stress job %s failed: %s", item["id"], item["reason"])
    return len(failed)


@celery_app.task(name="stress.daily", soft_time_limit=60, ignore_result=True)
def daily() -> str | None:
    """The standard scenarios on the live book (settings.stress_daily_at, UTC)."""
    client = _client()
    try:
        job_id, _created = stress_jobs.start_job(
            client, user="scheduler", source="beat",
            scenarios=[{"kind": kind} for kind in stress.STANDARD_KINDS])
        return job_id
    except (redis.RedisError, StressInputError, OSError) as exc:
        log.warning("stress.daily not started: %s", exc)
        return None
    finally:
        client.close()


class StressCapacity(bootsteps.StartStopStep):
    """Reports this worker's pool size while it consumes the stress queue (see module doc)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None
        self.client = None

    def start(self, worker):
        if QUEUE not in worker.app.amqp.queues.consume_from:
            return
        self.client = _client()
        self.tref = worker.timer.call_repeatedly(CAPACITY_EVERY_S, self._report, (worker,), priority=10)
        self._report(worker)

    def _report(self, worker):
        try:
            stress_jobs.report_capacity(self.client, worker.hostname, worker.concurrency)
        except redis.RedisError as exc:   # a report must never take the worker down
            log.warning("stress capacity not reported: %s", exc)

    def stop(self, worker):
        if self.tref:
            self.tref.cancel()
            self.tref = None
            try:
                stress_jobs.withdraw_capacity(self.client, worker.hostname)
            except redis.RedisError:
                pass


celery_app.steps["worker"].add(StressCapacity)
