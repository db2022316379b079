"""kill -9 in the middle of a stress test (issue 6 redelivery, issue 8 fault test), against a
Redis and Celery workers of the test's own (prefork, concurrency 1, short visibility timeout):

- the pool process running a Monte Carlo chunk is killed: its chunk is re-queued at once and
  redone, the job completes with the exact result;
- the whole worker (main process and pool) is killed: a fresh worker restores the unacknowledged
  chunk once the visibility timeout has passed, and the job completes within the stated bound;
- the whole worker is killed and none comes back: the job is failed with the reason once its
  heartbeat is older than the stale bound; a worker arriving later does not revive it.

Each asserts what was kept (chunks stored before the kill are never recomputed: one start
each) and what was redone (the chunk in flight: two starts)."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import psutil
import pytest

from celery_config import celery_app
from core import redis_server, schema, stress, stress_jobs
from core.settings import get_settings
from tests.conftest import _spawn, free_port, stop_process, wait_for
from workers import stress_tasks

pytestmark = pytest.mark.timeout(300)
VISIBILITY_S = 6
STALE_S = 60
N_PATHS, N_CHUNKS = 1_000_000, 10         # 100,000 paths x 500 assets per chunk: ~0.5 s each


@pytest.fixture(scope="module")
def book() -> stress.Portfolio:
    return stress.synthetic_portfolio(500, seed=21)


@pytest.fixture
def stack(test_tmp_dir):
    """Own Redis; `worker()` spawns a stress worker on it; everything stopped at the end."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = redis_server.start(port, test_tmp_dir / f"stress-faults-{port}", appendonly=False)
    client = schema.connect(url)
    procs = []
    env = {"REDIS_URL": url, "CONSOLE_STRESS_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
           "CONSOLE_STRESS_STALE_AFTER": str(STALE_S), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

    def worker():
        name = f"faults{port}n{len(procs)}"
        proc = _spawn([sys.executable, "-m", "celery", "-A", "celery_config", "worker", "--loglevel=INFO",
                       "--concurrency=1", "-Q", "stress", "-n", f"{name}@%h"], name, env)
        procs.append(proc)
        wait_for(lambda: any(h.startswith(name) for h in schema.read_json_hash(client, schema.STRESS_CAPACITY)),
                 60, 0.1, f"worker {name} consuming the stress queue")
        return proc

    with celery_app.connection_for_write(url) as conn:
        yield {"client": client, "worker": worker, "conn": conn}
    for proc in procs:
        stop_process(proc)
    client.close()
    server.terminate()
    server.wait(timeout=10)


def start(stack, book, seed) -> str:
    settings = dataclasses.replace(get_settings(), stress_max_chunk_paths=N_PATHS // N_CHUNKS)
    job_id, _ = stress_jobs.start_job(
        stack["client"], user="chaos", source="api", portfolio=book, options={"seed": seed},
        scenarios=[{"kind": "monte_carlo", "params": {"n_paths": N_PATHS, "n_chunks": N_CHUNKS}}],
        settings=settings, send=stress_tasks.enqueue_on(stack["conn"]))
    return job_id


def units(client, job_id) -> tuple[set[int], dict[int, int]]:
    """(chunks stored, starts per chunk)."""
    stored = {int(k) for k in client.hkeys(schema.stress_job(job_id, "chunks"))}
    starts = {int(k): int(v) for k, v in client.hgetall(schema.stress_job(job_id, "starts")).items()}
    return stored, starts


def kill_mid_chunk(client, job_id, kill) -> tuple[set[int], set[int]]:
    """Once two chunks are stored, kill a chunk that started less than 0.1 s ago (a chunk takes
    several times that): (kept, in flight), read just before the kill (a replacement pool
    process starts the next chunk at once)."""
    def chunk_just_started():
        job = stress_jobs.read_record(client, job_id)
        stage = job["progress"]["stage"]
        return (client.hlen(schema.stress_job(job_id, "chunks")) >= 2 and stage.endswith(" running")
                and time.time() - job["updated"] < 0.1)
    wait_for(chunk_just_started, 90, 0.005, "a chunk starting after two were stored")
    kept, starts = units(client, job_id)
    kill()
    in_flight = set(starts) - kept
    assert in_flight and len(kept) >= 2, (kept, starts)
    return kept, in_flight


def assert_redone_and_exact(client, job_id, job, kept, in_flight, book, seed):
    _stored, starts = units(client, job_id)
    assert job["status"] == "done", job["error"]
    assert all(starts[i] == 1 for i in kept), (starts, kept)              # kept, never recomputed
    assert all(starts[i] == 2 for i in in_flight), (starts, in_flight)    # redone once
    assert set(starts) == set(range(N_CHUNKS))
    expected = stress.mc_single(book, N_PATHS, N_CHUNKS, seed, (0.95, 0.99))
    assert job["mc"]["by_confidence"] == expected["by_confidence"]         # identical numbers


def test_pool_process_killed_mid_chunk_its_chunk_is_redone_and_the_job_completes(stack, book):
    client = stack["client"]
    worker = stack["worker"]()
    main = psutil.Process(worker.pid)
    job_id = start(stack, book, seed=1)
    children = []

    def kill_child():
        [child] = main.children()
        children.append(child.pid)
        os.kill(child.pid, signal.SIGKILL)

    kept, in_flight = kill_mid_chunk(client, job_id, kill_child)
    job = wait_for(lambda: (j := stress_jobs.get_job(client, job_id))["status"] in ("done", "failed") and j,
                   120, 0.2, "the job to end")
    assert_redone_and_exact(client, job_id, job, kept, in_flight, book, seed=1)
    assert worker.poll() is None and [c.pid for c in main.children()] != children   # pool replaced


def test_whole_worker_killed_a_fresh_worker_redelivers_and_completes_within_the_bound(stack, book):
    client = stack["client"]
    worker = stack["worker"]()
    job_id = start(stack, book, seed=2)
    kept, in_flight = kill_mid_chunk(client, job_id, lambda: os.killpg(worker.pid, signal.SIGKILL))
    killed = time.time()
    last_beat = stress_jobs.read_record(client, job_id)["updated"]
    assert stress_jobs.get_job(client, job_id)["status"] == "running"      # nobody left to finish it
    # the chunk is unacknowledged: visible again VISIBILITY_S after its delivery; a worker
    # restores such messages when it starts (and every 100 s while it runs)
    delivered = max(score for _tag, score in client.zrange("unacked_index", 0, -1, withscores=True))
    time.sleep(max(0.0, delivered + VISIBILITY_S + 0.5 - time.time()))
    stack["worker"]()
    job = wait_for(lambda: (j := stress_jobs.get_job(client, job_id))["status"] in ("done", "failed") and j,
                   120, 0.2, "the job to end")
    assert_redone_and_exact(client, job_id, job, kept, in_flight, book, seed=2)
    settings = get_settings()
    assert job["finished"] - last_beat <= STALE_S + settings.stress_reap_interval_s
    assert job["finished"] - killed < VISIBILITY_S + 60


def test_whole_worker_killed_and_none_returns_the_job_fails_with_the_reason(stack, book):
    client = stack["client"]
    worker = stack["worker"]()
    job_id = start(stack, book, seed=3)
    kept, in_flight = kill_mid_chunk(client, job_id, lambda: os.killpg(worker.pid, signal.SIGKILL))
    bound = dataclasses.replace(get_settings(), stress_visibility_timeout_s=VISIBILITY_S,
                                stress_stale_after_s=VISIBILITY_S + 4)
    last_beat = stress_jobs.read_record(client, job_id)["updated"]
    assert stress_jobs.reap(client, bound, now=last_beat + bound.stress_stale_after_s - 1) == []
    job = wait_for(lambda: (j := stress_jobs.get_job(client, job_id, bound))["status"] != "running" and j,
                   bound.stress_stale_after_s + 10, 0.2, "the lost job to be failed")
    assert job["status"] == "failed" and "no progress for" in job["error"]
    assert job["finished"] - last_beat <= bound.stress_stale_after_s + 1
    assert job["chunk_starts_at_end"] == len(kept) + len(in_flight)
    stack["worker"]()                                 # a late worker gets the chunks back ...
    wait_for(lambda: client.llen("stress") == 0 and client.zcard("unacked_index") == 0, 60, 0.2,
             "the redelivered chunk consumed")
    _stored, starts = units(client, job_id)
    assert sum(starts.values()) == len(kept) + len(in_flight)          # ... and starts none of them
    assert stress_jobs.get_job(client, job_id, bound)["status"] == "failed"
