"""GET /metrics over HTTP: parsed with prometheus_client's own parser, open by default, and
behind `Authorization: Bearer <CONSOLE_METRICS_TOKEN>` when that setting is given."""
from __future__ import annotations

import flask
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import data, main
from core import alerts, schema
from core.settings import SettingsError, get_settings, load_settings

DB = 1
TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def store(own_db, monkeypatch):
    monkeypatch.setattr(data, "client", lambda: own_db)   # a real Redis, database DB
    return own_db


def _http(monkeypatch, token: str | None):
    if token is None:
        monkeypatch.delenv("CONSOLE_METRICS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("CONSOLE_METRICS_TOKEN", token)
    get_settings.cache_clear()
    server = flask.Flask("metrics-test")
    main.register_metrics(server)
    return server.test_client()


@pytest.fixture(autouse=True)
def fresh_settings():
    yield
    get_settings.cache_clear()        # later tests read the environment without the token again


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_are_open_by_default_and_parse_with_prometheus_client(store, monkeypatch):
    alerts.raise_alert(store, "critical", "test", "boom")
    store.set(schema.TRADING_STATE, "HALTED")
    resp = _http(monkeypatch, None).get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = _families(resp.get_data(as_text=True))
    assert fams["console_stage_latency_seconds"].type == "histogram"
    assert fams["console_alerts"].type == "counter"
    alerts_by_severity = {s.labels["severity"]: s.value for s in fams["console_alerts"].samples
                          if s.name == "console_alerts_total"}
    assert alerts_by_severity["critical"] == 1 and alerts_by_severity["info"] == 0
    state = {s.labels["state"]: s.value for s in fams["console_trading_state"].samples}
    assert state == {"ACTIVE": 0, "REDUCING": 0, "HALTED": 1}
    thresholds = {s.labels["stage"]: s.value for s in fams["console_stage_threshold_seconds"].samples}
    assert thresholds["total_pipeline"] == 0.1


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_with_a_token_configured_a_scrape_without_it_gets_401(store, monkeypatch, header):
    http = _http(monkeypatch, TOKEN)
    resp = http.get("/metrics", headers={"Authorization": header} if header else {})
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "console_" not in resp.get_data(as_text=True)


def test_with_the_right_bearer_token_the_scrape_succeeds(store, monkeypatch):
    resp = _http(monkeypatch, TOKEN).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and "console_up" in _families(resp.get_data(as_text=True))


def test_a_short_metrics_token_stops_the_process_at_start():
    with pytest.raises(SettingsError, match="CONSOLE_METRICS_TOKEN"):
        load_settings({"CONSOLE_METRICS_TOKEN": "short"})
    assert load_settings({}).metrics_token == "" and TOKEN not in repr(load_settings({"CONSOLE_METRICS_TOKEN": TOKEN}))
