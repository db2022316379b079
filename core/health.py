"""Health of the console's parts from Redis and the heartbeats the parts write.

The web app's `GET /healthz` answers from `health_status` (200 when "ok", 503 otherwise).
A heartbeat is a unix time string under schema.heartbeat(part); it is stale after
settings.heartbeat_stale_s. Several workers may run: the freshest one counts.
"""
from __future__ import annotations

import time

import redis

from core import schema

HEARTBEAT_PARTS = ("worker", "beat", "pipeline")


def _heartbeat_part(raw, name: str, now: float, stale_s: float) -> dict:
    if raw is None:
        return {"status": "fail", "detail": f"no {name} heartbeat", "age_s": None}
    try:
        beat_at = float(raw)
    except (TypeError, ValueError):
        return {"status": "fail", "detail": f"{name} heartbeat unreadable: {raw!r}", "age_s": None}
    age = round(max(0.0, now - beat_at), 3)  # a clock a little ahead is not "from the future"
    if age > stale_s:
        return {"status": "fail", "age_s": age,
                "detail": f"{name} heartbeat stale: {age:.1f}s old (limit {stale_s:g}s)"}
    return {"status": "ok", "age_s": age, "detail": f"{name} heartbeat {age:.1f}s old"}


def _freshest_worker(client: redis.Redis) -> tuple[bytes | None, str]:
    """(heartbeat value, worker name) of the most recent worker heartbeat."""
    keys = list(client.scan_iter(match=schema.heartbeat("worker:*"), count=1000))
    best, best_name, best_t = None, "worker", float("-inf")
    for key, raw in zip(keys, client.mget(keys) if keys else []):
        try:
            t = float(raw)
        except (TypeError, ValueError):
            t = float("-inf")
        if best is None or t > best_t:
            name = key.decode() if isinstance(key, bytes) else key
            best, best_name, best_t = raw, "worker " + name.split("hb:worker:", 1)[-1], t
    return best, best_name


def health_status(client: redis.Redis, settings, now: float | None = None) -> dict:
    """{"status": "ok"|"fail", "checked_at", "parts": {redis, worker, beat, pipeline}}.

    Each part is {"status", "detail"} (heartbeat parts add "age_s"). Redis unreachable:
    redis "fail" with the error text, the heartbeat parts "unknown". Never raises.
    """
    now = time.time() if now is None else float(now)
    stale_s = float(settings.heartbeat_stale_s)
    try:
        started = time.perf_counter()
        client.ping()
        redis_part = {"status": "ok", "detail": f"PING {1000 * (time.perf_counter() - started):.1f} ms"}
        worker_raw, worker_name = _freshest_worker(client)
        beat_raw, pipeline_raw = client.mget(schema.heartbeat("beat"), schema.heartbeat("pipeline"))
        parts = {"redis": redis_part,
                 "worker": _heartbeat_part(worker_raw, worker_name, now, stale_s),
                 "beat": _heartbeat_part(beat_raw, "beat", now, stale_s),
                 "pipeline": _heartbeat_part(pipeline_raw, "pipeline", now, stale_s)}
    except (redis.RedisError, OSError) as exc:
        unknown = {"status": "unknown", "detail": "Redis unreachable", "age_s": None}
        parts = {"redis": {"status": "fail", "detail": f"Redis unreachable: {exc}"},
                 **{p: dict(unknown) for p in HEARTBEAT_PARTS}}
    overall = "ok" if all(p["status"] == "ok" for p in parts.values()) else "fail"
    return {"status": overall, "checked_at": now, "parts": parts}
