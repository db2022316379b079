"""HTTP API for scripts: halt, resume and read the trading state.

    POST /api/trading/halt     JSON {"reason": str}         -> 200 {"state": "HALTED", ...}
    POST /api/trading/resume   JSON {"reason": str} or none -> 200 {"state", "changed", "message"}
    GET  /api/trading/state                                 -> 200 {"state", "last_transition"}

Every call needs `Authorization: Bearer <token>`: either CONSOLE_API_TOKEN (an operator's
token, compared in constant time, usable even when Redis is down) or a per-user token issued on
the Users page, which acts with that user's current role. Halt and resume need operator, state
needs viewer. 401 without a valid token, 403 when the role is too low, 400 on a malformed body,
503 when Redis cannot be reached; never a 500 for a bad request. Resume when not halted is a
no-op (200, changed false, a message).
"""
from __future__ import annotations

import hmac
import logging

import redis
from flask import Flask, jsonify, request

from app import data
from core import emergency, safety, users
from core.settings import get_settings

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
ENV_TOKEN_USER = "api-token"   # who acts when CONSOLE_API_TOKEN is used (an operator)


def _error(status: int, message: str):
    resp = jsonify({"error": message})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="console"'
    return resp


def _caller(needed: str):
    """(username, None) for a valid token whose role is at least `needed`, else (None, error)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    expected = get_settings().api_token
    hint = "" if expected else (" (CONSOLE_API_TOKEN is not configured; per-user tokens come from "
                                "the Users page)")
    if scheme.lower() != "bearer" or not given:
        return None, _error(401, "missing bearer token (Authorization: Bearer <token>)" + hint)
    if expected and hmac.compare_digest(given.encode(), expected.encode()):
        return ENV_TOKEN_USER, (None if users.has_role("operator", needed) else _error(403, "forbidden"))
    try:
        user = users.user_for_token(data.client(), given)
    except redis.RedisError as exc:
        return None, _error(503, f"Redis unavailable, token not checked: {exc}")
    if user is None:
        return None, _error(401, "invalid token" + hint)
    if not users.has_role(user["role"], needed):
        return None, _error(403, f"this call needs the {needed} role; the token's user is {user['role']}")
    return user["username"], None


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
        caller, denied = _caller("operator")
        if denied is not None:
            return denied
        body, bad = _body(required=True)
        if bad is not None:
            return bad
        try:
            result = emergency.emergency_stop(data.client(), body["reason"], caller, "api")
        except redis.RedisError as exc:
            log.error("halt via API failed: Redis unavailable: %s", exc)
            return _error(503, f"Redis unavailable, trading state not changed: {exc}")
        return jsonify({"state": safety.HALTED, "changed": result["changed"],
                        "from_state": result["from_state"], "ts": result["ts"],
                        "audit_id": result.get("audit_id")})

    @server.post("/api/trading/resume")
    def api_resume():
        caller, denied = _caller("operator")
        if denied is not None:
            return denied
        body, bad = _body(required=False)
        if bad is not None:
            return bad
        try:
            result = emergency.resume_trading(data.client(), caller, "api",
                                              body.get("reason") or "resumed via API")
        except redis.RedisError as exc:
            return _error(503, f"Redis unavailable: {exc}")
        return jsonify({"state": result["to_state"], "changed": result["changed"],
                        "from_state": result["from_state"], "message": result["message"]})

    @server.get("/api/trading/state")
    def api_state():
        _caller_name, denied = _caller("viewer")
        if denied is not None:
            return denied
        try:
            client = data.client()
            return jsonify({"state": safety.read_state(client),
                            "last_transition": safety.read_meta(client) or None})
        except redis.RedisError as exc:
            return _error(503, f"Redis unavailable: {exc}")
