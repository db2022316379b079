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
console:tele:cum:<stage>              string   histogram of every finalized sample since start (Prometheus)
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
console:trading:state                 string   ACTIVE / REDUCING / HALTED (order gate; absent = ACTIVE)
console:trading:meta                  string   JSON of the last transition {state, source, reason, user, ts}
console:trading:events                pubsub   JSON transition, published with every state change
console:trading:history               stream   transitions {ts, from_state, to_state, reason, source, user}, capped
console:safety:rules                  hash     SafetyController memory: peak_equity, latency_streak, normal_since, ...
console:safety:status                 string   JSON last rule evaluation {ts, state, rules: [...]}
console:limits:status                 string   JSON limit utilization {ts, limits: [...]}
console:audit                         stream   audit trail {ts, action, user, source, reason, details JSON}, capped
console:lock:safety                   string   SET NX EX lock: one rule evaluation at a time
console:risk:latest                   string   JSON RiskManager result (VaR/CVaR, drawdown, P&L, positions, model risk)
console:risk:history                  zset     risk summary JSON (VaR 95/99, drawdown, confidence), score = ts, 24 h
console:lock:risk                     string   SET NX EX lock: one risk.compute at a time
console:model:outcomes                stream   per-second batches {ts, n, pairs: float32 (prediction, realized) bytes}, capped
console:pipeline:control              string   JSON {"tick_rate": float} read live by the runner
console:kernels:selection             string   JSON {ts, kernels: {kernel: backend}, batch_size, max_workers, numba_threads, session}
console:kernels:bench                 string   JSON live benchmark table {ts, shape, rows: [{kernel, backend, ms, speedup, max_error, ok, selected}]}
console:kernels:history               stream   selection changes {ts, what, before, after, before_ms, after_ms}, capped;
                                               also the pipeline's model_inference backend switches (what, reason)
console:model:metrics                 string   JSON signal model {ts, path, hit_rate, ci_low, ci_high, n, session table}
console:lock:kernels                  string   SET NX EX lock: one kernels.optimize at a time
console:cache:v:<key>                 string   CacheManager L2 entry (core.cache wire format), PX = TTL
console:cache:inval                   pubsub   L1 invalidations: JSON {"k": key, "o": origin id, "t": ts}
console:cache:policy                  hash     prefix -> JSON {ttl_s, skip_l2, ...} (cache.optimize)
console:cache:l1_size                 string   L1 entry bound chosen by cache.optimize (int)
console:cache:stats:<proc>            string   JSON per-tier statistics of one process, EX 120
console:cache:series                  zset     multi-tier hit rate / latency samples JSON, 1 h
console:memory:s1                     zset     per-process RSS/USS + system memory JSON, 1 h
console:memory:mmap                   hash     name -> JSON {path, shape, dtype, bytes, t, meta, live, measured}: arrays
                                               memory-mapped under var/mmap and what mapping saves (memory.optimize)
