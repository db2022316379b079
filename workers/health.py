"""Heartbeats that /healthz reads: the worker (a bootstep timer) and beat (its scheduler tick)."""
from __future__ import annotations

import logging
import socket
import time

import redis
from celery import bootsteps
from celery.beat import PersistentScheduler

from core import schema
from core.settings import get_settings

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 2.0


def _beat(part: str) -> None:
    settings = get_settings()
    try:
        client = schema.connect(settings.redis_url)
        client.set(schema.heartbeat(part), f"{time.time():.3f}", ex=int(settings.heartbeat_stale_s * 6))
    except redis.RedisError as exc:  # a heartbeat must never take its process down
        log.warning("heartbeat %s not written: %s", part, exc)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes console:hb:worker:<hostname> from the worker's main process timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker):
        part = f"worker:{worker.hostname or socket.gethostname()}"
        _beat(part)
        self.tref = worker.timer.call_repeatedly(HEARTBEAT_EVERY_S, _beat, (part,), priority=10)

    def stop(self, worker):
        if self.tref:
            self.tref.cancel()
            self.tref = None


class HeartbeatScheduler(PersistentScheduler):
    """The default scheduler plus a beat heartbeat on every tick."""

    _last = 0.0

    def tick(self, *args, **kwargs):
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_EVERY_S:
            self._last = now
            _beat("beat")
        return min(super().tick(*args, **kwargs), HEARTBEAT_EVERY_S)


def install(app) -> None:
    app.steps["worker"].add(WorkerHeartbeat)
