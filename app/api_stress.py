"""HTTP API of stress-test jobs, for scripts (same bearer tokens as /api/trading/*).

    POST /api/stress/jobs              JSON {"scenarios": [...], "portfolio_csv": str (optional,
                                       default: the live book), "options": {"confidence", "seed"}}
                                       -> 202 {"job_id", "created", "status", "url"}
    GET  /api/stress/jobs?limit=50     -> 200 {"jobs": [records, newest first]}
    GET  /api/stress/jobs/<id>         -> 200 the job with its results (core.stress_jobs.get_job)
    POST /api/stress/jobs/<id>/cancel  -> 200 {"job_id", "cancelled": true, "status"}

Running and cancelling need the operator role, reading needs viewer. A scenario is
{"kind", "params", "name"} as core.stress.validate_scenario takes it (shocks are signed
fractions: -0.20 is a 20 % fall). 400 with a message (and "field", and "rows" for per-row CSV
errors) for bad input, 404 for an unknown job, 409 when cancelling a finished job, 503 while
Redis is unreachable; never a 500 for a bad request. An identical submission within a few
seconds answers the first job's id with "created": false. Runs and cancels are audited.
"""
from __future__ import annotations

import functools
import logging

import kombu.exceptions
import redis
from flask import Flask, jsonify, request

from app import data
from app.api import _caller, _error
from core import stress, stress_jobs
from core.dialect import DB_ERRORS
from core.stress import StressInputError

log = logging.getLogger(__name__)

MAX_BODY = stress.CSV_MAX_BYTES + 64 * 1024


def _input_error(exc: StressInputError, rows: list[dict] | None = None):
    resp = jsonify({"error": str(exc), "field": exc.field, **({"rows": rows} if rows else {})})
    resp.status_code = 400
    return resp


def _json_body():
    """(dict, None) or (None, 400 response)."""
    if request.content_length and request.content_length > MAX_BODY:
        return None, _error(400, f"body larger than {MAX_BODY} bytes")
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return None, _error(400, 'body must be a JSON object {"scenarios": [...], ...}')
    unknown = sorted(set(body) - {"scenarios", "portfolio_csv", "options"}, key=str)
    if unknown:
        return None, _error(400, f"unknown key(s) {unknown}: expected scenarios, portfolio_csv, options")
    return body, None


def _job_or_404(job_id: str):
    job = stress_jobs.get_job(data.client(), job_id)
    return (job, None) if job is not None else (None, _error(404, f"no stress job {job_id!r}"))


def _route(role: str):
    """A view for callers with at least `role` (their name is its first argument); a Redis
    outage answers 503 saying nothing was done."""
    def wrap(view):
        @functools.wraps(view)
        def route(*args, **kwargs):
            caller, denied = _caller(role)
            if denied is not None:
                return denied
            try:
                return view(caller, *args, **kwargs)
            except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
                return _error(503, f"Redis unavailable, nothing was done: {exc}")
        return route
    return wrap


def register(server: Flask) -> None:
    """Add the /api/stress/* routes to the Flask server."""

    @server.post("/api/stress/jobs")
    @_route("operator")
    def api_stress_run(caller: str):
        body, bad = _json_body()
        if bad is not None:
            return bad
        try:
            portfolio, rows = (None, [])
            if body.get("portfolio_csv") is not None:
                portfolio, rows = stress_jobs.uploaded_portfolio(body["portfolio_csv"])
            if rows:
                return _input_error(StressInputError(
                    f"portfolio_csv has {len(rows)} error(s); nothing was run", "portfolio_csv"), rows)
            job_id, created = stress_jobs.start_job(
                data.client(), user=caller, source="api", scenarios=body.get("scenarios"),
                portfolio=portfolio, options=body.get("options"))
        except StressInputError as exc:
            return _input_error(exc)
        except (OSError, *DB_ERRORS) as exc:
            log.error("stress run via API: history unavailable: %s", exc)
            return _error(503, f"price history unavailable: {exc}")
        resp = jsonify({"job_id": job_id, "created": created,
                        "status": stress_jobs.QUEUED if created else "existing",
                        "url": f"/api/stress/jobs/{job_id}"})
        resp.status_code = 202
        return resp

    @server.get("/api/stress/jobs")
    @_route("viewer")
    def api_stress_list(_caller_name: str):
        raw = request.args.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 200:
            return _error(400, f"limit must be an integer in 1..200, got {raw!r}")
        return jsonify({"jobs": stress_jobs.list_jobs(data.client(), int(raw))})

    @server.get("/api/stress/jobs/<job_id>")
    @_route("viewer")
    def api_stress_get(_caller_name: str, job_id: str):
        job, missing = _job_or_404(job_id)
        return missing or jsonify(job)

    @server.post("/api/stress/jobs/<job_id>/cancel")
    @_route("operator")
    def api_stress_cancel(caller: str, job_id: str):
        job, missing = _job_or_404(job_id)
        if missing is not None:
            return missing
        if not stress_jobs.request_cancel(data.client(), job_id, caller, "api"):
            job = stress_jobs.get_job(data.client(), job_id)
            return _error(409, f"job {job_id} is already {job['status']}; nothing to cancel")
        return jsonify({"job_id": job_id, "cancelled": True, "status": stress_jobs.CANCELLED})
