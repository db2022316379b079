"""Stress fan-out figures (area `stress`, merged by bench/stress.py): the Monte Carlo through
the real Celery tasks, on a private Redis with stress-only workers started here.

Every worker is `celery worker -Q stress --concurrency=1` (prefork, one pool process) with BLAS,
OpenMP and numba pinned to one thread each (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=
NUMBA_NUM_THREADS=1), so one worker is one core's worth of work. The job is what the page's
"Monte Carlo" button sends: core.stress_jobs.start_job with a 500-asset synthetic book (252 days
of returns) and 100,000 paths; its chunking is the same in both phases (n_chunks 8: the
scenario's floor; 2 per process for 2 processes is 4, 25,000 paths per chunk is 4).

- stress.mc_scaling_2_workers = median time with 1 worker / median time with 2 workers (goal
  >= 1.6), each time from start_job (snapshot, record, enqueue) to the job's `finished` stamp
  (merge and result stored), after one warm-up job per phase (process start-up, imports and
  the per-process risk model fit are not what scaling is about); stress.mc_1_worker_ms and
  stress.mc_2_workers_ms are the medians.
- stress.first_progress_ms: from the enqueue (start_job called) to the first progress update
  a worker wrote, i.e. the first unit stored (`progress.done >= 1`), for "Run all" (the four
  standard scenarios + the Monte Carlo) with both workers up; median (goal <= 1,000 ms).
  stress.first_update_ms: to the worker's first write of any kind (queued -> running).
- stress.bench_loadavg_1m: the 1-minute load average when the area started: on a shared
  2-core machine the scaling figure needs both cores idle.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from bench.pipeline import Console, _wait
from celery_config import celery_app
from core import redis_server, schema, stress, stress_jobs
from core.settings import get_settings
from workers.stress_tasks import enqueue_on

ASSETS, N_PATHS, N_CHUNKS = 500, 100_000, 8
GOAL_SCALING, GOAL_FIRST_MS = 1.6, 1000.0
PINNED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1"}
MC = {"kind": "monte_carlo", "params": {"n_paths": N_PATHS, "n_chunks": N_CHUNKS}}


class StressWorkers(Console):
    """A private Redis and stress-only workers; Console stops them (and removes its files)."""

    def __enter__(self) -> "StressWorkers":
        self.redis = redis_server.start(self.port, self.tmp / "redis", appendonly=False)
        self.client = schema.connect(self.url)
        self.env.update(PINNED)
        self.connection = celery_app.connection_for_write(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.connection.release()
        super().__exit__(*exc)

    def add_worker(self) -> None:
        name = f"stress{len(self.procs)}-{self.port}"
        self._spawn(name, [sys.executable, "-m", "celery", "-A", "celery_config", "worker",
                           "--loglevel=WARNING", "--concurrency=1", "-Q", "stress", "-n", f"{name}@%h"])
        tag = name.encode()
        _wait(lambda: any(h.startswith(tag) for h in self.client.hkeys(schema.STRESS_CAPACITY)), 60, f"worker {name}")

    def submit(self, scenarios: list[dict], book: stress.Portfolio, seed: int) -> tuple[str, float]:
        """(job id, enqueue time): an unchanged request gets a new seed, so dedupe never merges."""
        settings = dataclasses.replace(get_settings(), stress_history=1000)
        t0 = time.time()
        job_id, _ = stress_jobs.start_job(self.client, user="bench", source="api", scenarios=scenarios,
                                          portfolio=book, options={"seed": seed}, settings=settings,
                                          send=enqueue_on(self.connection))
        return job_id, t0

    def finished(self, job_id: str, timeout_s: float = 300.0) -> dict:
        job = _wait(lambda: (j := stress_jobs.read_record(self.client, job_id))["status"]
                    in stress_jobs.TERMINAL_STATUSES and j, timeout_s, f"stress job {job_id}")
        if job["status"] != stress_jobs.DONE:
            raise RuntimeError(f"bench stress job {job_id} {job['status']}: {job['error']}")
        return job


def _mc_seconds(stack: StressWorkers, book: stress.Portfolio, seeds: range) -> list[float]:
    out = []
    for seed in seeds:
        job_id, t0 = stack.submit([MC], book, seed)
        job = stack.finished(job_id)
        assert len(job["plan"]["rows"]) == N_CHUNKS, job["plan"]
        out.append(job["finished"] - t0)
    return out


def _first_progress(stack: StressWorkers, book: stress.Portfolio, seeds: range) -> tuple[list, list]:
    """(ms to the first unit stored, ms to the first worker write) per "Run all" job."""
    first_unit, first_write = [], []
    scenarios = [{"kind": k} for k in stress.STANDARD_KINDS] + [MC]
    for seed in seeds:
        job_id, t0 = stack.submit(scenarios, book, seed)
        key, wrote = schema.stress_job(job_id), None
        while True:
            status, done = stack.client.hmget(key, "status", "done")
            now = time.time()
            if wrote is None and status != b"queued":
                wrote = now
            if int(done or 0) >= 1:
                break
            if now - t0 > 60:
                raise RuntimeError(f"no progress on stress job {job_id} after 60 s")
        first_unit.append(1000 * (now - t0))
        first_write.append(1000 * (wrote - t0))
        stack.finished(job_id)
    return first_unit, first_write


def run(quick: bool) -> dict[str, float]:
    repeats = 3 if quick else 7
    load = os.getloadavg()[0]
    book = stress.synthetic_portfolio(ASSETS, seed=0)
    with StressWorkers() as stack:
        stack.add_worker()
        _mc_seconds(stack, book, range(1))                                   # warm-up
        one = _mc_seconds(stack, book, range(100, 100 + repeats))
        stack.add_worker()
        _mc_seconds(stack, book, range(1, 3))                                # warms the second
        two = _mc_seconds(stack, book, range(200, 200 + repeats))
        first_unit, first_write = _first_progress(stack, book, range(300, 300 + repeats))
    one_ms, two_ms = 1000 * float(np.median(one)), 1000 * float(np.median(two))
    first_ms, write_ms = float(np.median(first_unit)), float(np.median(first_write))
    scaling = one_ms / two_ms
    print(f"   Monte Carlo {N_PATHS:,} x {ASSETS} in {N_CHUNKS} chunks through Celery: 1 worker "
          f"{one_ms:.0f} ms, 2 workers {two_ms:.0f} ms: scaling {scaling:.2f} (goal >= {GOAL_SCALING}); "
          f"load average at start {load:.2f} on {os.cpu_count()} cores, at end {os.getloadavg()[0]:.2f}")
    print(f"   first progress (first unit stored) {first_ms:.0f} ms (goal <= {GOAL_FIRST_MS:.0f}), "
          f"first worker write {write_ms:.0f} ms")
    return {"stress.mc_scaling_2_workers": scaling, "stress.mc_1_worker_ms": one_ms,
            "stress.mc_2_workers_ms": two_ms, "stress.first_progress_ms": first_ms,
            "stress.first_update_ms": write_ms, "stress.bench_loadavg_1m": load}


if __name__ == "__main__":
    run(quick=True)
