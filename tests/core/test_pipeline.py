"""The pipeline stages: features, the fitted model, orders, timing, fail-closed, the feed."""
from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from time import perf_counter_ns

import numpy as np
import pytest

from core import schema
from core.broker import PaperBroker, TradingGate
from core.events import DayClose, EventBus, Fill, Order, Tick
from core.market import INDEX_SYMBOL, FactorModel, MarketSimulator, fit_stream
from core.pipeline import WINDOW, Feed, FeatureState, Pipeline, fit_model

STAGES = {"data_processing", "model_inference", "signal_generation", "order_execution",
          "total_pipeline"}


class Recorded(defaultdict):
    def __init__(self):
        super().__init__(list)

    def __call__(self, stage, ns):
        self[stage].append(ns)


@pytest.fixture(scope="module")
def model():
    return FactorModel.from_seed(10, 21)


@pytest.fixture(scope="module")
def weights(model):
    return fit_model(model, 21)


def make(model, weights, gate=None, record=None, bus=None):
    bus = bus or EventBus()
    broker = PaperBroker(model.symbols, 1e6, gate=gate)
    pipe = Pipeline(model, broker, bus, weights, first_day=100, first_date=dt.date(2026, 3, 6),
                    record=Recorded() if record is None else record)
    bus.subscribe(Tick, pipe.on_tick, name="pipeline")
    return pipe, broker, bus


def feed_ticks(bus, model, n, seed=5):
    """Publish n ticks of a fresh simulator, scheduled 'now' (no queueing)."""
    block = MarketSimulator(model, seed).next_block(-(-n // model.n), 1 / 60_000)
    for i in range(n):
        bus.publish(Tick(i, int(block.sym[i]), float(block.mid[i]), float(block.bid[i]),
                         float(block.ask[i]), float(block.volume[i]), float(block.imbalance[i]),
                         float(block.index[i]), perf_counter_ns(), 0.0))


def allowing_gate(redis_client, state="ACTIVE"):
    gate = TradingGate()
    redis_client.set(schema.TRADING_STATE, state)
    gate.refresh(redis_client)
    return gate


def test_features_match_a_numpy_reference_over_the_window():
    rng = np.random.default_rng(0)
    mids = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 200)))
    state = FeatureState()
    for i, m in enumerate(mids):
        feats = state.update(float(m), 0.25)
    rets = np.diff(np.log(mids))[-WINDOW:]
    r, mean, z, imb = feats
    assert r == pytest.approx(rets[-1]) and mean == pytest.approx(rets.mean())
    assert z == pytest.approx((rets[-1] - rets.mean()) / rets.std()) and imb == 0.25


def test_fitted_model_finds_the_embedded_imbalance_effect_out_of_sample(model, weights):
    assert weights[4] > 0                                     # loading on imbalance
    block = fit_stream(model, 99).next_block(3000, 1 / 60_000)  # another seed: out of sample
    states, last_pred, preds, outcomes = [FeatureState() for _ in range(model.n)], {}, [], []
    for s, m, imb in zip(block.sym.tolist(), block.mid.tolist(), block.imbalance.tolist()):
        f = states[s].update(m, imb)
        if f is None:
            continue
        if s in last_pred:
            preds.append(last_pred[s])
            outcomes.append(f[0])
        last_pred[s] = weights[0] + float(np.dot(weights[1:], f))
    # the embedded effect allows a correlation of ~0.065; 0.03 is 5 standard errors above zero
    assert np.corrcoef(preds, outcomes)[0, 1] > 0.03


def test_pipeline_produces_orders_and_records_every_stage(redis_client, model, weights):
    rec, bus, orders, fills = Recorded(), EventBus(), [], []
    bus.subscribe(Order, orders.append, name="orders")
    bus.subscribe(Fill, fills.append, name="fills")
    pipe, broker, bus = make(model, weights, gate=allowing_gate(redis_client), record=rec, bus=bus)
    feed_ticks(bus, model, 3000)
    assert pipe.orders_total > 10 and broker.orders_total == pipe.orders_total
    assert len(orders) == len(fills) == pipe.orders_total
    assert set(rec) == STAGES
    assert len(rec["total_pipeline"]) == 3000 == len(rec["data_processing"])
    assert len(rec["order_execution"]) == pipe.orders_total
    assert all(ns >= 0 for v in rec.values() for ns in v)
    for f in fills:                                           # every fill at the quote's side
        assert f.price > 0 and f.side in (1, -1)
    assert broker.equity() == pytest.approx(broker.cash + broker.positions_value())


