"""Simulator statistics and the SQLite daily-bar history."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from core import history
from core.market import (INDEX_SYMBOL, KAPPA, FactorModel, MarketSimulator, daily_bars,
                         symbol_names)

DT = 1.0 / 60_000          # the default 1,000 ticks/s and 60 s per simulated day


@pytest.fixture(scope="module")
def model():
    return FactorModel.from_seed(20, 11)


@pytest.fixture(scope="module")
def block(model):
    return MarketSimulator(model, 11).next_block(6000, DT)


def _per_symbol(block, model, name):
    return getattr(block, name).reshape(-1, model.n)


def test_betas_recovered_by_regression_of_returns_on_index_moves(model, block):
    r, x = _per_symbol(block, model, "log_return"), _per_symbol(block, model, "index_move")
    imb = _per_symbol(block, model, "imbalance")
    for j in range(model.n):
        X = np.column_stack([np.ones(len(r) - 1), x[1:, j], imb[:-1, j]])
        beta = np.linalg.lstsq(X, r[1:, j], rcond=None)[0][1]
        assert abs(beta - model.betas[j]) < 0.15, (j, beta, model.betas[j])


def test_next_return_loads_on_previous_imbalance_with_the_documented_kappa(model, block):
    r, x = _per_symbol(block, model, "log_return"), _per_symbol(block, model, "index_move")
    imb = _per_symbol(block, model, "imbalance")
    sigma = model.idio_vol * np.sqrt(model.n * DT)
    idio = (r[1:] - model.betas * x[1:]) / sigma          # in idiosyncratic sigmas
    prev = imb[:-1]
    kappa = float(np.sum(idio * prev) / np.sum(prev * prev))
    assert abs(kappa - KAPPA) < 0.03
    # and it is weak: it explains about half a percent of the idiosyncratic variance
    r2 = 1 - np.var(idio - kappa * prev) / np.var(idio)
    assert 0.002 < r2 < 0.02


def test_quotes_have_positive_spreads_and_volume(block):
    assert np.all(block.ask > block.mid) and np.all(block.mid > block.bid) and np.all(block.bid > 0)
    assert np.all(block.volume >= 1)
    assert np.all(np.abs(block.imbalance) < 1)


def test_same_seed_same_ticks_other_seed_other_ticks(model):
    a = MarketSimulator(model, 3).next_block(50, DT)
    b = MarketSimulator(model, 3).next_block(50, DT)
    c = MarketSimulator(model, 4).next_block(50, DT)
    assert np.array_equal(a.mid, b.mid) and np.array_equal(a.volume, b.volume)
    assert not np.allclose(a.mid, c.mid)
    assert np.array_equal(FactorModel.from_seed(20, 11).betas, model.betas)


def test_ticks_round_robin_over_the_universe(model):
    b = MarketSimulator(model, 1).next_block(3, DT)
    assert b.sym.tolist() == list(range(model.n)) * 3


def test_bad_simulator_input_raises_clear_errors(model):
    with pytest.raises(ValueError, match="n_symbols"):
        FactorModel.from_seed(0, 1)
    with pytest.raises(ValueError, match="dt_days"):
        MarketSimulator(model, 1).next_block(10, 0.0)
    with pytest.raises(ValueError, match="start_prices"):
        MarketSimulator(model, 1, start_prices=[1.0, 2.0])


def test_daily_bars_are_consistent_ohlcv(model):
    bars = daily_bars(model, 30, 5)
    assert bars["close"].shape == (30, model.n + 1)
    assert np.all(bars["high"] >= np.maximum(bars["open"], bars["close"]))
    assert np.all(bars["low"] <= np.minimum(bars["open"], bars["close"]))
    assert np.all(bars["volume"] > 0)
    np.testing.assert_allclose(bars["open"][1:], bars["close"][:-1])
    # the index column is the index, and symbols co-move with it through their betas
    rets = np.diff(np.log(bars["close"]), axis=0)
    assert np.corrcoef(rets[:, :-1].mean(axis=1), rets[:, -1])[0, 1] > 0.5


def test_backfill_writes_days_times_series_rows_once(tmp_path, model):
    conn = history.connect(f"sqlite:///{tmp_path / 'db' / 'console.db'}")
    added = history.backfill(conn, model, 40, seed=5, today=dt.date(2026, 1, 5))
    assert added == 40 * (model.n + 1)
    assert history.backfill(conn, model, 40, seed=5) == 0          # idempotent
    count, days, syms = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT day), COUNT(DISTINCT symbol) FROM daily_bars").fetchone()
    assert (count, days, syms) == (40 * (model.n + 1), 40, model.n + 1)
    day, date = history.last_day(conn)
    assert day == 39 and date == dt.date(2026, 1, 2)             # last weekday before the 5th
    dates = [r[0] for r in conn.execute("SELECT DISTINCT date FROM daily_bars")]
    assert all(dt.date.fromisoformat(d).weekday() < 5 for d in dates)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(daily_bars)")}
    assert "daily_bars_day" in indexes
    closes = history.closes_matrix(conn, list(symbol_names(model.n)) + [INDEX_SYMBOL])
    assert closes.shape == (40, model.n + 1) and np.all(closes > 0)


def test_append_day_adds_bars_and_trade_summary(tmp_path, model):
    conn = history.connect(f"sqlite:///{tmp_path / 'c.db'}")
    history.backfill(conn, model, 30, seed=5)
    day, date = history.last_day(conn)
    nxt = history.next_business_day(date)
    history.append_day(conn, day + 1, nxt, {"SYM00": (1, 2, 0.5, 1.5, 100)},
                       {"orders": 3, "fills": 3, "daily_pnl": 12.5, "equity": 1000.0})
    assert history.last_day(conn) == (day + 1, nxt)
    assert history.last_closes(conn) == {"SYM00": 1.5}
    assert conn.execute("SELECT orders, daily_pnl FROM daily_trades").fetchall() == [(3, 12.5)]


def test_unreachable_postgres_or_unknown_scheme_is_a_clear_error():
    from tests.conftest import free_port
    url = f"postgresql://user:secret@127.0.0.1:{free_port()}/console"     # nothing listens there
    with pytest.raises(history.DB_ERRORS, match="cannot connect to postgresql://user:\\*\\*\\*@") as err:
        history.connect(url)
    assert "secret" not in str(err.value)
    with pytest.raises(ValueError, match="sqlite"):
        history.connect("mysql://x")
