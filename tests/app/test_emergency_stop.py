"""End to end with the whole console running: the Emergency stop button in a real browser
halts trading, no strategy order is accepted after the halt, the pipeline flattens its book,
a HALTED banner shows on every page, the audit trail says who/why/what; the HTTP API with its
token halts too; Resume (with confirmation) brings trading back. Leaves the state ACTIVE."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from core import alerts, emergency, safety, schema
from tests.conftest import API_TOKEN, wait_for

pytestmark = pytest.mark.timeout(240)
REACTION_S = 0.05          # halt -> gate closed in the pipeline (the halt benchmark's goal)


def _positions(client) -> dict:
    return {k.decode(): schema.loads(v)["qty"] for k, v in client.hgetall(schema.BROKER_POSITIONS).items()}


def _orders_since(client, since: float) -> list[dict]:
    rows = [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in client.xrevrange(schema.BROKER_ORDERS, count=2000)]
    return [r for r in rows if float(r["ts"]) > since]


def _status(client) -> dict:
    return schema.loads(client.get(schema.PIPELINE_STATUS)) or {}


def _ensure_active(client) -> None:
    if safety.read_state(client) != safety.ACTIVE:
        safety.transition(client, safety.ACTIVE, "test clean-up", "test", user="pytest")


def _wait_trading(client) -> None:
    _ensure_active(client)
    wait_for(lambda: _status(client).get("trading_state") == "ACTIVE", 20, what="pipeline ACTIVE")
    wait_for(lambda: any(_positions(client).values()), 60, what="open positions")


def _check_halted_and_flat(client, halted_at: float) -> dict:
    liq = wait_for(lambda: [a for a in emergency.recent_audit(client, 20)
                            if a["action"] == "liquidation" and a["ts"] >= halted_at], 20,
                   what="the liquidation audit record")[0]
    assert liq["details"]["orders"] and all(o["ts"] >= halted_at for o in liq["details"]["orders"])
    wait_for(lambda: not any(_positions(client).values()), 10, what="flat positions in Redis")
    time.sleep(0.6)                                              # two persistence rounds
    late = [o for o in _orders_since(client, halted_at + REACTION_S) if o["kind"] == "strategy"]
    assert late == [], late[:3]
    wait_for(lambda: _status(client).get("trading_state") == "HALTED", 5, what="runner reports HALTED")
    return liq


def test_emergency_stop_button_halts_flattens_shows_banner_audits_and_resume_restores(console, page, redis_url):
    client = schema.connect(redis_url)
    try:
        _wait_trading(client)
        page.goto(console + "/")
        page.click("#shell-estop-open")
        page.wait_for_selector("#shell-estop-confirm", state="visible")
        page.fill("#shell-estop-reason", "browser e2e drill")
        assert safety.read_state(client) == safety.ACTIVE           # the dialog alone halts nothing
        page.click("#shell-estop-confirm")
        wait_for(lambda: safety.read_state(client) == safety.HALTED, 10, what="HALTED stored")
        meta = safety.read_meta(client)
        assert meta["source"] == "button" and meta["user"] == "admin"
        page.wait_for_selector("#shell-trading-banner", state="visible", timeout=10000)
        banner = page.inner_text("#shell-trading-banner")
        assert "TRADING HALTED" in banner and "browser e2e drill" in banner
        liq = _check_halted_and_flat(client, meta["ts"])
        halt = [a for a in emergency.recent_audit(client, 20) if a["action"] == "halt"][0]
        assert halt["user"] == "admin" and halt["source"] == "button"
        assert halt["reason"] == "browser e2e drill"
        assert set(halt["details"]["positions_to_liquidate"]) >= {o["symbol"] for o in liq["details"]["orders"]} - {""}
        assert any(a["severity"] == "critical" and "browser e2e drill" in a["message"]
                   for a in alerts.recent_alerts(client, 50))
        page.goto(console + "/latency")                                # the banner is on every page
        page.wait_for_selector("#shell-trading-banner", state="visible", timeout=10000)
        page.click("#shell-resume-open")
        page.wait_for_selector("#shell-resume-confirm", state="visible")
        page.click("#shell-resume-confirm")
        wait_for(lambda: safety.read_state(client) == safety.ACTIVE, 10, what="ACTIVE again")
        page.wait_for_selector("#shell-trading-banner", state="hidden", timeout=10000)
        resumed = time.time()
        wait_for(lambda: [o for o in _orders_since(client, resumed) if o["kind"] == "strategy"], 20,
                 what="strategy orders after the resume")
        assert not page.console_errors, page.console_errors
    finally:
        _ensure_active(client)


def _call(url: str, method: str, body: dict | None = None, token: str | None = API_TOKEN):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_http_api_halt_stops_the_running_pipeline_and_resume_restarts_it(console, redis_url):
    client = schema.connect(redis_url)
    try:
        _wait_trading(client)
        assert _call(console + "/api/trading/halt", "POST", {"reason": "x"}, token="wrong")[0] == 401
        assert _call(console + "/api/trading/halt", "POST", {"nope": 1})[0] == 400
        assert safety.read_state(client) == safety.ACTIVE
        code, body = _call(console + "/api/trading/halt", "POST", {"reason": "api e2e"})
        assert code == 200 and body["state"] == "HALTED"
        assert _call(console + "/api/trading/state", "GET")[1]["state"] == "HALTED"
        _check_halted_and_flat(client, safety.read_meta(client)["ts"])
        code, body = _call(console + "/api/trading/resume", "POST", {})
        assert code == 200 and body["changed"] and body["state"] == "ACTIVE"
        code, body = _call(console + "/api/trading/resume", "POST", {})
        assert code == 200 and not body["changed"] and "not halted" in body["message"]
    finally:
        _ensure_active(client)