console:opt:history:<area>            stream   optimization runs (memory / cache / database), capped
console:opt:last:<area>               string   JSON result of the latest run of <area>
console:db:findings                   string   JSON latest analyze_query findings per watched query
console:lock:opt:<area>               string   SET NX EX lock of the <area> optimization task
console:lock:cache:<key>              string   SET NX PX lock: the one process loading <key> from the database
console:config:values                hash     runtime setting key -> JSON value: the overrides of the Settings page (core.runtime_config)
console:config:version               string   INCR on every settings change (the listeners' version check)
console:config:events                pubsub   JSON {"version"}: published with every settings change
console:config:history               stream   settings changes {version, ts, user, source, reason, changes JSON}, capped
console:config:applied               hash     "<role>:<host>:<pid>" -> JSON {role, version, ts, detail}: what each process runs with
console:stress:jobs                   zset     stress job ids, score = created (history, capped by CONSOLE_STRESS_HISTORY)
console:stress:active                 set      ids of queued / running stress jobs (what stress.reap inspects)
console:stress:job:<id>               hash     job record: status, user, source, created, started, finished, updated, done, total, stage, JSON fields
console:stress:job:<id>:portfolio     string   JSON Portfolio snapshot every task of the job reads; deleted when the job ends
console:stress:job:<id>:results       hash     scenario index -> JSON scenario result (idempotent overwrite)
console:stress:job:<id>:chunks        hash     Monte Carlo chunk index -> JSON chunk tail; deleted after the merge
console:stress:job:<id>:starts        hash     Monte Carlo chunk index -> times a worker started it (redelivery evidence)
console:stress:job:<id>:shown:<user> string   SET NX EX: the page has switched this user's view to the ended job once
console:stress:dedupe:<digest>        string   SET NX EX: the job id of an identical submission seconds ago
console:stress:capacity               hash     worker hostname -> JSON {processes, ts}: live consumers of the stress queue
console:stress:custom                 hash     saved custom scenario name -> JSON {name, spec, user, ts} (core.stress, at most 200)
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


def tele_cumulative_hist(stage: str) -> str:
    return f"{NS}tele:cum:{stage}"


def tele_min_hist(stage: str) -> str:
    return f"{NS}tele:m1:{stage}"


# ---- system metrics ------------------------------------------------------------------
METRICS_SEC = NS + "metrics:s1"
METRICS_MIN = NS + "metrics:m1"
METRICS_PREV = NS + "metrics:prev"
METRICS_LOCK = NS + "lock:metrics"

# ---- alerts, health, processes -------------------------------------------------------
ALERTS = NS + "alerts"
ALERT_COUNTS = NS + "alerts:counts"   # hash severity -> alerts raised (a Prometheus counter)
ALERTING_STATE = NS + "alerting:state"     # hash rule -> JSON {state, since, value, fired_at, acked_by}
ALERTING_HISTORY = NS + "alerting:history" # stream {rule, event, ts, severity, user, value}, capped
ALERTING_LOCK = NS + "lock:alerting"
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
TRADING_META = NS + "trading:meta"          # JSON of the last transition (who halted, why, source)
TRADING_EVENTS = NS + "trading:events"      # pub/sub channel: a JSON transition per state change
SAFETY_RULES = NS + "safety:rules"          # hash: the SafetyController's memory between evaluations
SAFETY_STATUS = NS + "safety:status"        # JSON {ts, state, rules: [{name, value, threshold, breached, action}]}
SAFETY_LOCK = NS + "lock:safety"
# risk analytics (issue 5 part A)
RISK_LATEST = NS + "risk:latest"            # JSON: the RiskManager's last result
RISK_HISTORY = NS + "risk:history"          # zset of summary JSON, score = unix seconds
RISK_LOCK = NS + "lock:risk"
RISK_HISTORY_RETENTION_S = 24 * 3600
MODEL_OUTCOMES = NS + "model:outcomes"      # stream {ts, n, pairs: little-endian float32 pred, real, ...}
MODEL_OUTCOMES_MAXLEN = 120                 # one batch a second: two minutes
TRADING_HISTORY_MAXLEN = 10_000
AUDIT_MAXLEN = 10_000
# JSON {"tick_rate": float}: lets a benchmark or the Settings page change the rate live
PIPELINE_CONTROL = NS + "pipeline:control"

# ---- memory and cache management (issue 4) -------------------------------------------
CACHE_VALUE_PREFIX = NS + "cache:v:"
CACHE_INVALIDATE = NS + "cache:inval"
CACHE_POLICY = NS + "cache:policy"
CACHE_L1_SIZE = NS + "cache:l1_size"
CACHE_STATS_SERIES = NS + "cache:series"
MEMORY_SERIES = NS + "memory:s1"
MEMORY_MMAP = NS + "memory:mmap"
DB_FINDINGS = NS + "db:findings"
OPT_AREAS = ("memory", "cache", "database")
OPT_HISTORY_MAXLEN = 500


def cache_value(key: str) -> str:
    return CACHE_VALUE_PREFIX + key


def cache_stats(proc: str) -> str:
    return f"{NS}cache:stats:{proc}"


def opt_history(area: str) -> str:
    return f"{NS}opt:history:{area}"


def opt_last(area: str) -> str:
    return f"{NS}opt:last:{area}"


def opt_lock(area: str) -> str:
    return f"{NS}lock:opt:{area}"


# ---- runtime settings (issue 7: the Settings page; core.runtime_config) ---------------
CONFIG_VALUES = NS + "config:values"       # hash key -> JSON value (overrides of the defaults)
CONFIG_VERSION = NS + "config:version"     # int, INCR per change
CONFIG_EVENTS = NS + "config:events"       # pub/sub: JSON {"version": int}
CONFIG_HISTORY = NS + "config:history"     # stream of changes, capped at CONFIG_HISTORY_MAXLEN
CONFIG_HISTORY_MAXLEN = 2000
CONFIG_APPLIED = NS + "config:applied"     # hash process -> JSON {role, version, ts, detail}


# ---- users, sessions, audit (issue 8) --------------------------------------------------
USERS = NS + "users"                       # hash username -> JSON {role, created, kdf params, salt, hash}
API_TOKENS = NS + "api_tokens"             # hash sha256(token) -> username
SECRET_KEY = NS + "secret_key"             # the web's session signing key when not configured


def login_failures(who: str) -> str:
    """Failed-login counter of one (user, address), expiring with the rate-limit window."""
    return f"{NS}login:fail:{who}"


# ---- compute kernels and the signal model (issue 3) ----------------------------------
KERNELS_SELECTION = NS + "kernels:selection"   # JSON: the backend per kernel the pipeline uses
KERNELS_BENCH = NS + "kernels:bench"           # JSON: the live benchmark table (Latency page)
KERNELS_HISTORY = NS + "kernels:history"       # stream: every selection change, before/after
KERNELS_HISTORY_MAXLEN = 1000
KERNELS_LOCK = NS + "lock:kernels"
MODEL_METRICS = NS + "model:metrics"           # JSON: out-of-sample hit rate with its CI


# ---- stress-test jobs (issue 6) ------------------------------------------------------
STRESS_JOBS = NS + "stress:jobs"               # zset id -> created: the bounded history
STRESS_ACTIVE = NS + "stress:active"           # set of queued / running job ids
STRESS_CAPACITY = NS + "stress:capacity"       # hash hostname -> JSON {processes, ts}
STRESS_CUSTOM = NS + "stress:custom"           # hash name -> JSON {name, spec, user, ts}


def stress_job(job_id: str, part: str = "") -> str:
    """The job's record hash, or one of its parts: portfolio, results, chunks, starts, shown:<user>."""
    return f"{NS}stress:job:{job_id}" + (f":{part}" if part else "")


def stress_dedupe(digest: str) -> str:
    return f"{NS}stress:dedupe:{digest}"


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