def test_total_latency_counts_the_wait_since_the_scheduled_time(model, weights):
    rec = Recorded()
    pipe, _, bus = make(model, weights, record=rec)
    bus.publish(Tick(0, 0, 100.0, 99.99, 100.01, 1.0, 0.0, 1e3, perf_counter_ns() - 5_000_000, 0.0))
    assert rec["total_pipeline"][0] >= 5_000_000
    assert rec["data_processing"][0] < 5_000_000
    assert pipe.late_ticks == 1


@pytest.mark.parametrize("state", ["HALTED", "UNREADABLE"])
def test_no_orders_when_trading_is_halted_or_state_unreadable(redis_client, model, weights, state):
    if state == "HALTED":
        gate = allowing_gate(redis_client, "HALTED")
    else:
        gate = TradingGate()
        gate.refresh(schema.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))
    rec = Recorded()
    pipe, broker, bus = make(model, weights, gate=gate, record=rec)
    feed_ticks(bus, model, 2000)
    assert broker.orders_total == 0 and pipe.orders_total == 0
    assert broker.rejected_total > 0                          # it wanted to trade, the gate said no
    assert len(rec["total_pipeline"]) == 2000                 # decisions are still timed


def test_close_day_publishes_bars_for_every_symbol_and_the_index(model, weights):
    pipe, broker, bus = make(model, weights)
    closes = []
    bus.subscribe(DayClose, closes.append, name="days")
    feed_ticks(bus, model, 200)
    ev = pipe.close_day()
    assert closes == [ev] and ev.day == 100 and ev.date == "2026-03-06"
    assert set(ev.bars) == set(model.symbols) | {INDEX_SYMBOL}
    for o, h, lo, c, v in ev.bars.values():
        assert lo <= min(o, c) <= max(o, c) <= h and v > 0
    assert pipe.sim_day == 101 and pipe.sim_date == dt.date(2026, 3, 9)   # Friday -> Monday


def test_feed_emits_scheduled_ticks_in_order_and_rolls_days(model):
    bus, ticks, days = EventBus(), [], []
    bus.subscribe(Tick, ticks.append, name="collect")
    feed = Feed(MarketSimulator(model, 1), bus, tick_rate=20_000, sim_day_seconds=0.02,
                on_day_end=lambda: days.append(len(ticks)))
    feed.run(max_ticks=2000)                                  # 0.1 s of scheduled time
    assert [t.seq for t in ticks] == list(range(2000))
    gaps = np.diff([t.sched_ns for t in ticks])
    assert np.all(gaps == 50_000)                             # open loop: the schedule never slips
    assert 3 <= len(days) <= 5
    assert ticks[-1].sim_time == pytest.approx(1999 * 50e-6 / 0.02)
    with pytest.raises(ValueError, match="tick_rate"):
        feed.set_rate(math.nan)


def test_feed_far_behind_schedule_drops_the_backlog_and_pauses_sim_time(model, monkeypatch):
    import time as _time
    import core.pipeline as pipeline_mod
    monkeypatch.setattr(pipeline_mod, "MAX_BEHIND_S", 0.05)
    bus, ticks = EventBus(), []

    def slow_first(t):
        ticks.append(t)
        if t.seq == 0:
            _time.sleep(0.2)                                  # a 200 ms stall at 1,000 ticks/s

    bus.subscribe(Tick, slow_first, name="slow")
    feed = Feed(MarketSimulator(model, 1), bus, tick_rate=1000, sim_day_seconds=10.0)
    feed.run(max_ticks=100)
    assert feed.skipped_ticks >= 100                          # ~150 ticks past the 50 ms limit
    gaps = np.diff([t.sched_ns for t in ticks])
    assert gaps.max() >= 100 * 1_000_000                      # the jump over the dropped ticks
    # simulated time only counts ticks that were emitted (99 periods), not the dropped gap
    assert ticks[-1].sim_time * 10.0 < (99 + 60) * 1e-3
