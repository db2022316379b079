"""EmergencyStop: halt persisted + published + alerted + audited; resume and its no-op;
the Liquidator's reduce-only, paced flattening and its audit report."""
from __future__ import annotations

import json

import pytest

from core import alerts, emergency, safety, schema
from core.broker import PaperBroker, TradingGate
from core.emergency import Liquidator

DB = 12


@pytest.fixture
def client(own_db):
    return own_db


def test_emergency_stop_persists_publishes_alerts_and_audits(client):
    client.hset(schema.BROKER_POSITIONS, mapping={
        "AAA": schema.dumps({"symbol": "AAA", "qty": 5.0}), "BBB": schema.dumps({"symbol": "BBB", "qty": 0.0})})
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(schema.TRADING_EVENTS)
    pubsub.get_message(timeout=0.5)
    r = emergency.emergency_stop(client, "fat finger", "carol", "cli", clock=lambda: 123.0)
    assert r["changed"] and r["from_state"] == "ACTIVE"
    assert safety.read_state(client) == "HALTED"
    msg = pubsub.get_message(timeout=2.0)
    assert json.loads(msg["data"])["to_state"] == "HALTED"
    audit = emergency.recent_audit(client, 5)[0]
    assert audit["action"] == "halt" and audit["user"] == "carol" and audit["source"] == "cli"
    assert audit["reason"] == "fat finger" and audit["ts"] == 123.0
    assert audit["details"]["positions_to_liquidate"] == {"AAA": 5.0}
    crit = [a for a in alerts.recent_alerts(client) if a["severity"] == "critical"]
    assert crit and "carol" in crit[0]["message"] and "fat finger" in crit[0]["message"]


def test_emergency_stop_over_a_rule_halt_takes_ownership_so_it_never_auto_resumes(client):
    safety.transition(client, "HALTED", "drawdown", "rule:drawdown")
    r = emergency.emergency_stop(client, "operator confirms", "dave", "button")
    assert r["changed"] and safety.read_meta(client)["source"] == "button"


def test_resume_when_not_halted_is_a_no_op_with_a_message(client):
    r = emergency.resume_trading(client, "erin", "api")
    assert not r["changed"] and "not halted" in r["message"]
    assert client.xlen(schema.TRADING_HISTORY) == 0 and client.xlen(schema.AUDIT) == 0


def test_resume_after_halt_returns_to_active_and_is_audited(client):
    emergency.emergency_stop(client, "test", "erin", "api")
    r = emergency.resume_trading(client, "erin", "api")
    assert r["changed"] and r["from_state"] == "HALTED" and safety.read_state(client) == "ACTIVE"
    assert [a["action"] for a in emergency.recent_audit(client, 5)] == ["resume", "halt"]


def test_bad_reason_raises_and_changes_nothing(client):
    with pytest.raises(ValueError):
        emergency.emergency_stop(client, "  ", "x", "api")
    assert client.get(schema.TRADING_STATE) is None


class StepClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_liquidator_flattens_reduce_only_at_live_quotes_paced():
    gate = TradingGate(max_age_s=60)
    gate.apply("ACTIVE")
    broker = PaperBroker(["AAA", "BBB", "CCC"], 1e6, gate=gate)
    broker.submit(0, 1, 10, 99, 101)
    broker.submit(1, -1, 4, 49, 51)
    gate.apply("HALTED")
    clock = StepClock()
    liq = Liquidator(broker, min_interval_s=0.01, clock=clock)
    liq.start()
    assert liq.active and liq.report() is None
    assert liq.on_quote(0, 100, 102)                 # sells 10 at the bid
    assert not liq.on_quote(1, 50, 52)               # paced: same instant, refused
    clock.t = 0.02
    assert liq.on_quote(1, 50, 52)                   # buys 4 at the ask
    assert broker.flat() and not liq.active
    report = liq.report()
    assert [(o["symbol"], o["side"], o["qty"], o["price"]) for o in report["orders"]] == [
        ("AAA", -1, 10, 100), ("BBB", 1, 4, 52)]
    assert report["duration_ms"] == pytest.approx(20.0) and liq.report() is None
    assert broker.liquidation_orders == 2
    assert broker.submit(2, 1, 1, 9, 11) is None      # strategy orders stay blocked


def test_liquidation_orders_are_tagged_in_the_order_stream(client):
    gate = TradingGate(max_age_s=60)
    gate.apply("ACTIVE")
    broker = PaperBroker(["AAA"], 1e6, gate=gate)
    broker.submit(0, 1, 3, 99, 101)
    gate.apply("HALTED")
    liq = Liquidator(broker, min_interval_s=0)
    liq.start()
    liq.on_quote(0, 99, 101)
    broker.persist(client)
    kinds = [f[b"kind"] for _, f in client.xrange(schema.BROKER_ORDERS)]
    assert kinds == [b"strategy", b"liquidation"]


# ---- the pipeline's order path under each state (real model, simulated ticks) ---------
from tests.core.test_pipeline import feed_ticks, make, model, weights  # noqa: E402,F401


def test_pipeline_in_reducing_only_shrinks_positions_and_when_halted_liquidates_to_flat(model, weights):
    gate = TradingGate(max_age_s=60)
    gate.apply("ACTIVE")
    pipe, broker, bus = make(model, weights, gate=gate)
    feed_ticks(bus, model, 3000, seed=5)
    before = {s: q for s, q in broker.open_positions().items()}
    assert before
    gate.apply("REDUCING")
    orders0 = broker.orders_total
    feed_ticks(bus, model, 200, seed=6)
    after = broker.open_positions()
    assert after and set(after) <= set(before)                                   # nothing new opened
    assert all(abs(q) <= abs(before[s]) and q * before[s] > 0 for s, q in after.items())
    assert broker.orders_total > orders0                               # it did close some
    gate.apply("HALTED")
    pipe.liquidator = liq = Liquidator(broker, min_interval_s=0)
    liq.start()
    strategy0 = broker.orders_total - broker.liquidation_orders
    feed_ticks(bus, model, 500, seed=7)
    assert broker.flat() and not liq.active and liq.report()["orders"]
    assert broker.orders_total - broker.liquidation_orders == strategy0   # no strategy order
