"""Stress-test jobs: records, progress, cancellation, dedupe, staleness and history in Redis.

A job is one submission of scenarios (core.stress specs) against one portfolio snapshot. The
web page, the HTTP API and the daily beat run all call `start_job`; Celery tasks
(workers/stress_tasks.py) do the work and report through the functions below, which are the
only writers of the job keys (core/schema.py, "stress-test jobs").

Lifecycle: queued -> running -> done | failed | cancelled (queued may go straight to cancelled
or failed). Every transition is a compare-and-set in one Lua script, so a late or duplicated
task can never move a finished job, and every write a task makes is conditional on the job
still running: a cancelled job's in-flight chunk finishes its computation but its result is
dropped, and no chunk starts after the cancel (`begin_chunk` refuses).

Progress: `total` = plain scenarios + Monte Carlo chunks, fixed at submit; `done` = results
stored + chunks stored, recounted from the hashes on every write (a redelivered unit
overwrites its own field and never counts twice). `updated` is the job's heartbeat: every
progress write refreshes it.

Redelivery and the stated deadline. Stress tasks are acks_late with task_reject_on_worker_lost
and idempotent units (scenario i -> results[i], chunk i -> chunks[i]). With the defaults
(CONSOLE_STRESS_VISIBILITY_TIMEOUT V = 300 s, CONSOLE_STRESS_STALE_AFTER S = V + 120 s,
CONSOLE_STRESS_REAP_INTERVAL R = 30 s):
- a pool process killed mid-task: its task is re-queued at once and redone by another process;
- the whole worker killed: its unacknowledged tasks become visible again V seconds after
  delivery; a running worker restores them at start-up and then every 100 s (kombu's scan);
- either way a job ends, done after redelivery or failed with the reason "no progress for
  S s", at most S + R seconds after its last heartbeat: 450 s with the defaults. `get_job`
  applies the same bound on read, so a job never shows "running" past S even without beat.
A job queued for CONSOLE_STRESS_QUEUE_TIMEOUT (1 h) without a stress worker is failed too.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from typing import Callable, Iterable

import numpy as np

from core import history, schema, stress
from core.audit import write_audit
from core.settings import Settings, get_settings
from core.stress import StressInputError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE_STATUSES = (QUEUED, RUNNING)
TERMINAL_STATUSES = (DONE, FAILED, CANCELLED)
SOURCES = ("web", "api", "beat")
DEDUPE_S = 5                  # an identical submission within this window is the same job
MAX_SCENARIOS = 20
MAX_UNIT_STARTS = 3           # a unit whose worker died this many times fails the job
CAPACITY_FRESH_S = 10.0       # a stress worker's capacity report older than this is ignored
CONFIDENCE_RANGE = (0.5, 0.999)
SNAPSHOT_CACHE = 4           # parsed snapshots kept per process (the jobs it works on)
_ID = re.compile(r"^[0-9a-f]{16}$")
_SNAPSHOTS: "OrderedDict[str, stress.Portfolio]" = OrderedDict()   # job id -> parsed snapshot
_JSON_FIELDS = ("scenarios", "options", "plan", "portfolio_info", "summary", "mc_result")
_FLOAT_FIELDS = ("created", "started", "finished", "updated", "duration_s")
_PARTS = ("portfolio", "results", "chunks", "starts")

# Compare-and-set of the status. KEYS: job, active set, portfolio, chunks, starts.
# ARGV: job id, allowed statuses (comma list), new status, then field/value pairs.
_TRANSITION = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or not string.find(',' .. ARGV[2] .. ',', ',' .. s .. ',', 1, true) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
if ARGV[3] == 'done' or ARGV[3] == 'failed' or ARGV[3] == 'cancelled' then
  redis.call('HSET', KEYS[1], 'chunk_starts_at_end', redis.call('HLEN', KEYS[5]))
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3], KEYS[4])
end
return 1
"""
# Store one unit (scenario result or chunk) while the job runs; recount progress.
# KEYS: job, target hash, results, chunks. ARGV: field, payload, stage, now.
_RECORD = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local done = redis.call('HLEN', KEYS[3]) + redis.call('HLEN', KEYS[4])
redis.call('HSET', KEYS[1], 'done', done, 'stage', ARGV[3], 'updated', ARGV[4])
return done
"""
# Count a start of one unit while the job runs. KEYS: job, starts. ARGV: field, now, stage.
_BEGIN_UNIT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], 'updated', ARGV[2], 'stage', ARGV[3])
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""
# Heartbeat while the job runs. KEYS: job. ARGV: now, stage.
_TOUCH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'updated', ARGV[1], 'stage', ARGV[2])
return 1
"""


