"""RiskManager against a real Redis (its own database) and a real SQLite history: the paper
broker's own keys in, one risk document out."""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from core import alerts, history, risk, risk_manager, schema
from core.broker import PaperBroker
from core.market import FactorModel

DB = 13
SYMBOLS = 6


@pytest.fixture
def market(tmp_path):
    model = FactorModel.from_seed(SYMBOLS, 3)
    conn = history.connect(f"sqlite:///{tmp_path / 'risk.db'}")
    history.backfill(conn, model, 300, seed=3)
    yield model, conn
    conn.close()


def _book(client, model, conn, trades):
    """A paper broker that traded `trades` [(symbol index, side, qty)] at the last closes,
    persisted to Redis exactly as the pipeline runner does, with a few closed days."""
    closes = history.last_closes(conn)
    broker = PaperBroker(model.symbols, 1_000_000.0)
    for sym, side, qty in trades:
        px = closes[model.symbols[sym]]
        broker.submit(sym, side, qty, px * 0.9999, px * 1.0001)
    for day, move in enumerate([0.01, -0.02, 0.005]):
        for i, s in enumerate(model.symbols):
            broker.mark(i, closes[s] * (1 + move))
        broker.close_day(day, f"2024-01-0{day + 2}")
    broker.persist(client)
    return broker


def test_compute_reads_the_brokers_book_and_matches_the_risk_functions(own_db, market):
    model, conn = market
    broker = _book(own_db, model, conn, [(0, 1, 2000), (1, -1, 1500), (2, 1, 800)])
    result = risk_manager.compute(own_db, conn, lookback_days=250, mc_scenarios=5000, seed=1)
    assert result["n_positions"] == 3
    assert result["equity"] == pytest.approx(broker.equity())
    values = {p["symbol"]: p["value"] for p in result["positions"]}
    assert values[model.symbols[1]] < 0                       # the short
    # the historical figure equals core.risk on the same weighted returns
    R = risk_manager.asset_returns(conn, list(values), 250)
    w = np.array(list(values.values())) / result["equity"]
    row = next(r for r in result["var"] if (r["method"], r["confidence"]) == ("historical", 0.99))
    assert row["var_pct"] == pytest.approx(risk.value_at_risk(R @ w, 0.99))
    assert row["var_ccy"] == pytest.approx(row["var_pct"] * result["equity"])
    methods = {(r["method"], r["confidence"]) for r in result["var"]}
    assert methods == {(m, c) for m in risk.METHODS for c in (0.95, 0.99)}
    assert all(r["var_pct"] > 0 and r["cvar_pct"] >= r["var_pct"] * 0.99 for r in result["var"])
    # components are currency and sum to the parametric 95 % VaR in currency
    para = next(r for r in result["var"] if (r["method"], r["confidence"]) == ("parametric", 0.95))
    assert sum(p["component_var_ccy"] for p in result["positions"]) == pytest.approx(para["var_ccy"])
    assert result["concentration"]["effective_n"] > 1
    assert len(result["pnl"]["daily"]) == 3 and result["pnl"]["max_drawdown_pct"] > 0
    assert result["days_of_history"] == 250


def test_flat_book_gives_zero_var_and_no_positions(own_db, market):
    model, conn = market
    _book(own_db, model, conn, [])
    result = risk_manager.compute(own_db, conn, mc_scenarios=1000)
    assert result["n_positions"] == 0 and result["positions"] == []
    assert {r["var_pct"] for r in result["var"]} == {0.0}
    assert math.isnan(result["concentration"]["hhi"])


def test_no_broker_state_at_all_does_not_crash(own_db, market):
    _, conn = market
    result = risk_manager.compute(own_db, conn, mc_scenarios=1000)
    assert result["n_positions"] == 0 and math.isnan(result["equity"])
    risk_manager.store(own_db, result)
    assert risk_manager.latest(own_db)["equity"] is None       # NaN stored as JSON null


def test_malformed_positions_are_skipped_not_raised(own_db, market):
    model, conn = market
    _book(own_db, model, conn, [(0, 1, 100)])
    own_db.hset(schema.BROKER_POSITIONS, mapping={"BAD1": "{not json", "BAD2": '"a string"',
                                                  "BAD3": '{"qty": "x", "last_price": 1}'})
    result = risk_manager.compute(own_db, conn, mc_scenarios=1000)
    assert [p["symbol"] for p in result["positions"]] == [model.symbols[0]]


def test_outcomes_shipped_by_the_runner_come_back_in_order_and_bounded(own_db):
    pending = deque((i * 1e-5, i * 2e-5) for i in range(1500))
    pipe = own_db.pipeline()
    assert risk_manager.ship_outcomes(pipe, pending) == risk_manager.OUTCOMES_BATCH_MAX
    pipe.execute()
    assert not pending                                           # drained
    pending.extend((1.0, 2.0) for _ in range(3))
    pipe = own_db.pipeline()
    risk_manager.ship_outcomes(pipe, pending)
    pipe.execute()
    preds, real = risk_manager.read_outcomes(own_db, max_pairs=10_000)
    assert len(preds) == risk_manager.OUTCOMES_BATCH_MAX + 3
    assert preds[0] == pytest.approx(500e-5, rel=1e-6)           # the newest 1,000 of the first batch
    assert list(preds[-3:]) == [1.0, 1.0, 1.0] and real[-1] == 2.0
    assert len(risk_manager.read_outcomes(own_db, max_pairs=10)[0]) == 10


