"""LimitMonitor: validated config, pre-trade checks with reason codes, utilization rows."""
from __future__ import annotations

import math

import pytest

from core import limits, schema
from core.limits import LimitConfig, LimitMonitor

SOD = 1_000_000.0


def check(mon, held=0.0, qty=10.0, price=100.0, gross=0.0, net=0.0, equity=SOD, sod=SOD):
    return mon.check_order(held, qty, price, gross, net, equity, sod)


@pytest.mark.parametrize("field,value", [
    ("max_position_per_symbol", -1.0), ("max_total_position", 0.0), ("max_leverage", math.nan),
    ("max_portfolio_value", math.inf), ("max_daily_loss", "100"), ("max_daily_loss_fraction", 1.5),
    ("max_leverage", 5000.0), ("max_daily_loss", True)])
def test_config_rejects_negative_nan_and_out_of_range_values_with_the_field_name(field, value):
    with pytest.raises(ValueError, match=field):
        LimitConfig(**{field: value})


def test_config_is_frozen_and_scales_currency_limits_only():
    c = LimitConfig()
    with pytest.raises(Exception):
        c.max_leverage = 3.0
    s = c.scaled(2_000_000)
    assert s.max_position_per_symbol == 2 * c.max_position_per_symbol
    assert s.max_daily_loss_fraction == c.max_daily_loss_fraction and s.max_leverage == c.max_leverage
    with pytest.raises(ValueError):
        c.scaled(-1)


def test_order_within_every_limit_passes():
    assert check(LimitMonitor()) == (True, limits.OK)


def test_symbol_position_limit_rejects_an_order_that_would_exceed_it():
    mon = LimitMonitor(LimitConfig(max_position_per_symbol=50_000))
    assert check(mon, held=400, qty=100, price=100) == (True, limits.OK)            # 50,000: at the limit
    assert check(mon, held=400, qty=101, price=100) == (False, limits.REJECT_SYMBOL_POSITION)
    assert mon.rejections[limits.REJECT_SYMBOL_POSITION] == 1


def test_total_position_limit_counts_gross_exposure_after_the_order():
    mon = LimitMonitor(LimitConfig(max_total_position=100_000, max_position_per_symbol=None))
    assert check(mon, qty=100, price=100, gross=90_000) == (True, limits.OK)
    assert check(mon, qty=101, price=100, gross=90_000) == (False, limits.REJECT_TOTAL_POSITION)


def test_portfolio_value_limit_uses_net_exposure():
    mon = LimitMonitor(LimitConfig(max_portfolio_value=50_000, max_position_per_symbol=None))
    assert check(mon, qty=-100, price=100, gross=60_000, net=55_000) == (True, limits.OK)   # net 45k
    assert check(mon, qty=100, price=100, gross=60_000, net=45_000) == (False, limits.REJECT_PORTFOLIO_VALUE)


def test_daily_loss_limit_in_currency_and_as_fraction_the_tighter_binds():
    frac = LimitMonitor(LimitConfig(max_daily_loss_fraction=0.02))
    assert check(frac, equity=SOD - 19_999)[0]
    assert check(frac, equity=SOD - 20_000) == (False, limits.REJECT_DAILY_LOSS)
    both = LimitMonitor(LimitConfig(max_daily_loss=5_000, max_daily_loss_fraction=0.02))
    assert check(both, equity=SOD - 5_000) == (False, limits.REJECT_DAILY_LOSS)


def test_leverage_limit_is_gross_exposure_over_equity():
    mon = LimitMonitor(LimitConfig(max_leverage=1.0, max_total_position=None,
                                   max_position_per_symbol=None, max_portfolio_value=None))
    assert check(mon, qty=100, price=100, gross=490_000, equity=500_000, sod=500_000)[0]
    assert check(mon, qty=101, price=100, gross=490_000, equity=500_000,
                 sod=500_000) == (False, limits.REJECT_LEVERAGE)
    assert check(mon, equity=0.0, sod=1.0)[1] in (limits.REJECT_DAILY_LOSS, limits.REJECT_LEVERAGE)


def test_risk_reducing_order_passes_even_when_limits_are_breached():
    mon = LimitMonitor(LimitConfig(max_position_per_symbol=1_000, max_leverage=0.01))
    assert check(mon, held=500, qty=-200, price=100, gross=50_000, equity=SOD - 900_000) == (True, limits.OK)
    # crossing through zero is not reducing: the new short is checked
    assert check(mon, held=5, qty=-500, price=100)[1] == limits.REJECT_SYMBOL_POSITION


@pytest.mark.parametrize("bad", [dict(qty=0.0), dict(price=-1.0), dict(price=math.nan),
                                 dict(equity=math.inf), dict(held="x")])
def test_malformed_order_is_rejected_with_a_reason_not_an_exception(bad):
    assert check(LimitMonitor(), **bad) == (False, limits.REJECT_BAD_ORDER)


def test_utilization_rows_have_the_documented_shape_and_flag_breaches(redis_url):
    mon = LimitMonitor(LimitConfig(max_position_per_symbol=10_000, max_total_position=30_000,
                                   max_portfolio_value=100_000, max_daily_loss=1_000,
                                   max_daily_loss_fraction=None, max_leverage=1.0), clock=lambda: 42.0)
    exposures = {"AAA": 12_000.0, "BBB": -8_000.0, "CCC": 0.0}
    client = schema.connect(redis_url.rsplit("/", 1)[0] + "/13")
    client.flushdb()
    doc = mon.write_status(client, exposures, equity=9_500.0, day_start_equity=10_000.0)
    stored = schema.loads(client.get(schema.LIMITS_STATUS))
    assert stored == schema.loads(schema.dumps(doc)) and stored["ts"] == 42.0
    rows = {r["name"]: r for r in stored["limits"]}
    for r in stored["limits"]:
        assert set(r) == {"name", "kind", "symbol", "limit", "value", "utilization", "breached"}
    assert rows["position:AAA"]["breached"] and rows["position:AAA"]["utilization"] == pytest.approx(1.2)
    assert rows["position:AAA"]["symbol"] == "AAA" and rows["position:BBB"]["value"] == 8_000
    assert not rows["position:BBB"]["breached"]
    assert rows["total_position"]["value"] == 20_000 and rows["total_position"]["symbol"] is None
    assert rows["portfolio_value"]["value"] == 4_000
    assert rows["daily_loss"]["value"] == 500 and rows["daily_loss"]["utilization"] == 0.5
    assert rows["leverage"]["value"] == pytest.approx(20_000 / 9_500) and rows["leverage"]["breached"]
    client.flushdb()


def test_paper_broker_runs_the_pre_trade_check_and_reports_the_reason():
    from core.broker import PaperBroker, TradingGate
    gate = TradingGate(max_age_s=60)
    gate.apply("ACTIVE")
    mon = LimitMonitor(LimitConfig(max_position_per_symbol=1_000))
    b = PaperBroker(["AAA", "BBB"], 1e6, gate=gate, limits=mon)
    assert b.submit(0, 1, 9, 99, 101) is not None                  # 909 at the ask: within
    assert b.submit(0, 1, 1, 99, 101) is None                      # 1,010: over the symbol limit
    assert b.last_reject == limits.REJECT_SYMBOL_POSITION and b.limit_rejects == 1
    assert b.position_qty(0) == 9
    assert b.submit(0, -1, 5, 99, 101) is not None                 # reducing always passes
    assert b.account()["limit_rejects"] == 1
