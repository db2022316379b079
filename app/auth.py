"""Login for the dashboard: signed session cookies, CSRF protection, role checks.

Open without a login: the login page, static assets and component bundles, /healthz,
/metrics and /api/* (the API authenticates every call with its own bearer token). Everything
else, Dash's layout and callback endpoints included, needs a session; a page request without
one is redirected to /login, anything else gets 401. Sessions are Flask's signed cookies
(HttpOnly, SameSite=Strict, Secure when CONSOLE_SECURE_COOKIES is on), signed with
CONSOLE_SECRET_KEY or, when unset, a random key kept in Redis so every gunicorn worker (and a
restarted one) accepts the same sessions. Each request re-reads the user's role from Redis, so
a deleted or demoted user loses access at once; while Redis is unreachable a valid signed
session keeps its last role (read-only pages still show the outage banner).

CSRF: the login form carries a per-session token; every other state-changing request must
come from the console's own origin (the browser's Origin header), on top of SameSite=Strict.
"""
from __future__ import annotations

import html
import logging
import secrets
from urllib.parse import urlparse

import flask
import redis

from app import data
from core import schema, users
from core.audit import write_audit
from core.settings import get_settings

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/login", "/assets/", "/_dash-component-suites/", "/healthz", "/metrics",
                 "/api/", "/_favicon.ico", "/favicon.ico")
PAGE_METHODS = ("GET", "HEAD")
# set only by the in-process request that primes Dash (a WSGI environ key no HTTP client can set)
PRIME_ENVIRON_KEY = "console.prime_index"


def _secret_key() -> str:
    configured = get_settings().secret_key
    if configured:
        return configured
    client = data.client()
    try:
        client.set(schema.SECRET_KEY, secrets.token_hex(32), nx=True)
        return client.get(schema.SECRET_KEY).decode()
    except redis.RedisError as exc:
        log.error("no session key from Redis (%s): sessions last until this worker restarts", exc)
        return secrets.token_hex(32)


def current_user() -> dict | None:
    """{'username', 'role'} of this request's session, or None (also outside a request)."""
    if not flask.has_request_context():
        return None
    user = flask.session.get("user")
    return user if isinstance(user, dict) and "username" in user else None


def current_role() -> str | None:
    user = current_user()
    return user["role"] if user else None


def require_role(needed: str) -> str | None:
    """None when this request's user has at least `needed`, else a message to show.
    Every control callback calls it: hiding a button is not enough."""
    if users.has_role(current_role(), needed):
        return None
    return f"Not allowed: this action needs the {needed} role."


def _refresh_role(user: dict) -> dict | None:
    """The user's current record (role may have changed), None when deleted."""
    try:
        record = users.get_user(data.client(), user["username"])
    except redis.RedisError:
        return user
    if record is None:
        return None
    return {"username": user["username"], "role": record["role"]}


def _same_origin() -> bool:
    origin = flask.request.headers.get("Origin")
    if not origin:
        return True  # not a browser cross-site request (browsers always send Origin on POST)
    return urlparse(origin).netloc == flask.request.host


def _gate():
    path = flask.request.path
    if flask.request.environ.get(PRIME_ENVIRON_KEY) is True:
        return None
    if flask.request.method not in PAGE_METHODS and not _same_origin():
        return flask.Response("cross-origin request refused", 403)
    if path.startswith(OPEN_PREFIXES):
        return None
    user = current_user()
    if user is not None:
        user = _refresh_role(user)
        if user is None:
            flask.session.clear()
        else:
            flask.session["user"] = user
            return None
    if flask.request.method in PAGE_METHODS and not path.startswith("/_dash"):
        return flask.redirect(f"/login?next={flask.request.full_path.rstrip('?')}")
    return flask.Response("login required", 401)


LOGIN_PAGE = """<!DOCTYPE html><html data-bs-theme="dark" lang="en"><head><meta charset="utf-8">
<title>Sign in · Trading Console</title><link rel="stylesheet" href="/assets/vendor/bootstrap.min.css">
</head><body class="d-flex align-items-center justify-content-center" style="min-height:100vh">
<form method="post" action="/login" class="card p-4" style="width:360px" id="login-form">
<h4 class="mb-3">Trading Performance &amp; Risk Console</h4>{message}
<input type="hidden" name="csrf_token" value="{csrf}"><input type="hidden" name="next" value="{next}">
<label class="form-label" for="login-username">User</label>
<input class="form-control mb-2" id="login-username" name="username" autocomplete="username" required>
<label class="form-label" for="login-password">Password</label>
<input class="form-control mb-3" id="login-password" name="password" type="password"
 autocomplete="current-password" required>
<button class="btn btn-primary" id="login-submit" type="submit">Sign in</button></form></body></html>"""


def _login_page(message: str = "", status: int = 200, next_url: str = "/"):
    token = flask.session.setdefault("csrf", secrets.token_urlsafe(24))
    note = f'<div class="alert alert-danger py-2" id="login-error">{html.escape(message)}</div>' if message else ""
    body = LOGIN_PAGE.format(message=note, csrf=token, next=html.escape(next_url))
    return flask.Response(body, status, {"Cache-Control": "no-store"})


def _safe_next(url: str | None) -> str:
    """Only a local path: never redirect a login to another site."""
    if not url or not url.startswith("/") or url.startswith("//"):
        return "/"
    return url


def login():
    if flask.request.method == "GET":
        return _login_page(next_url=_safe_next(flask.request.args.get("next")))
    form = flask.request.form
    next_url = _safe_next(form.get("next"))
    expected = str(flask.session.get("csrf") or "")
    if not expected or not secrets.compare_digest(str(form.get("csrf_token", "")), expected):
        return _login_page("The form expired; please sign in again.", 400, next_url)
    username, password = form.get("username", "").strip().lower(), form.get("password", "")
    address = flask.request.remote_addr or "?"
    client = data.client()
    try:
        user = users.authenticate(client, username, password, address)
    except users.RateLimited as exc:
        return _login_page(str(exc).capitalize() + ".", 429, next_url)
    except redis.RedisError:
        return _login_page("Redis unreachable: sign-in is unavailable until it returns.", 503, next_url)
    if user is None:
        write_audit(client, "login_failed", username or "?", "web", f"from {address}", {})
        return _login_page("Wrong user or password.", 401, next_url)
    flask.session.clear()
    flask.session["user"] = {"username": user["username"], "role": user["role"]}
    flask.session["csrf"] = secrets.token_urlsafe(24)
    flask.session.permanent = True
    write_audit(client, "login", user["username"], "web", f"from {address}", {"role": user["role"]})
    return flask.redirect(next_url)


def logout():
    user = current_user()
    if user:
        write_audit(data.client(), "logout", user["username"], "web", "", {})
    flask.session.clear()
    return flask.redirect("/login")


def install(server: flask.Flask) -> None:
    settings = get_settings()
    server.secret_key = _secret_key()
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                         SESSION_COOKIE_SECURE=settings.secure_cookies,
                         SESSION_COOKIE_NAME="console_session",
                         PERMANENT_SESSION_LIFETIME=settings.session_hours * 3600)
    server.before_request(_gate)
    server.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    server.add_url_rule("/logout", "logout", logout, methods=["GET", "POST"])