class JobError(RuntimeError):
    """A job cannot proceed (its record or snapshot is gone): the task drops it."""


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def valid_id(job_id) -> bool:
    return isinstance(job_id, str) and bool(_ID.match(job_id))


def _keys(job_id: str) -> list[str]:
    """KEYS of _TRANSITION."""
    return [schema.stress_job(job_id), schema.STRESS_ACTIVE, schema.stress_job(job_id, "portfolio"),
            schema.stress_job(job_id, "chunks"), schema.stress_job(job_id, "starts")]


def _field(value) -> str:
    """A record field as stored: text as is, JSON for dicts and lists, repr for numbers."""
    if isinstance(value, str):
        return value
    return schema.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def _flat(fields: dict) -> list:
    return [part for name, value in fields.items() for part in (name, _field(value))]


def transition(client, job_id: str, allowed: Iterable[str], to: str, **fields) -> bool:
    """Move the job from one of `allowed` to `to`, setting `fields`; False when it was not in
    one of them (finished, cancelled, unknown). A terminal state drops the bulky parts."""
    args = [job_id, ",".join(allowed), to] + _flat(fields)
    return bool(client.register_script(_TRANSITION)(keys=_keys(job_id), args=args))


# ---- validation ----------------------------------------------------------------------
def validate_options(options: dict | None) -> dict:
    """{"confidence": float in [0.5, 0.999] (0.95), "seed": int in [0, 2**32) (0)}."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise StressInputError("options must be an object", "options")
    unknown = sorted(set(options) - {"confidence", "seed"}, key=str)
    if unknown:
        raise StressInputError(f"unknown option(s) {unknown}; expected confidence, seed", str(unknown[0]))
    confidence = options.get("confidence", 0.95)
    lo, hi = CONFIDENCE_RANGE
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
            or not math.isfinite(confidence) or not lo <= confidence <= hi):
        raise StressInputError(f"confidence must be a number in [{lo}, {hi}], got {confidence!r}",
                               "confidence")
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise StressInputError(f"seed must be an integer in [0, 2**32), got {seed!r}", "seed")
    return {"confidence": float(confidence), "seed": seed}


def validate_scenarios(scenarios, symbols=None) -> list[dict]:
    """Each spec normalized by core.stress.validate_scenario (custom shocks checked against
    `symbols` when given); 1..20 of them, at most one Monte Carlo. Errors keep the engine's
    field and name the scenario's position."""
    if not isinstance(scenarios, (list, tuple)) or not scenarios:
        raise StressInputError("scenarios must be a non-empty list", "scenarios")
    if len(scenarios) > MAX_SCENARIOS:
        raise StressInputError(f"at most {MAX_SCENARIOS} scenarios per job, got {len(scenarios)}",
                               "scenarios")
    out = []
    for i, spec in enumerate(scenarios):
        try:
            out.append(stress.validate_scenario(spec, symbols))
        except StressInputError as exc:
            raise StressInputError(f"scenario {i + 1}: {exc}", exc.field) from None
    if sum(s["kind"] == "monte_carlo" for s in out) > 1:
        raise StressInputError("at most one monte_carlo scenario per job", "scenarios")
    return out


# ---- capacity: who consumes the stress queue -------------------------------------------
def report_capacity(client, hostname: str, processes: int, now: float | None = None) -> None:
    """A stress worker's heartbeat: `processes` pool processes consume the stress queue."""
    now = time.time() if now is None else now
    client.hset(schema.STRESS_CAPACITY, hostname, schema.dumps({"processes": int(processes), "ts": now}))


def withdraw_capacity(client, hostname: str) -> None:
    client.hdel(schema.STRESS_CAPACITY, hostname)


