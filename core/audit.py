"""The audit trail: who did what, when and why (control actions, logins, user changes).

A capped Redis stream (schema.AUDIT), persisted with the console's AOF. Writing never raises:
an action must not fail because its audit record could not be stored (the failure is logged).
"""
from __future__ import annotations

import logging
import time

import redis

from core import schema

log = logging.getLogger(__name__)


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def audit_fields(action: str, user: str, source: str, reason: str, details: dict,
                 ts: float | None = None) -> dict:
    """One audit record's stream fields (for callers that append it inside their own MULTI)."""
    ts = time.time() if ts is None else float(ts)
    return {"ts": repr(ts), "action": action, "user": user, "source": source,
            "reason": reason, "details": schema.dumps(details)}


def write_audit(client, action: str, user: str, source: str, reason: str, details: dict,
                ts: float | None = None) -> str | None:
    """Append one audit record; returns its id, or None when Redis refused it (logged)."""
    fields = audit_fields(action, user, source, reason, details, ts)
    try:
        rid = client.xadd(schema.AUDIT, fields, maxlen=schema.AUDIT_MAXLEN, approximate=True)
    except redis.RedisError as exc:
        log.error("audit record not stored (%s): %s", exc, fields)
        return None
    return _text(rid)


def recent_audit(client, limit: int = 50) -> list[dict]:
    """Newest first: [{id, ts, action, user, source, reason, details}]."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer in 1..10000, got {limit!r}")
    out = []
    for entry_id, f in client.xrevrange(schema.AUDIT, count=limit):
        row = {_text(k): _text(v) for k, v in f.items()}
        try:
            row["details"] = schema.loads(row.get("details")) or {}
        except ValueError:
            row["details"] = {}
        row["ts"] = float(row.get("ts") or 0.0)
        row["id"] = _text(entry_id)
        out.append(row)
    return out
