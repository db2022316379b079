"""The trading HTTP API on a Flask server: bearer token (constant-time, 401 when missing,
wrong or not configured), 400 on malformed bodies, halt / state / resume and the resume no-op."""
from __future__ import annotations

import flask
import pytest

from app import api, data
from core import emergency, safety, schema
from core.settings import get_settings
from tests.conftest import API_TOKEN

DB = 15
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def store(redis_url, monkeypatch):
    client = schema.connect(redis_url.rsplit("/", 1)[0] + f"/{DB}")
    client.flushdb()
    monkeypatch.setattr(data, "client", lambda: client)   # a real Redis, our own database
    yield client
    client.flushdb()


@pytest.fixture
def http(store):
    get_settings.cache_clear()
    server = flask.Flask("api-test")
    api.register(server)
    return server.test_client()


def test_state_halt_state_resume_round_trip(http, store):
    assert http.get("/api/trading/state", headers=AUTH).get_json()["state"] == "ACTIVE"
    r = http.post("/api/trading/halt", json={"reason": "script says stop"}, headers=AUTH)
    assert r.status_code == 200 and r.get_json()["state"] == "HALTED"
    assert safety.read_state(store) == "HALTED"
    audit = emergency.recent_audit(store, 1)[0]
    assert audit["source"] == "api" and audit["reason"] == "script says stop" and audit["action"] == "halt"
    st = http.get("/api/trading/state", headers=AUTH).get_json()
    assert st["state"] == "HALTED" and st["last_transition"]["reason"] == "script says stop"
    r = http.post("/api/trading/resume", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["changed"] and r.get_json()["state"] == "ACTIVE"


def test_resume_when_not_halted_is_a_no_op_with_a_message(http, store):
    r = http.post("/api/trading/resume", json={"reason": "just in case"}, headers=AUTH)
    body = r.get_json()
    assert r.status_code == 200 and not body["changed"] and body["state"] == "ACTIVE"
    assert "not halted" in body["message"] and store.xlen(schema.TRADING_HISTORY) == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {API_TOKEN}"},
                                     {"Authorization": "Bearer "},
                                     {"Authorization": f"Bearer {API_TOKEN}x"}])
@pytest.mark.parametrize("method,path", [("post", "/api/trading/halt"), ("post", "/api/trading/resume"),
                                         ("get", "/api/trading/state")])
def test_without_a_valid_token_every_call_is_401_and_changes_nothing(http, store, headers, method, path):
    r = getattr(http, method)(path, json={"reason": "x"}, headers=headers)
    assert r.status_code == 401 and "error" in r.get_json()
    assert store.get(schema.TRADING_STATE) is None


def test_unconfigured_token_answers_401_saying_so(store, monkeypatch):
    monkeypatch.setenv("CONSOLE_API_TOKEN", "")
    get_settings.cache_clear()
    try:
        server = flask.Flask("api-test-unset")
        api.register(server)
        r = server.test_client().post("/api/trading/halt", json={"reason": "x"},
                                      headers={"Authorization": "Bearer "})
        assert r.status_code == 401 and "not configured" in r.get_json()["error"]
        r = server.test_client().get("/api/trading/state", headers=AUTH)
        assert r.status_code == 401 and "not configured" in r.get_json()["error"]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert store.get(schema.TRADING_STATE) is None


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b'"text"', b'{"reason": ""}',
                                  b'{"reason": 5}', b'{"why": "x"}', b'{"reason": "' + b"x" * 600 + b'"}'])
def test_malformed_halt_body_is_400(http, store, body):
    r = http.post("/api/trading/halt", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.get_json()
    assert store.get(schema.TRADING_STATE) is None


@pytest.mark.parametrize("body", [b"{oops", b"[]", b'{"reason": 7}'])
def test_malformed_resume_body_is_400(http, body):
    r = http.post("/api/trading/resume", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_redis_down_is_503_not_500(http, monkeypatch):
    dead = schema.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    monkeypatch.setattr(data, "client", lambda: dead)
    assert http.post("/api/trading/halt", json={"reason": "x"}, headers=AUTH).status_code == 503
    assert http.get("/api/trading/state", headers=AUTH).status_code == 503


def test_a_short_api_token_is_refused_at_start_up_without_showing_it():
    from core.settings import SettingsError, load_settings
    with pytest.raises(SettingsError, match="CONSOLE_API_TOKEN") as err:
        load_settings({"CONSOLE_API_TOKEN": "short"})
    assert "short" not in str(err.value)
    assert load_settings({"CONSOLE_API_TOKEN": "x" * 16}).api_token == "x" * 16


def test_per_user_tokens_act_with_their_users_role_and_name(http, store):
    from core import users
    users.create_user(store, "watcher", "watcher-password", "viewer")
    users.create_user(store, "oscar", "oscar-password", "operator")
    viewer = {"Authorization": f"Bearer {users.issue_api_token(store, 'watcher')}"}
    operator = {"Authorization": f"Bearer {users.issue_api_token(store, 'oscar')}"}
    assert http.get("/api/trading/state", headers=viewer).status_code == 200
    r = http.post("/api/trading/halt", json={"reason": "viewer tries"}, headers=viewer)
    assert r.status_code == 403 and "operator" in r.get_json()["error"]
    assert store.get(schema.TRADING_STATE) is None
    r = http.post("/api/trading/halt", json={"reason": "oscar halts"}, headers=operator)
    assert r.status_code == 200 and safety.read_state(store) == safety.HALTED
    assert any(e["user"] == "oscar" for e in emergency.recent_audit(store, 5))
    users.update_user(store, "oscar", role="viewer")          # demoted: the token follows the role
    assert http.post("/api/trading/resume", headers=operator).status_code == 403
