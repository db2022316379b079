"""Heartbeats that /healthz reads: the worker (a bootstep timer) and beat (its scheduler tick).

Beat is dynamic: its scheduler follows the runtime settings (core.runtime_config) and changes
the periods of the entries in SCHEDULE_KEYS in place when they change, so the Settings page's
collection intervals and schedules need no beat restart. Each entry keeps its expiry policy
(expires / period, as celery_config sets it)."""
from __future__ import annotations

import logging
import socket
import time
from datetime import timedelta

import redis
from celery import bootsteps
from celery.beat import PersistentScheduler
from celery.schedules import schedule as every

from core import runtime_config, schema
from core.settings import get_settings

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 2.0
# beat entry -> the runtime setting holding its period in seconds
SCHEDULE_KEYS = {"metrics.collect": "metrics_interval_s", "safety.evaluate": "safety_interval_s",
                 "risk.compute": "risk_interval_s", "memory.optimize": "memory_optimize_interval_s",
                 "cache.optimize": "cache_optimize_interval_s", "database.analyze": "database_analyze_interval_s",
                 "kernels.optimize": "kernels_optimize_interval_s"}


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


def period_s(entry) -> float | None:
    run_every = getattr(entry.schedule, "run_every", None)
    return run_every.total_seconds() if run_every is not None else None


def apply_intervals(entries: dict, values, app=None) -> dict[str, tuple[float, float]]:
    """Set the period of every SCHEDULE_KEYS entry to its runtime value, in place; the expiry
    scales with it. Returns {entry: (old s, new s)} for what changed."""
    changed = {}
    for name, key in SCHEDULE_KEYS.items():
        entry = entries.get(name)
        old = period_s(entry) if entry is not None else None
        new = float(values[key])
        if old is None or old == new:
            continue
        ratio = float(entry.options.get("expires") or old) / old
        entry.schedule = every(timedelta(seconds=new), app=app)
        entry.options = {**entry.options, "expires": max(1.0, ratio * new)}
        changed[name] = (old, new)
    return changed


class HeartbeatScheduler(PersistentScheduler):
    """The default scheduler plus a beat heartbeat on every tick, following the runtime
    settings' intervals (dynamic beat)."""

    _last = 0.0
    _config_version: int | None = None

    def tick(self, *args, **kwargs):
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_EVERY_S:
            self._last = now
            _beat("beat")
        self._follow_config()
        return min(super().tick(*args, **kwargs), HEARTBEAT_EVERY_S)

    def _follow_config(self) -> None:
        live = runtime_config.live("beat")
        if live.version == self._config_version:
            return
        self._config_version = live.version
        changed = apply_intervals(self.schedule, live.values, self.app)
        if changed:
            self._heap = None          # the next tick rebuilds the heap with the new periods
            log.warning("beat: schedule from settings v%d: %s", live.version,
                        ", ".join(f"{n} {a:g} s -> {b:g} s" for n, (a, b) in changed.items()))
        live.detail = {"schedule": {n: period_s(self.schedule[n]) for n in SCHEDULE_KEYS if n in self.schedule}}
        live.report()


def install(app) -> None:
    app.steps["worker"].add(WorkerHeartbeat)
