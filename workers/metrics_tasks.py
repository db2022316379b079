"""Celery side of metrics collection: the `metrics.collect` task and process registration.

Beat schedules `metrics.collect` every settings.metrics_interval_s. The collector diffs
against counters stored in Redis, so two runs must never interleave: a short SET NX EX lock
makes an overlapping run skip instead. The signal hooks register the worker's main process,
its pool children and beat in the process registry that the collector measures; each run
of the task re-registers the pool child it runs in, the main process and beat re-register
on a timer.
"""
from __future__ import annotations

import logging

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import beat_init, worker_process_init, worker_ready

from celery_config import celery_app
from core import schema
from core.locks import single_run
from core.metrics import collect_sample
from core.procs import keep_registered, register_process
from core.settings import get_settings

log = logging.getLogger(__name__)

# Longer than the soft time limit, so a running collection keeps its lock; short enough
# that a killed worker blocks collection for seconds only.
LOCK_TTL_MS = 6000
# Registration is re-asserted on a timer so that a Redis restart without persistence (or a
# flushed database) loses a process from the registry for seconds only, not for good.
REREGISTER_EVERY_S = 5.0


def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url)


@celery_app.task(name="metrics.collect", soft_time_limit=5, ignore_result=True)
def collect() -> str:
    """Collect one sample; "collected", "skipped" (another run holds the lock) or "failed"."""
    client = _client()
    try:
        with single_run(client, schema.METRICS_LOCK, LOCK_TTL_MS / 1000) as mine:
            if not mine:
                return "skipped"
            register_process(client, "worker")  # this pool child: cheap, and survives a registry wipe
            collect_sample(client)
            return "collected"
    except redis.RedisError as exc:
        log.warning("metrics.collect: Redis unavailable: %s", exc)
        return "failed"
    except SoftTimeLimitExceeded:
        log.warning("metrics.collect: over its soft time limit, sample dropped")
        return "failed"
    finally:
        client.close()


def _register(role: str) -> None:
    client = _client()
    try:
        register_process(client, role)
    finally:
        client.close()


@worker_process_init.connect
def _register_pool_child(**_kwargs) -> None:
    _register("worker")


@worker_ready.connect
def _register_worker_main(sender=None, **_kwargs) -> None:
    _register("worker")
    timer = getattr(sender, "timer", None)
    if timer is not None:
        timer.call_repeatedly(REREGISTER_EVERY_S, _register, ("worker",), priority=10)


@beat_init.connect
def _register_beat(**_kwargs) -> None:
    # beat's scheduler loop offers no timer of its own; a daemon thread dies with beat
    keep_registered(get_settings().redis_url, "beat", every_s=REREGISTER_EVERY_S)