def test_run_once_stores_latest_and_history_and_alerts_on_low_model_confidence(own_db, market, settings):
    model, conn = market
    _book(own_db, model, conn, [(0, 1, 100)])
    rng = np.random.default_rng(0)
    pred = rng.normal(0, 1e-4, 3000)
    pairs = list(zip(pred, -pred + rng.normal(0, 1e-4, 3000)))      # a model that is wrong
    for start in range(0, 3000, 1000):                                # three seconds' batches
        pipe = own_db.pipeline()
        risk_manager.ship_outcomes(pipe, deque(pairs[start:start + 1000]))
        pipe.execute()
    result = risk_manager.run_once(own_db, conn, settings, now=1000.0)
    assert result["model"]["confidence"] == 0.0 and result["model"]["hit_rate"] < 0.5
    stored = risk_manager.latest(own_db)
    assert stored["ts"] == 1000.0 and stored["model"]["n"] == 3000
    assert risk_manager.risk_history(own_db, 0)[0]["var95"] == pytest.approx(
        next(r["var_pct"] for r in result["var"] if r["method"] == "historical" and r["confidence"] == 0.95))
    found = [a for a in alerts.recent_alerts(own_db) if a["source"] == "risk"]
    assert len(found) == 1 and "model confidence 0.00" in found[0]["message"]
    risk_manager.run_once(own_db, conn, settings, now=1005.0)     # deduplicated
    assert len([a for a in alerts.recent_alerts(own_db) if a["source"] == "risk"]) == 1


def test_pipeline_pairs_each_prediction_with_the_symbols_next_log_return():
    """The hot-path capture: each pair is (the prediction made at a symbol's tick, the log
    return from that tick to the symbol's next one), checked against an independent replay;
    and the pairs carry the model's real (weak) signal."""
    import datetime as dt
    from time import perf_counter_ns

    from core.events import EventBus, Tick
    from core.market import MarketSimulator
    from core.pipeline import FeatureState, Pipeline, fit_model

    model = FactorModel.from_seed(4, 21)
    w = fit_model(model, 21, rounds=1500)
    pipe = Pipeline(model, PaperBroker(model.symbols, 1e6), EventBus(), w, first_day=1,
                    first_date=dt.date(2026, 3, 6), record=lambda *_: None)
    block = MarketSimulator(model, 5).next_block(4000, 1 / 60_000)
    states = [FeatureState() for _ in range(model.n)]
    last_pred, expected = {}, []
    for i in range(len(block.sym)):
        sym, mid, imb = int(block.sym[i]), float(block.mid[i]), float(block.imbalance[i])
        f = states[sym].update(mid, imb)
        if f is not None:
            if sym in last_pred:
                expected.append((last_pred[sym], f[0]))
            last_pred[sym] = w[0] + sum(wk * fk for wk, fk in zip(w[1:], f))
        pipe.on_tick(Tick(i, sym, mid, float(block.bid[i]), float(block.ask[i]),
                          float(block.volume[i]), imb, float(block.index[i]), perf_counter_ns(), 0.0))
    pairs = list(pipe.outcomes)
    assert len(pairs) == len(expected) == len(block.sym) - 5 * model.n
    np.testing.assert_allclose(pairs, expected, rtol=1e-9, atol=1e-15)
    out = risk.model_risk(*np.array(pairs).T)
    assert out["ic"] > 0 and out["confidence"] > 0.9          # the imbalance edge is found


def test_history_reads_go_through_the_cache_and_a_new_day_is_a_new_key(own_db, market):
    from core.cache import CacheManager
    model, conn = market
    cache = CacheManager(own_db)
    first = risk_manager.read_closes(conn, model.symbols, cache)
    loads = cache.loads
    again = risk_manager.read_closes(conn, model.symbols, cache)
    np.testing.assert_array_equal(first, history.closes_matrix(conn, model.symbols))
    np.testing.assert_array_equal(first, again)
    stats = cache.get_cache_statistics()
    assert loads >= 1 and cache.loads == loads and stats["l1"]["hits"] == loads   # every block from L1
    # a day appended by the pipeline changes the key: the next read sees it, nothing stale
    day, date = history.last_day(conn)
    last = history.last_closes(conn)
    bars = {s: (c, c, c, c, 1000.0) for s, c in last.items()}
    history.append_day(conn, day + 1, history.next_business_day(date), bars)
    assert len(risk_manager.read_closes(conn, model.symbols, cache)) == len(first) + 1
    assert cache.loads - loads <= 2          # only the open day block (or a new one) was read