def stress_processes(client, fallback: int, now: float | None = None) -> int:
    """Pool processes of the stress workers that reported in the last CAPACITY_FRESH_S
    seconds (stale reports are deleted), or `fallback` when none did."""
    now = time.time() if now is None else now
    total, gone = 0, []
    for host, entry in schema.read_json_hash(client, schema.STRESS_CAPACITY).items():
        if isinstance(entry, dict) and now - float(entry.get("ts", 0)) <= CAPACITY_FRESH_S:
            total += int(entry.get("processes", 0))
        else:
            gone.append(host)
    if gone:
        client.hdel(schema.STRESS_CAPACITY, *gone)
    return total or fallback


def chunk_count(n_paths: int, floor: int, processes: int, settings: Settings) -> int:
    """The scenario's n_chunks is a floor; at least `stress_chunks_per_process` chunks per
    process (a straggler then costs at most half a share) and none above
    `stress_max_chunk_paths` paths (cancel latency); at most what core.stress allows."""
    wanted = max(floor, settings.stress_chunks_per_process * processes,
                 math.ceil(n_paths / settings.stress_max_chunk_paths))
    most = min(int(stress.PARAM_RANGES["monte_carlo"]["n_chunks"].high), n_paths // stress.MC_MIN_CHUNK_PATHS)
    return max(1, min(wanted, most))


def _mc_plan(specs: list[dict], options: dict, processes: int, settings: Settings) -> dict | None:
    """The fan-out of the job's Monte Carlo scenario; its spec's n_chunks is set to the chunk
    count used, so the stored spec reproduces the result (core.stress.mc_single)."""
    for index, spec in enumerate(specs):
        if spec["kind"] == "monte_carlo":
            params = spec["params"]
            n_paths = int(params["n_paths"])
            params["n_chunks"] = chunk_count(n_paths, int(params["n_chunks"]), processes, settings)
            return {"index": index, "n_paths": n_paths, "rows": stress.mc_plan(n_paths, params["n_chunks"]),
                    "seed": options["seed"], "confidences": _confidences(options["confidence"]),
                    "distribution": params["distribution"]}
    return None


def _confidences(confidence: float) -> list[float]:
    return sorted({0.95, 0.99, round(confidence, 6)})


# ---- submit ------------------------------------------------------------------------------
def _digest(user: str, specs: list[dict], options: dict, snapshot: bytes | None) -> str:
    book = hashlib.sha256(snapshot).hexdigest() if snapshot is not None else "live"
    text = json.dumps([user, specs, options, book], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def encode_snapshot(portfolio: stress.Portfolio) -> bytes:
    """Portfolio.to_json with every numeric array as base64 of its float64 bytes: exact, and
    ~10x faster to write and read than 126,000 floats printed as JSON (500 assets x 252 days)."""
    out = {}
    for name, value in portfolio.to_json().items():
        if isinstance(value, list) and name != "symbols":
            arr = np.asarray(value, dtype="<f8")
            value = {"shape": list(arr.shape), "f8": base64.b64encode(arr.tobytes()).decode()}
        out[name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def decode_snapshot(raw: bytes) -> stress.Portfolio:
    fields = {}
    for name, value in json.loads(raw).items():
        if isinstance(value, dict) and "f8" in value:
            value = np.frombuffer(base64.b64decode(value["f8"]), dtype="<f8").reshape(value["shape"])
        fields[name] = value
    return stress.Portfolio.from_json(fields)


def _portfolio_info(p: stress.Portfolio) -> dict:
    values = [float(v) for v in p.values]
    return {"source": p.source, "n_assets": len(p.symbols), "equity": float(p.equity),
            "gross": sum(abs(v) for v in values), "net": sum(values)}


def _enqueue_run(job_id: str, expires_s: float) -> None:
    """Send stress.run by name. The one place core reaches for the queue: a lazy import, so
    core stays free of Celery for every other caller (and for the tests of pure functions).
    ignore_result: progress lives in the job record; no result-backend subscription per send."""
    from celery_config import celery_app
    celery_app.send_task("stress.run", args=[job_id], expires=expires_s, ignore_result=True)


def start_job(client, *, user: str, source: str, scenarios: list[dict],
              portfolio: stress.Portfolio | None = None, options: dict | None = None,
              settings: Settings | None = None,
              send: Callable[[str, float], None] | None = None) -> tuple[str, bool]:
    """Validate, snapshot the portfolio (None = the live book, read now), record the job as
    queued, audit it and send `stress.run`. Returns (job_id, created); an identical submission
    (same user, scenarios, options and portfolio) within DEDUPE_S seconds returns the first
    job's id with created=False. Raises StressInputError for bad input, redis.RedisError when
    Redis is down (nothing is queued then)."""
    settings = settings or get_settings()
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    specs, opts = validate_scenarios(scenarios), validate_options(options)
    given = None if portfolio is None else encode_snapshot(portfolio)
    marker = schema.stress_dedupe(_digest(user, specs, opts, given))
    job_id = uuid.uuid4().hex[:16]
    if not client.set(marker, job_id, nx=True, ex=DEDUPE_S):
        existing = client.get(marker)
        if existing is not None:
            return _text(existing), False
    try:
        book = portfolio if portfolio is not None else _live_portfolio(client, settings)
        specs = validate_scenarios(specs, book.symbols)
        plan = _mc_plan(specs, opts, stress_processes(client, settings.stress_worker_processes), settings)
        _record_new_job(client, job_id, user, source, specs, opts, plan, book,
                        given if given is not None else encode_snapshot(book), settings)
    except BaseException:
        client.delete(marker)
        raise
    write_audit(client, "stress_run", user, source, ", ".join(s["name"] for s in specs),
                {"job_id": job_id, "kinds": [s["kind"] for s in specs], "options": opts,
                 "portfolio": _portfolio_info(book)})
    try:
        (send or _enqueue_run)(job_id, settings.stress_queue_timeout_s)
    except Exception as exc:   # the broker refused: say so on the job rather than leave it queued
        fail_job(client, job_id, f"could not be queued: {type(exc).__name__}: {exc}")
        raise
    return job_id, True


def _live_portfolio(client, settings: Settings) -> stress.Portfolio:
    conn = history.connect(settings.database_url)
    try:
        return stress.live_portfolio(client, conn, settings)
    finally:
        conn.close()


def uploaded_portfolio(text, settings: Settings | None = None) -> tuple[stress.Portfolio | None, list[dict]]:
    """core.stress.parse_portfolio_csv on the console's universe (the symbols with history):
    (portfolio, []) or (None, per-row errors). StressInputError when the text is empty."""
    if not isinstance(text, str) or not text.strip():
        raise stress.StressInputError("portfolio_csv must be non-empty CSV text", "portfolio_csv")
    settings = settings or get_settings()
    conn = history.connect(settings.database_url)
    try:
        universe = stress.Universe.from_history(conn, settings)
    finally:
        conn.close()
    return stress.parse_portfolio_csv(text, universe)


def _record_new_job(client, job_id, user, source, specs, opts, plan, book, snapshot: bytes,
                    settings) -> None:
    now = time.time()
    total = len(specs) - (1 if plan else 0) + (len(plan["rows"]) if plan else 0)
    record = {"id": job_id, "status": QUEUED, "user": user, "source": source, "created": now,
              "updated": now, "done": 0, "total": total, "stage": "queued", "scenarios": specs,
              "options": opts, "portfolio_info": _portfolio_info(book), "run_starts": 0}
    if plan:
        record["plan"] = plan
    keep_s = int(settings.stress_queue_timeout_s + settings.stress_stale_after_s + 3600)
    pipe = client.pipeline()
    pipe.hset(schema.stress_job(job_id), mapping=dict(zip(*[iter(_flat(record))] * 2)))
    pipe.set(schema.stress_job(job_id, "portfolio"), snapshot, ex=keep_s)
    pipe.zadd(schema.STRESS_JOBS, {job_id: now})
    pipe.sadd(schema.STRESS_ACTIVE, job_id)
    pipe.execute()
    _trim_history(client, settings.stress_history)


def _trim_history(client, keep: int) -> None:
    for raw in client.zrange(schema.STRESS_JOBS, 0, -keep - 1):
        delete_job(client, _text(raw))


def delete_job(client, job_id: str) -> None:
    pipe = client.pipeline()
    pipe.zrem(schema.STRESS_JOBS, job_id)
    pipe.srem(schema.STRESS_ACTIVE, job_id)
    pipe.delete(schema.stress_job(job_id), *(schema.stress_job(job_id, part) for part in _PARTS))
    pipe.execute()


# ---- read ----------------------------------------------------------------------------------
def _decode_record(raw: dict) -> dict:
    job = {_text(k): _text(v) for k, v in raw.items()}
    for name in _JSON_FIELDS:
        job[name] = schema.loads(job[name]) if name in job else None
    for name in _FLOAT_FIELDS:
        job[name] = float(job[name]) if job.get(name) not in (None, "", "None") else None
    for name in ("done", "total", "run_starts", "chunk_starts_at_end"):
        job[name] = int(job[name]) if job.get(name) not in (None, "") else None
    job["progress"] = {"done": job.pop("done") or 0, "total": job.pop("total") or 0,
                       "stage": job.pop("stage", "")}
    job.setdefault("error", None)
    return job


def read_record(client, job_id: str) -> dict | None:
    if not valid_id(job_id):
        return None
    raw = client.hgetall(schema.stress_job(job_id))
    return _decode_record(raw) if raw else None


def _staleness(job: dict, settings: Settings, now: float) -> str | None:
    """Why an active job is considered lost, or None."""
    if job["status"] == RUNNING and now - (job["updated"] or 0) > settings.stress_stale_after_s:
        return (f"no progress for {now - job['updated']:.0f} s (over the "
                f"{settings.stress_stale_after_s:.0f} s bound): its worker was lost and the job "
                "was not redelivered in time")
    if job["status"] == QUEUED and now - (job["created"] or 0) > settings.stress_queue_timeout_s:
        return (f"not picked up by any stress worker within {settings.stress_queue_timeout_s:.0f} s "
                "(is a worker consuming the 'stress' queue?)")
    return None


def _fail_if_stale(client, job: dict, settings: Settings, now: float) -> dict:
    reason = _staleness(job, settings, now)
    if reason and fail_job(client, job["id"], reason, allowed=(job["status"],), now=now):
        log.warning("stress job %s failed: %s", job["id"], reason)
        return read_record(client, job["id"]) or job
    return job


def get_job(client, job_id: str, settings: Settings | None = None, now: float | None = None,
            with_results: bool = True) -> dict | None:
    """The job, or None when unknown. A lost job (see the module docstring) is failed here
    too, so no reader ever sees it "running" past the stated bound. `with_results=False`
    skips the results (a progress poll: a 500-asset result is ~100 kB).

    {id, status, user, source, created, started, finished, duration_s, updated,
     progress: {done, total, stage}, scenarios, options, portfolio_info, plan (Monte Carlo
     chunking or None), results: scenario results in scenario order (a Monte Carlo entry is
     the merged result, run_scenario's shape), mc: the merged simulation (core.stress.mc_merge:
     by_confidence, histogram, ...) or None, summary, error, run_starts, cancelled_by}"""
    settings = settings or get_settings()
    job = read_record(client, job_id)
    if job is None:
        return None
    job = _fail_if_stale(client, job, settings, time.time() if now is None else now)
    if with_results:
        job["results"] = _results(client, job)
    job["mc"] = (job.pop("mc_result") or {}).get("extras", {}).get("monte_carlo")
    return job


def _results(client, job: dict) -> list[dict]:
    """Stored results in scenario order, the merged Monte Carlo result at its position; a
    scenario not run (cancelled, failed) is absent."""
    stored = schema.read_json_hash(client, schema.stress_job(job["id"], "results"))
    mc_index = job["plan"]["index"] if job.get("plan") and job.get("mc_result") else None
    out = []
    for i in range(len(job["scenarios"] or [])):
        result = job["mc_result"] if i == mc_index else stored.get(str(i))
        if result is not None:
            out.append(result)
    return out


_LIST_FIELDS = ("id", "status", "user", "source", "created", "started", "finished", "updated",
                "duration_s", "done", "total", "stage", "scenarios", "options", "portfolio_info",
                "summary", "error", "run_starts", "cancelled_by")


def list_jobs(client, limit: int = 50) -> list[dict]:
    """Newest first, the history table's fields only (no results, plan or portfolio)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer in 1..10000, got {limit!r}")
    ids = [_text(i) for i in client.zrevrange(schema.STRESS_JOBS, 0, limit - 1)]
    pipe = client.pipeline()
    for job_id in ids:
        pipe.hmget(schema.stress_job(job_id), _LIST_FIELDS)
    rows = [{k: v for k, v in zip(_LIST_FIELDS, values) if v is not None} for values in pipe.execute()]
    jobs = [_decode_record(row) for row in rows if row]
    for job in jobs:
        del job["plan"], job["mc_result"]
    return jobs


# ---- control ---------------------------------------------------------------------------------
def request_cancel(client, job_id: str, user: str, source: str = "web") -> bool:
    """Cancel a queued or running job (audited). Cooperative: the job is marked cancelled at
    once, no task starts a unit of it afterwards and a unit in flight has its result dropped.
    False when the job is unknown or already finished."""
    now = time.time()
    changed = valid_id(job_id) and transition(
        client, job_id, ACTIVE_STATUSES, CANCELLED, finished=now, updated=now, stage="cancelled",
        cancelled_by=user, error=f"cancelled by {user}")
    if changed:
        write_audit(client, "stress_cancel", user, source, job_id, {"job_id": job_id})
    return bool(changed)


def fail_job(client, job_id: str, reason: str, allowed: Iterable[str] = ACTIVE_STATUSES,
             now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return transition(client, job_id, allowed, FAILED, finished=now, updated=now, stage="failed",
                      error=reason)


def reap(client, settings: Settings | None = None, now: float | None = None) -> list[dict]:
    """Fail every lost job (module docstring); drop ids of finished or vanished jobs from the
    active set. Returns [{id, reason}] of the jobs failed now."""
    settings = settings or get_settings()
    now = time.time() if now is None else now
    failed = []
    for job_id in [_text(i) for i in client.smembers(schema.STRESS_ACTIVE)]:
        job = read_record(client, job_id)
        if job is None or job["status"] in TERMINAL_STATUSES:
            client.srem(schema.STRESS_ACTIVE, job_id)
            continue
        if _fail_if_stale(client, job, settings, now)["status"] == FAILED:
            failed.append({"id": job_id, "reason": _staleness(job, settings, now)})
    return failed


# ---- worker side -------------------------------------------------------------------------------
def begin_run(client, job_id: str, now: float | None = None) -> dict | None:
    """The job, now running (a redelivered run keeps running, counted in run_starts), or None
    when it is finished, cancelled or unknown. Fails the job after MAX_UNIT_STARTS starts."""
    now = time.time() if now is None else now
    job = read_record(client, job_id)
    if job is None or job["status"] not in ACTIVE_STATUSES:
        return None
    if job["status"] == QUEUED:
        transition(client, job_id, (QUEUED,), RUNNING, started=now, updated=now, stage="starting")
    starts = client.hincrby(schema.stress_job(job_id), "run_starts", 1)
    if starts > MAX_UNIT_STARTS:
        fail_job(client, job_id, f"the run task lost its worker {starts - 1} times; given up")
        return None
    job = read_record(client, job_id)
    return job if job and job["status"] == RUNNING else None


def load_portfolio(client, job_id: str) -> stress.Portfolio:
    """The job's snapshot; parsed once per process (a snapshot never changes once written)."""
    if job_id in _SNAPSHOTS:
        _SNAPSHOTS.move_to_end(job_id)
        return _SNAPSHOTS[job_id]
    raw = client.get(schema.stress_job(job_id, "portfolio"))
    if raw is None:
        raise JobError(f"job {job_id}: portfolio snapshot missing (job finished or expired)")
    _SNAPSHOTS[job_id] = portfolio = decode_snapshot(raw)
    while len(_SNAPSHOTS) > SNAPSHOT_CACHE:
        _SNAPSHOTS.popitem(last=False)
    return portfolio


def _record(client, job_id: str, part: str, index: int, payload: dict, stage: str) -> int | None:
    keys = [schema.stress_job(job_id), schema.stress_job(job_id, part),
            schema.stress_job(job_id, "results"), schema.stress_job(job_id, "chunks")]
    done = client.register_script(_RECORD)(keys=keys, args=[str(index), schema.dumps(payload), stage,
                                                            repr(time.time())])
    return None if done < 0 else int(done)


def record_result(client, job_id: str, index: int, result: dict, stage: str) -> int | None:
    """Store scenario `index`'s result; the new `done` count, or None when the job has ended."""
    return _record(client, job_id, "results", index, result, stage)


def record_chunk(client, job_id: str, index: int, chunk: dict) -> int | None:
    """Store Monte Carlo chunk `index`; the new `done` count, or None when the job has ended."""
    return _record(client, job_id, "chunks", index, chunk, f"Monte Carlo chunk {index} done")


def has_unit(client, job_id: str, part: str, index: int) -> bool:
    return bool(client.hexists(schema.stress_job(job_id, part), str(index)))


def begin_chunk(client, job_id: str, index: int) -> int | None:
    """Count a start of chunk `index`: the number of starts so far (2 = redelivered), or None
    when the job is no longer running (cancelled, failed, done): the chunk must not run."""
    starts = client.register_script(_BEGIN_UNIT)(
        keys=[schema.stress_job(job_id), schema.stress_job(job_id, "starts")],
        args=[str(index), repr(time.time()), f"Monte Carlo chunk {index} running"])
    return None if starts < 0 else int(starts)


def touch(client, job_id: str, stage: str) -> bool:
    """Heartbeat with a stage text while the job runs; False once it has ended."""
    return bool(client.register_script(_TOUCH)(keys=[schema.stress_job(job_id)],
                                               args=[repr(time.time()), stage]))


def try_finish(client, job_id: str) -> bool:
    """Finish the job when every unit is stored: merge the Monte Carlo chunks (exact, see
    core.stress.mc_merge), store the merged result at the scenario's position and mark the job
    done. Safe to call from every finisher at once: the merge is deterministic and only the
    first compare-and-set wins. True when this call finished it."""
    job = read_record(client, job_id)
    if job is None or job["status"] != RUNNING:
        return False
    plan, specs = job["plan"], job["scenarios"]
    if client.hlen(schema.stress_job(job_id, "results")) < len(specs) - (1 if plan else 0):
        return False
    mc = None
    if plan:
        key = schema.stress_job(job_id, "chunks")
        if client.hlen(key) < len(plan["rows"]):       # count first: the tails are bulky
            return False
        stored = schema.read_json_hash(client, key)
        mc = _merge(client, job_id, job, [stored[k] for k in sorted(stored, key=int)])
    now = time.time()
    fields = {"mc_result": mc} if mc else {}
    return transition(client, job_id, (RUNNING,), DONE, finished=now, updated=now, stage="done",
                      done=job["progress"]["total"], duration_s=now - (job["started"] or now),
                      summary=summarize(_results(client, {**job, **fields})), **fields)


def _merge(client, job_id: str, job: dict, chunks: list[dict]) -> dict:
    """The Monte Carlo scenario's result (run_scenario's shape) from its stored chunks."""
    plan, options = job["plan"], job["options"]
    portfolio = load_portfolio(client, job_id)
    merged = stress.mc_merge(portfolio, plan["n_paths"], chunks, tuple(plan["confidences"]))
    return stress.mc_scenario_result(portfolio, job["scenarios"][plan["index"]], merged,
                                     confidence=options["confidence"], seed=options["seed"])


def summarize(results: list[dict]) -> list[dict]:
    """The headline figures of each result, for the history table: kind, name, P&L, VaR."""
    keys = ("kind", "name", "pnl", "pnl_pct", "var_after", "cvar_after", "would_halt")
    return [{k: r.get(k) for k in keys} for r in results]


# ---- export ------------------------------------------------------------------------------------
def job_to_json(job: dict) -> str:
    """The whole job (record, scenarios, results) as indented JSON; NaN becomes null."""
    return json.dumps(schema.loads(schema.dumps(job)), indent=2, sort_keys=True)


def _flatten(prefix: str, value) -> Iterable[tuple[str, object]]:
    """(dotted name, scalar) pairs; lists of rows keyed by "symbol" or "name" use that key,
    other lists their position."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            label = item.get("symbol", item.get("name", i)) if isinstance(item, dict) else i
            yield from _flatten(f"{prefix}.{label}", item)
    else:
        yield prefix, value


CSV_COLUMNS = ("job_id", "scenario", "kind", "name", "field", "value")


def job_to_csv(job: dict) -> str:
    """Long ("tidy") CSV of every scalar of every result: one row per (scenario, field), e.g.
    field "pnl", "var_after", "positions.SYM003.pnl". Pivot on `field` for a wide table."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, result in enumerate(job.get("results") or []):
        base = (job.get("id"), i + 1, result.get("kind"), result.get("name"))
        for name, value in _flatten("", {k: v for k, v in result.items() if k not in ("kind", "name")}):
            writer.writerow((*base, name, "" if value is None else value))
    return out.getvalue()
