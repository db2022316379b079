"""The minimal alert channel every part of the console raises into.

Alerts are entries of one capped Redis stream (schema.ALERTS): the stream id is the alert id
and doubles as the cursor the shell's toasts poll with (`alerts_after`). Raising never fails
the caller: an alert is a side channel, so a Redis outage is logged, not propagated.
A later issue adds rules with durations, acknowledgement and resolution.
"""
from __future__ import annotations

import logging
import math
import re
import time

import redis

from core import schema

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "degraded", "critical")
MAX_LIMIT = 1000
_STREAM_ID = re.compile(r"^\d+(-\d+)?$")


def _validate(severity, source, message, dedupe_s) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alert severity {severity!r}; expected one of {SEVERITIES}")
    for name, value in (("source", source), ("message", message)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"alert {name} must be a non-empty string, got {value!r}")
    if not isinstance(dedupe_s, (int, float)) or not math.isfinite(dedupe_s) or dedupe_s <= 0:
        raise ValueError(f"dedupe_s must be a positive number of seconds, got {dedupe_s!r}")


def raise_alert(client: redis.Redis, severity: str, source: str, message: str,
                ts: float | None = None, dedupe_key: str | None = None,
                dedupe_s: float = 60) -> str | None:
    """Append an alert; return its id, or None when suppressed as a repeat or Redis is down.

    With `dedupe_key`, only the first alert per key within `dedupe_s` seconds is kept.
    Bad arguments raise ValueError (a programming error); Redis errors are logged only.
    """
    _validate(severity, source, message, dedupe_s)
    ts = time.time() if ts is None else float(ts)
    try:
        if dedupe_key is not None:
            fresh = client.set(schema.alert_dedupe(dedupe_key), f"{ts:.3f}", nx=True,
                               px=max(1, int(dedupe_s * 1000)))
            if not fresh:
                return None
        fields = {"severity": severity, "source": source, "message": message, "ts": f"{ts:.6f}"}
        pipe = client.pipeline(transaction=False)
        pipe.xadd(schema.ALERTS, fields, maxlen=schema.ALERTS_MAXLEN, approximate=True)
        pipe.hincrby(schema.ALERT_COUNTS, severity, 1)
        alert_id = pipe.execute()[0]
    except redis.RedisError as exc:
        log.error("alert not stored (Redis unavailable: %s): [%s] %s: %s", exc, severity, source, message)
        return None
    return alert_id.decode() if isinstance(alert_id, bytes) else alert_id


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _decode(entry_id, fields: dict) -> dict:
    fields = {_text(k): _text(v) for k, v in fields.items()}
    alert_id = _text(entry_id)
    try:
        ts = float(fields["ts"])
    except (KeyError, ValueError):
        ts = int(alert_id.split("-")[0]) / 1000.0  # the stream id is the append time in ms
    return {"id": alert_id, "ts": ts, "severity": fields.get("severity", "info"),
            "source": fields.get("source", ""), "message": fields.get("message", "")}


def _check_limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer in 1..{MAX_LIMIT}, got {limit!r}")
    return limit


def alert_counts(client: redis.Redis) -> dict[str, int]:
    """Alerts raised so far per severity (every severity present, 0 when none)."""
    raw = client.hgetall(schema.ALERT_COUNTS)
    counts = {_text(k): int(v) for k, v in raw.items()}
    return {severity: counts.get(severity, 0) for severity in SEVERITIES}


def recent_alerts(client: redis.Redis, limit: int = 50) -> list[dict]:
    """The newest `limit` alerts, newest first: [{"id", "ts", "severity", "source", "message"}].

    Raises redis.RedisError when Redis is down (readers show the outage themselves).
    """
    entries = client.xrevrange(schema.ALERTS, count=_check_limit(limit))
    return [_decode(i, f) for i, f in entries]


def alerts_after(client: redis.Redis, last_id: str | None, limit: int = 20) -> list[dict]:
    """Alerts newer than the cursor `last_id`, oldest first, at most `limit`.

    With last_id None: the newest `limit` alerts, still oldest first. Pass the id of the
    last alert returned as the next cursor; `last_alert_id` seeds a cursor that skips history.
    """
    limit = _check_limit(limit)
    if last_id is None:
        return list(reversed(recent_alerts(client, limit)))
    if not isinstance(last_id, str) or not _STREAM_ID.match(last_id):
        raise ValueError(f"last_id must be an alert id like '1700000000000-0', got {last_id!r}")
    entries = client.xrange(schema.ALERTS, min="(" + last_id, count=limit)
    return [_decode(i, f) for i, f in entries]


def last_alert_id(client: redis.Redis) -> str:
    """Id of the newest alert, or "0-0" when there is none (a cursor before everything)."""
    newest = client.xrevrange(schema.ALERTS, count=1)
    return _text(newest[0][0]) if newest else "0-0"
