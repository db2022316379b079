"""Paper broker accounting, the trading gate, and persistence through a real Redis."""
from __future__ import annotations

import pytest
import redis

from core import schema
from core.broker import PaperBroker, TradingGate

SYMS = ["AAA", "BBB"]


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def active_gate(redis_client):
    gate = TradingGate()
    redis_client.set(schema.TRADING_STATE, "ACTIVE")
    gate.refresh(redis_client)
    return gate


def test_buy_fills_at_ask_sell_at_bid_and_round_trip_realizes_the_spread():
    b = PaperBroker(SYMS, 10_000.0)
    assert b.submit(0, +1, 10, bid=99.0, ask=101.0) == (1, 101.0)
    assert b.cash == pytest.approx(10_000 - 1010)
    assert b.submit(0, -1, 10, bid=104.0, ask=106.0) == (2, 104.0)
    assert b.realized_pnl == pytest.approx(30.0)           # (104 - 101) * 10
    assert b.positions["AAA"].qty == 0
    assert b.equity() == pytest.approx(10_030.0)


def test_cash_plus_positions_value_equals_equity_and_unrealized_is_mark_minus_cost():
    b = PaperBroker(SYMS, 50_000.0)
    b.submit(0, +1, 10, 99.0, 101.0)
    b.submit(1, -1, 5, 49.0, 51.0)
    b.mark(0, 110.0)
    b.mark(1, 45.0)
    assert b.positions_value() == pytest.approx(10 * 110 - 5 * 45)
    assert b.equity() == pytest.approx(b.cash + b.positions_value())
    assert b.unrealized_pnl() == pytest.approx(10 * (110 - 101) + (-5) * (45 - 49))
    acc = b.account()
    assert acc["equity"] == pytest.approx(b.initial_cash + acc["realized_pnl"] + acc["unrealized_pnl"])


def test_average_cost_on_adds_and_flip_through_zero_opens_at_fill_price():
    b = PaperBroker(SYMS, 1e6)
    b.submit(0, +1, 10, 99.0, 100.0)
    b.submit(0, +1, 30, 103.0, 104.0)
    assert b.positions["AAA"].avg_price == pytest.approx((10 * 100 + 30 * 104) / 40)
    b.submit(0, -1, 50, 110.0, 111.0)                       # close 40, open short 10
    pos = b.positions["AAA"]
    assert pos.qty == -10 and pos.avg_price == 110.0
    assert b.realized_pnl == pytest.approx(40 * (110 - 103.0))


def test_daily_pnl_is_equity_change_over_the_day():
    b = PaperBroker(SYMS, 1e4)
    b.submit(0, +1, 10, 99.0, 101.0)
    b.mark(0, 111.0)
    assert b.close_day(5, "2026-01-05") == pytest.approx(10 * (111 - 101))
    b.mark(0, 106.0)
    assert b.close_day(6, "2026-01-06") == pytest.approx(-50.0)
    assert b.sim_day == 7


def test_bad_orders_are_rejected_not_crashing():
    b = PaperBroker(SYMS, 1e4)
    assert b.submit(0, 2, 1, 99.0, 101.0) is None
    assert b.submit(0, 1, -1, 99.0, 101.0) is None
    assert b.submit(0, 1, 1, 102.0, 101.0) is None          # crossed quote
    assert b.rejected_total == 3 and b.orders_total == 0
    with pytest.raises(ValueError):
        PaperBroker(SYMS, 0.0)


def test_gate_halted_blocks_orders_then_active_allows(redis_client):
    gate = TradingGate()
    b = PaperBroker(SYMS, 1e4, gate=gate)
    redis_client.set(schema.TRADING_STATE, "HALTED")
    assert gate.refresh(redis_client) == "HALTED"
    assert b.submit(0, 1, 1, 99.0, 101.0) is None
    redis_client.set(schema.TRADING_STATE, "ACTIVE")
    assert gate.refresh(redis_client) == "ACTIVE"
    assert b.submit(0, 1, 1, 99.0, 101.0) is not None


def test_gate_fails_closed_when_redis_unreadable_or_state_unknown_or_stale(redis_client):
    clock = Clock()
    gate = TradingGate(max_age_s=2.0, clock=clock)
    assert not gate.allowed()                               # never read: closed
    assert gate.refresh(redis_client) == "ACTIVE"           # key absent: nobody halted
    assert gate.allowed()
    clock.t += 2.5                                          # refresher stopped: stale, closed
    assert not gate.allowed()
    dead = schema.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    assert gate.refresh(dead) == "UNKNOWN" and not gate.allowed()
    redis_client.set(schema.TRADING_STATE, "PAUSED?")
    assert gate.refresh(redis_client) == "HALTED" and not gate.allowed()


def test_persist_then_load_restores_account_positions_and_streams(redis_client):
    b = PaperBroker(SYMS, 1e5, gate=active_gate(redis_client))
    b.submit(0, 1, 10, 99.0, 101.0, sim_day=3)
    b.submit(1, -1, 4, 49.0, 51.0, sim_day=3)
    b.mark(0, 105.0)
    b.close_day(3, "2026-01-07")
    assert b.persist(redis_client) == 4                     # 2 orders + 2 fills
    assert b.pending() == 0
    assert redis_client.xlen(schema.BROKER_ORDERS) == 2 and redis_client.xlen(schema.BROKER_FILLS) == 2
    fill = redis_client.xrange(schema.BROKER_FILLS)[0][1]
    assert fill[b"price"] == b"101.0" and fill[b"symbol"] == b"AAA"
    daily = schema.read_series(redis_client, schema.PIPELINE_DAILY, 0)
    assert daily[0]["day"] == 3 and daily[0]["pnl"] == pytest.approx(10 * (105 - 101) - 4 * (50 - 49))

    restored = PaperBroker(SYMS, 1e5)
    assert restored.load(redis_client)
    assert restored.cash == pytest.approx(b.cash)
    assert restored.positions["AAA"].qty == 10 and restored.positions["BBB"].qty == -4
    assert restored.orders_total == 2 and restored.sim_day == 4
    assert restored.equity() == pytest.approx(b.equity())   # marks come back with the positions


def test_persist_failure_keeps_the_backlog_and_a_later_persist_ships_it(redis_client):
    b = PaperBroker(SYMS, 1e5)
    b.submit(0, 1, 1, 99.0, 101.0)
    dead = schema.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        b.persist(dead)
    assert b.pending() == 2
    b.submit(0, -1, 1, 99.0, 101.0)
    assert b.persist(redis_client) == 4 and b.pending() == 0
    assert redis_client.xlen(schema.BROKER_FILLS) == 2


def test_backlog_is_bounded_while_redis_is_down():
    from collections import deque
    b = PaperBroker(SYMS, 1e9)
    b._orders, b._fills = deque(maxlen=5), deque(maxlen=5)
    for _ in range(8):
        b.submit(0, 1, 1, 99.0, 101.0)
    assert b.pending() == 10 and b.dropped == 6


def test_load_returns_false_when_nothing_was_persisted(redis_client):
    assert PaperBroker(SYMS, 1.0).load(redis_client) is False
