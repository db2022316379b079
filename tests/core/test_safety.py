"""Trading states and transitions (atomic write + history + pub/sub), the gate's behaviour in
each state, and the SafetyController's rules, actions and recovery with a driven clock."""
from __future__ import annotations

import json
import time

import pytest

from core import alerts, safety, schema
from core.broker import PaperBroker, TradingGate
from core.safety import ACTIVE, HALTED, REDUCING, RuleInputs, SafetyConfig, SafetyController

DB = 14


@pytest.fixture
def client(own_db):
    return own_db


def next_message(pubsub, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.1)
        if msg is not None:
            return msg
    raise AssertionError("no message published")


class Clock:
    def __init__(self, t=1_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.mark.parametrize("path", [
    [REDUCING, HALTED, ACTIVE], [HALTED, REDUCING, ACTIVE], [REDUCING, ACTIVE, HALTED, ACTIVE]])
def test_every_transition_is_stored_recorded_in_history_and_published(client, path):
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(schema.TRADING_EVENTS)
    prev = ACTIVE
    assert safety.read_state(client) == ACTIVE               # absent: nobody halted trading
    for i, state in enumerate(path):
        r = safety.transition(client, state, f"step {i}", "test", user="alice", clock=lambda: 10.0 + i)
        assert r["changed"] and r["from_state"] == prev and r["to_state"] == state
        assert safety.read_state(client) == state
        meta = safety.read_meta(client)
        assert meta["source"] == "test" and meta["user"] == "alice" and meta["state"] == state
        event = json.loads(next_message(pubsub)["data"])
        assert event["from_state"] == prev and event["to_state"] == state and event["reason"] == f"step {i}"
        prev = state
    hist = list(reversed(safety.history(client, 50)))
    assert [(h["from_state"], h["to_state"]) for h in hist] == list(zip([ACTIVE] + path[:-1], path))
    assert {h["user"] for h in hist} == {"alice"} and hist[0]["ts"] == 10.0
    assert set(hist[0]) >= {"ts", "from_state", "to_state", "reason", "source", "user"}


def test_transition_to_the_same_state_is_a_no_op_unless_forced(client):
    safety.transition(client, HALTED, "rule", "rule:drawdown")
    assert not safety.transition(client, HALTED, "again", "rule:drawdown")["changed"]
    assert safety.transition(client, HALTED, "button", "button", force=True)["changed"]
    assert safety.read_meta(client)["source"] == "button"
    assert client.xlen(schema.TRADING_HISTORY) == 2


def test_transition_guards_require_from_and_require_source(client):
    assert not safety.transition(client, ACTIVE, "resume", "api", require_from=(HALTED,))["changed"]
    safety.transition(client, HALTED, "manual", "button")
    auto = safety.transition(client, ACTIVE, "auto", "safety", require_source="rule:latency")
    assert not auto["changed"] and safety.read_state(client) == HALTED


@pytest.mark.parametrize("bad", [dict(to_state="PAUSED"), dict(reason=""), dict(source=" "),
                                 dict(reason="x" * 600), dict(user=None)])
def test_transition_rejects_bad_arguments(client, bad):
    args = {**dict(to_state=HALTED, reason="r", source="s", user="u"), **bad}
    with pytest.raises(ValueError):
        safety.transition(client, **args)
    assert client.get(schema.TRADING_STATE) is None


def test_unknown_stored_state_reads_as_halted(client):
    client.set(schema.TRADING_STATE, "BOGUS")
    assert safety.read_state(client) == HALTED


def _book():
    gate = TradingGate(max_age_s=60)
    broker = PaperBroker(["AAA", "BBB"], 1e6, gate=gate)
    return gate, broker


def test_gate_in_each_state_lets_through_exactly_what_it_should():
    gate, b = _book()
    gate.apply(ACTIVE)
    assert b.submit(0, 1, 10, 99, 101) is not None                     # opens a long
    gate.apply(REDUCING)
    assert b.submit(0, 1, 1, 99, 101) is None                          # increasing: refused
    assert b.submit(1, -1, 1, 99, 101) is None                         # new position: refused
    assert b.submit(0, -1, 4, 99, 101) is not None                     # reducing: passes
    assert b.submit(0, -1, 20, 99, 101) is None                        # crossing zero: refused
    gate.apply(HALTED)
    assert b.submit(0, -1, 1, 99, 101) is None                         # even reducing strategy orders
    assert b.submit(0, 1, 1, 99, 101, liquidation=True) is None        # liquidation must reduce
    assert b.submit(0, -1, 6, 99, 101, liquidation=True) is not None   # the emergency stop's exit
    assert b.flat() and b.liquidation_orders == 1
    gate.apply(ACTIVE)
    assert b.submit(1, -1, 3, 99, 101) is not None


def test_gate_listener_sees_each_change_once():
    gate, _ = _book()
    seen = []
    gate.on_change(lambda old, new: seen.append((old, new)))
    for s in (ACTIVE, ACTIVE, REDUCING, HALTED, HALTED, ACTIVE):
        gate.apply(s)
    gate.fail("down")
    assert seen == [("UNKNOWN", ACTIVE), (ACTIVE, REDUCING), (REDUCING, HALTED), (HALTED, ACTIVE),
                    (ACTIVE, "UNKNOWN")]


# ---- rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(daily_loss_fraction=-0.1), dict(drawdown_fraction=1.2),
                                 dict(latency_threshold_ms=float("nan")), dict(latency_action="stop"),
                                 dict(latency_windows=0), dict(cooldown_s=0), dict(auto_resume_loss=1)])
def test_safety_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SafetyConfig(**bad)


def run(ctl, **inputs):
    return ctl.evaluate(RuleInputs(**inputs))


