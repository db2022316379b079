"""HTTP API for scripts: halt, resume and read the trading state.

    POST /api/trading/halt     JSON {"reason": str}         -> 200 {"state": "HALTED", ...}
    POST /api/trading/resume   JSON {"reason": str} or none -> 200 {"state", "changed", "message"}
    GET  /api/trading/state                                 -> 200 {"state", "last_transition"}

Every call needs `Authorization: Bearer <token>` with the operator token CONSOLE_API_TOKEN
(compared in constant time). With no token configured every call answers 401 and says so.
401 without a valid token, 400 on a malformed body, 503 when Redis cannot be reached; never
a 500 for a bad request. Resume when not halted is a no-op (200, changed false, a message).
"""
from __future__ import annotations

import hmac
import logging

import redis
from flask import Flask, jsonify, request

from app import data
from core import emergency, safety
from core.settings import get_settings

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
API_USER = "api-token"     # the token is one operator's; the security issue adds per-user tokens


def _error(status: int, message: str):
    resp = jsonify({"error": message})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="console"'
    return resp


def _unauthorized():
    """None when the request carries the operator token, else the 401 response."""
    expected = get_settings().api_token
    if not expected:
        return _error(401, "API token not configured: set CONSOLE_API_TOKEN to enable the API")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return _error(401, "invalid token")
    return None


def _body(required: bool):
    """(dict, None) or (None, 400 response). An empty body is {} unless `required`."""
    if request.content_length and request.content_length > MAX_BODY:
        return None, _error(400, f"body larger than {MAX_BODY} bytes")
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            return None, _error(400, 'JSON body required: {"reason": "..."}')
        return {}, None
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return None, _error(400, "body must be a JSON object")
    reason = body.get("reason")
    if (required or reason is not None) and (not isinstance(reason, str) or not reason.strip()
                                            or len(reason) > safety.MAX_REASON):
        return None, _error(400, f'"reason" must be a non-empty string of at most '
                                 f'{safety.MAX_REASON} characters')
    return body, None


def register(server: Flask) -> None:
    """Add the /api/trading/* routes to the Flask server."""

    @server.post("/api/trading/halt")
    def api_halt():
        denied = _unauthorized()
        if denied is not None:
            return denied
        body, bad = _body(required=True)
        if bad is not None:
            return bad
        try:
            result = emergency.emergency_stop(data.client(), body["reason"], API_USER, "api")
        except redis.RedisError as exc:
            log.error("halt via API failed: Redis unavailable: %s", exc)
            return _error(503, f"Redis unavailable, trading state not changed: {exc}")
        return jsonify({"state": safety.HALTED, "changed": result["changed"],
                        "from_state": result["from_state"], "ts": result["ts"],
                        "audit_id": result.get("audit_id")})

    @server.post("/api/trading/resume")
    def api_resume():
        denied = _unauthorized()
        if denied is not None:
            return denied
        body, bad = _body(required=False)
        if bad is not None:
            return bad
        try:
            result = emergency.resume_trading(data.client(), API_USER, "api",
                                              body.get("reason") or "resumed via API")
        except redis.RedisError as exc:
            return _error(503, f"Redis unavailable: {exc}")
        return jsonify({"state": result["to_state"], "changed": result["changed"],
                        "from_state": result["from_state"], "message": result["message"]})

    @server.get("/api/trading/state")
    def api_state():
        denied = _unauthorized()
        if denied is not None:
            return denied
        try:
            client = data.client()
            return jsonify({"state": safety.read_state(client),
                            "last_transition": safety.read_meta(client) or None})
        except redis.RedisError as exc:
            return _error(503, f"Redis unavailable: {exc}")
