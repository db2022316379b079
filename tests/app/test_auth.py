"""Login, roles and CSRF on the real web app (gunicorn, several workers) in real Chromium."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from core import schema, users
from tests.app.conftest import login
from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.timeout(120)


def _status(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_pages_redirect_to_login_and_dash_endpoints_refuse_without_a_session(console, anonymous_page):
    anonymous_page.goto(console + "/latency")
    assert "/login?next=/latency" in anonymous_page.url
    assert _status(console + "/_dash-layout") == 401
    assert _status(console + "/_dash-update-component", "POST", {"Content-Type": "application/json"},
                   b"{}") == 401
    for open_path in ("/healthz", "/metrics", "/login", "/assets/vendor/bootstrap.min.css"):
        assert _status(console + open_path) in (200, 503), open_path


def test_wrong_password_is_refused_and_the_right_one_lands_on_the_requested_page(console, anonymous_page):
    anonymous_page.goto(console + "/latency")
    anonymous_page.fill("#login-username", "admin")
    anonymous_page.fill("#login-password", "not-the-password")
    anonymous_page.click("#login-submit")
    assert "Wrong user or password" in anonymous_page.inner_text("#login-error")
    anonymous_page.fill("#login-username", "admin")
    anonymous_page.fill("#login-password", ADMIN_PASSWORD)
    anonymous_page.click("#login-submit")
    anonymous_page.wait_for_url(console + "/latency", timeout=15000)
    anonymous_page.wait_for_selector("#shell-user")
    assert anonymous_page.inner_text("#shell-user") == "admin (admin)"


def test_login_form_without_its_csrf_token_and_cross_origin_posts_are_refused(console):
    assert _status(console + "/login", "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                   b"username=admin&password=" + ADMIN_PASSWORD.encode()) == 400
    assert _status(console + "/_dash-update-component", "POST",
                   {"Content-Type": "application/json", "Origin": "http://evil.example"}, b"{}") == 403


def test_deleted_user_loses_the_session_at_once_and_logout_ends_it(console, anonymous_page, redis_url):
    client = schema.connect(redis_url)
    client.hdel(schema.USERS, "temp")
    users.create_user(client, "temp", "temp-password", "viewer")
    login(anonymous_page, console, "temp", "temp-password")
    anonymous_page.wait_for_selector("#shell-user")
    assert anonymous_page.inner_text("#shell-user") == "temp (viewer)"
    users.delete_user(client, "temp")
    anonymous_page.goto(console + "/")
    assert "/login" in anonymous_page.url
    login(anonymous_page, console)
    anonymous_page.click("#shell-logout")
    anonymous_page.wait_for_url(lambda u: "/login" in u)
    anonymous_page.goto(console + "/")
    assert "/login" in anonymous_page.url
    audit = [e["action"] for e in __import__("core.emergency", fromlist=["x"]).recent_audit(client, 50)]
    assert "login" in audit and "logout" in audit


def test_admin_adds_a_viewer_who_cannot_see_admin_pages_and_sees_the_audit(console, page, anonymous_page,
                                                                          redis_url):
    schema.connect(redis_url).hdel(schema.USERS, "vera")
    page.goto(console + "/users")
    page.fill("#users-name", "vera")
    page.fill("#users-password", "short")
    page.click("#users-add")
    assert "password" in page.inner_text("#users-error")          # validation message shown
    page.fill("#users-password", "vera-password")
    page.click("#users-add")
    page.wait_for_selector("#users-ok")
    assert "vera" in page.inner_text("#users-table-el")
    page.goto(console + "/audit")
    page.wait_for_selector("#audit-table-el")
    assert "user_add" in page.inner_text("#audit-table-el")
    login(anonymous_page, console, "vera", "vera-password")
    anonymous_page.wait_for_selector("#shell-user")
    assert "Users" not in anonymous_page.inner_text("nav") and "Audit" not in anonymous_page.inner_text("nav")
    anonymous_page.goto(console + "/users")
    anonymous_page.wait_for_selector("#users-denied")


def test_viewer_pressing_a_control_is_refused_on_the_server(console, anonymous_page, redis_url):
    client = schema.connect(redis_url)
    client.hdel(schema.USERS, "vic")
    users.create_user(client, "vic", "vic-password", "viewer")
    login(anonymous_page, console, "vic", "vic-password")
    anonymous_page.goto(console + "/cache")
    anonymous_page.click("#cache-optimize-button")
    anonymous_page.wait_for_selector("#cache-optimize-result :text('Not allowed')", timeout=15000)