def test_halt_when_daily_loss_exceeded_then_rejects_orders_and_never_resumes_by_itself(client):
    clock = Clock()
    ctl = SafetyController(client, SafetyConfig(daily_loss_fraction=0.05, cooldown_s=5), clock)
    assert run(ctl, equity=960_000, day_start_equity=1_000_000)["transition"] is None
    rep = run(ctl, equity=949_000, day_start_equity=1_000_000)
    assert rep["state"] == HALTED and rep["transition"]["changed"]
    assert safety.read_meta(client)["source"] == "rule:daily_loss"
    gate = TradingGate()
    gate.refresh(client)
    assert not gate.permits(reducing=False)
    assert any(a["severity"] == "critical" and "HALTED" in a["message"]
               for a in alerts.recent_alerts(client))
    for _ in range(5):                                     # normal again, long past the cool-down
        clock.t += 10
        run(ctl, equity=1_000_000, day_start_equity=1_000_000)
    assert safety.read_state(client) == HALTED             # loss rules: auto-resume off by default


def test_drawdown_from_the_peak_halts(client):
    clock = Clock()
    ctl = SafetyController(client, SafetyConfig(drawdown_fraction=0.1, daily_loss_fraction=0.5), clock)
    run(ctl, equity=1_200_000, day_start_equity=1_200_000)
    run(ctl, equity=1_100_000, day_start_equity=1_100_000)          # 8.3% off the peak
    assert safety.read_state(client) == ACTIVE
    rep = run(ctl, equity=1_070_000, day_start_equity=1_070_000)    # 10.8% off the peak
    assert rep["state"] == HALTED and safety.read_meta(client)["source"] == "rule:drawdown"


def test_latency_over_threshold_for_n_windows_reduces_then_recovers_after_cool_down(client):
    clock = Clock()
    cfg = SafetyConfig(latency_threshold_ms=100, latency_windows=3, cooldown_s=30)
    ctl = SafetyController(client, cfg, clock)
    assert run(ctl, latency_p99_ms=[150, 90, 150])["state"] == ACTIVE      # not consecutive
    assert run(ctl, latency_p99_ms=[150, 150])["state"] == ACTIVE          # too few windows
    assert run(ctl, latency_p99_ms=[150, 120, 101])["state"] == REDUCING
    clock.t += 10
    run(ctl, latency_p99_ms=[50, 50, 50])
    clock.t += 25                                                           # 25 s normal: not yet
    assert run(ctl, latency_p99_ms=[50, 50, 50])["state"] == REDUCING
    clock.t += 6
    rep = run(ctl, latency_p99_ms=[50, 50, 50])
    assert rep["state"] == ACTIVE and rep["transition"]["from_state"] == REDUCING
    assert safety.history(client, 1)[0]["source"] == "safety"


def test_error_rate_halts_and_a_rule_halt_escalates_from_reducing(client):
    clock = Clock()
    ctl = SafetyController(client, SafetyConfig(max_errors_per_s=5), clock)
    safety.transition(client, REDUCING, "latency", "rule:latency")
    run(ctl, errors_total=100)                                   # first sample: no rate yet
    clock.t += 2
    assert run(ctl, errors_total=108)["state"] == REDUCING       # 4 errors/s
    clock.t += 2
    rep = run(ctl, errors_total=130)                             # 11 errors/s
    assert rep["state"] == HALTED and rep["transition"]["from_state"] == REDUCING


def test_a_manual_halt_is_not_resumed_by_rule_recovery(client):
    clock = Clock()
    ctl = SafetyController(client, SafetyConfig(cooldown_s=1), clock)
    run(ctl, latency_p99_ms=[500] * 5)
    assert safety.read_state(client) == REDUCING
    safety.transition(client, HALTED, "operator", "button", user="bob")
    for _ in range(3):
        clock.t += 5
        run(ctl, latency_p99_ms=[1] * 5)
    assert safety.read_state(client) == HALTED


def test_alert_action_only_alerts(client):
    clock = Clock()
    ctl = SafetyController(client, SafetyConfig(drawdown_fraction=0.01, drawdown_action="alert"), clock)
    run(ctl, equity=100.0, day_start_equity=100.0)
    rep = run(ctl, equity=98.0, day_start_equity=100.0)
    assert rep["state"] == ACTIVE and [r for r in rep["rules"] if r["name"] == "drawdown"][0]["breached"]
    assert any(a["source"] == "safety" and "drawdown" in a["message"] for a in alerts.recent_alerts(client))


def test_inputs_are_read_from_the_account_and_telemetry(client):
    now = 10_000
    client.hset(schema.BROKER_ACCOUNT, mapping={"equity": "900", "day_start_equity": "1000"})
    client.set(schema.TELE_ROLLUP_LAST, now - 1)
    for t in range(now - 5, now):
        client.zadd(schema.tele_sec_summary("total_pipeline"),
                    {schema.dumps({"t": t, "p99_us": 200_000.0}): t})
    client.hset(schema.BUS_STATS, mapping={"a": schema.dumps({"errors": 3}), "b": schema.dumps({"errors": 4})})
    inp = safety.gather_inputs(client, SafetyConfig(), now)
    assert inp.equity == 900 and inp.day_start_equity == 1000 and inp.errors_total == 7
    assert inp.latency_p99_ms == [200.0] * 5
    assert SafetyController(client, SafetyConfig(), lambda: now).evaluate()["state"] == HALTED


def test_evaluate_once_skips_while_another_evaluation_holds_the_lock(client):
    client.set(schema.SAFETY_LOCK, "other", px=5000)
    assert safety.evaluate_once(client) is None
    client.delete(schema.SAFETY_LOCK)
    assert safety.evaluate_once(client)["state"] == ACTIVE
    assert schema.loads(client.get(schema.SAFETY_STATUS))["state"] == ACTIVE
