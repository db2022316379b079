"""Registry of the console's own processes, so the metrics collector can measure them.

Each process registers itself (gunicorn / Celery hooks, the pipeline runner) under
"<hostname>:<pid>". A pid alone is not an identity: the kernel reuses pids, so every entry
also keeps the process's psutil create_time and a reader drops entries whose pid is gone
or now belongs to another process.
"""
from __future__ import annotations

import logging
import os
import socket

import psutil
import redis

from core import schema

log = logging.getLogger(__name__)

ROLES = ("web", "worker", "beat", "pipeline", "redis")
# create_time is derived from clock ticks (10 ms on Linux); a float round trip through JSON
# must not turn the same process into a "reused pid".
_SAME_START_TOLERANCE_S = 0.05


def register_process(client: redis.Redis, role: str, pid: int | None = None) -> None:
    """Record `pid` (default: this process) as a console process of `role`.

    Raises ValueError for an unknown role (a programming error); never raises because
    Redis is down or the process has already exited: it logs and returns.
    """
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}; expected one of {ROLES}")
    pid = os.getpid() if pid is None else int(pid)
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error as exc:
        log.warning("process %s (%s) not registered: %s", pid, role, exc)
        return
    host = socket.gethostname()
    entry = {"role": role, "pid": pid, "host": host, "started": started}
    try:
        client.hset(schema.PROCS, f"{host}:{pid}", schema.dumps(entry))
    except redis.RedisError as exc:
        log.warning("process %s (%s) not registered, Redis unavailable: %s", pid, role, exc)


def _is_alive(entry: dict) -> bool:
    try:
        started = psutil.Process(int(entry["pid"])).create_time()
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
    recorded = entry.get("started")
    return isinstance(recorded, (int, float)) and abs(started - recorded) <= _SAME_START_TOLERANCE_S


def console_processes(client: redis.Redis, host: str | None = None) -> list[dict]:
    """Live registered processes of `host` (default: this machine), sorted by role then pid.

    Each item is {"role", "pid", "host", "started"}. Entries of this host whose pid has
    exited or been reused are deleted from the registry. Another host's entries cannot be
    checked from here: they are returned as stored and kept. Malformed entries are deleted.
    Raises redis.RedisError when Redis is down.
    """
    local = socket.gethostname()
    host = local if host is None else host
    prefix = f"{host}:"
    live, dead = [], []
    for raw_field, raw_entry in client.hgetall(schema.PROCS).items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        if not field.startswith(prefix):
            continue
        try:
            entry = schema.loads(raw_entry)
        except ValueError:
            entry = None
        well_formed = isinstance(entry, dict) and {"role", "pid", "started"} <= entry.keys()
        if well_formed and (host != local or _is_alive(entry)):
            live.append(entry)
        else:
            dead.append(field)
    if dead:
        client.hdel(schema.PROCS, *dead)
        log.info("pruned %d dead process entries: %s", len(dead), ", ".join(dead))
    return sorted(live, key=lambda e: (e["role"], e["pid"]))


def keep_registered(redis_url: str, role: str, pid: int | None = None,
                    every_s: float = 5.0, blocking: bool = False):
    """Register now and again every `every_s` seconds, so a flushed or restarted Redis
    relearns the process. Runs in a daemon thread (dies with its process) unless blocking,
    in which case it loops until `pid` is gone (used by a helper watching another process)."""
    import threading
    import time

    def loop() -> None:
        client = schema.connect(redis_url)
        while pid is None or psutil.pid_exists(pid):
            try:
                register_process(client, role, pid)
            except Exception:  # noqa: BLE001  (this thread must outlive any one failure)
                log.exception("process registry: %s (%s) not refreshed", pid or os.getpid(), role)
            time.sleep(every_s)

    if blocking:
        loop()
        return None
    thread = threading.Thread(target=loop, name=f"console-registry-{role}", daemon=True)
    thread.start()
    return thread
