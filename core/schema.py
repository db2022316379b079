"""The Redis schema: every key name and its (de)serialization, in one module.

A reader finds the whole data model here. Everything lives under the `console:` prefix.
Retention is bounded for every key that grows: streams are capped with MAXLEN/MINID,
sorted-set series are trimmed by score (unix seconds) on every write.

Key                                   type     holds
console:tele:raw                      stream   per-process flushes: {proc, sec, h:<stage>: histogram blob}
console:tele:rollup:last              string   last second rolled up (int)
console:tele:s1:<stage>               zset     per-second summary JSON, score = second, 1 h
console:tele:h1:<stage>               zset     per-second histogram blob (8-byte second + blob), 1 h
console:tele:s10:<stage>              zset     per-10-second summary JSON (long chart windows), 1 h
console:tele:m1:<stage>               zset     per-minute histogram blob (8-byte minute + blob), 24 h
console:tele:stages                   hash     stage -> JSON {threshold_ms}
console:metrics:s1 / :m1              zset     system metric samples JSON, 1 h at 1 s / 24 h at 1 min
console:metrics:prev                  string   previous raw counters (for rates)
console:alerts                        stream   alerts {severity, source, message, ts}, capped
console:alerts:dedupe:<key>           string   repeat suppression marker, expires (SET NX EX)
console:hb:<part>                     string   heartbeat unix time (pipeline, beat, worker:<host>)
console:procs                         hash     "<host>:<pid>" -> JSON {role, pid, host, started}
console:broker:account                hash     cash, realized_pnl, equity, ... (paper broker)
console:broker:positions              hash     symbol -> JSON position
console:broker:orders / :fills        stream   recent orders / fills, capped
console:pipeline:status               string   JSON status of the reference pipeline
console:pipeline:daily                zset     daily P&L JSON, score = sim day index
console:bus:stats                     hash     handler -> JSON live statistics
console:trading:state                 string   ACTIVE / HALTED (order gate; absent = ACTIVE)
console:pipeline:control              string   JSON {"tick_rate": float} read live by the runner
"""
from __future__ import annotations

import json
import math
from typing import Any

import redis

NS = "console:"

# retention
SECOND_SERIES_RETENTION_S = 3600
MINUTE_SERIES_RETENTION_S = 24 * 3600
RAW_STREAM_RETENTION_S = 120
ALERTS_MAXLEN = 5000
ORDERS_MAXLEN = 2000


def connect(url: str, **kwargs) -> redis.Redis:
    """A client with short timeouts: a dead server must fail fast, never hang a caller."""
    opts = dict(socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=15)
    opts.update(kwargs)
    return redis.Redis.from_url(url, **opts)


# ---- telemetry -----------------------------------------------------------------------
TELE_RAW = NS + "tele:raw"
TELE_ROLLUP_LAST = NS + "tele:rollup:last"
TELE_ROLLUP_LOCK = NS + "lock:tele:rollup"
TELE_STAGES = NS + "tele:stages"


def tele_sec_summary(stage: str) -> str:
    return f"{NS}tele:s1:{stage}"


def tele_sec_hist(stage: str) -> str:
    return f"{NS}tele:h1:{stage}"


def tele_10s_summary(stage: str) -> str:
    return f"{NS}tele:s10:{stage}"


def tele_min_hist(stage: str) -> str:
    return f"{NS}tele:m1:{stage}"


# ---- system metrics ------------------------------------------------------------------
METRICS_SEC = NS + "metrics:s1"
METRICS_MIN = NS + "metrics:m1"
METRICS_PREV = NS + "metrics:prev"
METRICS_LOCK = NS + "lock:metrics"

# ---- alerts, health, processes -------------------------------------------------------
ALERTS = NS + "alerts"
PROCS = NS + "procs"


def alert_dedupe(key: str) -> str:
    """SET NX EX marker that suppresses repeats of one alert within its dedupe window."""
    return f"{NS}alerts:dedupe:{key}"


def heartbeat(part: str) -> str:
    return f"{NS}hb:{part}"


# ---- reference pipeline --------------------------------------------------------------
BROKER_ACCOUNT = NS + "broker:account"
BROKER_POSITIONS = NS + "broker:positions"
BROKER_ORDERS = NS + "broker:orders"
BROKER_FILLS = NS + "broker:fills"
PIPELINE_STATUS = NS + "pipeline:status"
PIPELINE_DAILY = NS + "pipeline:daily"
BUS_STATS = NS + "bus:stats"
# "ACTIVE" / "HALTED": the order path's gate (risk and emergency stop write it; absent = ACTIVE)
TRADING_STATE = NS + "trading:state"
# trading state history, limit utilization and the audit trail (issue 5; shapes fixed here)
TRADING_HISTORY = NS + "trading:history"   # stream {ts, from_state, to_state, reason, source, user}
LIMITS_STATUS = NS + "limits:status"       # JSON {"ts", "limits": [{name, kind, symbol, limit, value, utilization, breached}]}
AUDIT = NS + "audit"                       # stream, capped: who, when, what, details JSON
# JSON {"tick_rate": float}: lets a benchmark or the Settings page change the rate live
PIPELINE_CONTROL = NS + "pipeline:control"


# ---- serialization -------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: map them to None so every reader can parse what we write."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), separators=(",", ":"), default=float)


def loads(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    return json.loads(raw)


def add_to_series(pipe, key: str, score: float, member: str | bytes, retention_s: float) -> None:
    """Append one point to a time-scored zset and drop what is older than the retention."""
    pipe.zadd(key, {member: score})
    pipe.zremrangebyscore(key, "-inf", f"({score - retention_s}")


def read_series(client: redis.Redis, key: str, since: float) -> list[Any]:
    """JSON members of a time-scored zset with score >= since, oldest first."""
    return [loads(m) for m in client.zrangebyscore(key, since, "+inf")]


def read_json_hash(client: redis.Redis, key: str) -> dict[str, Any]:
    """A hash whose values are JSON documents, decoded; undecodable fields are skipped."""
    out: dict[str, Any] = {}
    for field_name, raw in client.hgetall(key).items():
        try:
            out[field_name.decode() if isinstance(field_name, bytes) else field_name] = loads(raw)
        except ValueError:
            continue
    return out
