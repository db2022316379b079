"""The daily closes shared by memory map: the mapping answers the risk and stress reads exactly
as the database does, only while it is current (else the database answers), is appended to
without a database read when a day closes, and two real reader processes share its pages."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from core import history, memory, risk_manager, shared_closes, stress
from core.market import FactorModel
from core.settings import get_settings
from tests.conftest import ROOT

SYMBOLS, SEED, DAYS = 5, 1, 60


def _history(path, symbols=SYMBOLS, seed=SEED, days=DAYS):
    conn = history.connect(f"sqlite:///{path}")
    history.backfill(conn, FactorModel.from_seed(symbols, seed), days, seed=seed)
    return conn


@pytest.fixture
def hist(tmp_path):
    conn = _history(tmp_path / "h.db")
    yield conn, tmp_path / "var", list(FactorModel.from_seed(SYMBOLS, SEED).symbols)
    conn.close()


def _traced(conn):
    """The SQL statements `conn` runs from now on."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def _next_day(conn, scale=1.01, drop=()):
    day, date = history.last_day(conn)
    bars = {s: (c, c, c, c * scale, 1e6) for s, c in history.last_closes(conn).items() if s not in drop}
    history.append_day(conn, day + 1, history.next_business_day(date), bars)
    return day + 1, bars


def test_the_mapping_answers_exactly_what_the_database_does(hist):
    conn, var, symbols = hist
    assert shared_closes.rebuild(conn, var, keep=100) is not None
    for subset in (symbols, symbols[3:0:-1]):
        for rows in (None, 10, DAYS):
            expected = history.closes_matrix(conn, subset)
            expected = expected if rows is None else expected[-rows:]
            assert np.array_equal(shared_closes.read(conn, var, subset, rows), expected)
    sql = _traced(conn)
    got = risk_manager.read_closes(conn, symbols, last_rows=21, var_dir=var)
    conn.set_trace_callback(None)
    assert np.array_equal(got, history.closes_matrix(conn, symbols)[-21:]) and got.flags.writeable
    assert sql and not any("IN (" in s for s in sql)           # only the last day's rows were read


def test_a_closed_day_is_appended_without_a_database_read_and_a_lagging_mapping_is_never_used(hist):
    conn, var, symbols = hist
    shared_closes.rebuild(conn, var, keep=DAYS)
    day, bars = _next_day(conn)
    assert shared_closes.read(conn, var, symbols, 10) is None   # the history is a day ahead
    assert np.array_equal(risk_manager.read_closes(conn, symbols, last_rows=10, var_dir=var),
                          history.closes_matrix(conn, symbols)[-10:])
    sql = _traced(conn)
    shared_closes.append_day(conn, var, day, bars, keep=DAYS)
    conn.set_trace_callback(None)
    assert sql == []
    mapped = shared_closes.current_mapping(conn, var)
    assert mapped.meta["last_day"] == day and mapped.meta["first_day"] == 1 and len(mapped.array) == DAYS
    assert np.array_equal(shared_closes.read(conn, var, symbols, DAYS), history.closes_matrix(conn, symbols)[-DAYS:])


def test_a_day_missing_a_series_is_dropped_only_for_the_readers_of_that_series(hist):
    conn, var, symbols = hist
    shared_closes.rebuild(conn, var, keep=100)
    day, bars = _next_day(conn, drop=(symbols[0],))
    shared_closes.append_day(conn, var, day, bars, keep=100)   # other series: rebuilt from the database
    assert shared_closes.current_mapping(conn, var).meta["last_day"] == day
    assert shared_closes.read(conn, var, symbols, 5) is None   # symbols[0] has no bar on the last day
    for subset in (symbols, symbols[1:]):
        assert np.array_equal(risk_manager.read_closes(conn, subset, var_dir=var), history.closes_matrix(conn, subset))


def test_a_mapping_shorter_than_the_read_or_of_another_history_is_not_used(hist, tmp_path):
    conn, var, symbols = hist
    shared_closes.rebuild(conn, var, keep=20)
    assert shared_closes.read(conn, var, symbols, 20).shape == (20, SYMBOLS)
    assert shared_closes.read(conn, var, symbols, 21) is None and shared_closes.read(conn, var, symbols) is None
    assert np.array_equal(risk_manager.read_closes(conn, symbols, last_rows=30, var_dir=var),
                          history.closes_matrix(conn, symbols)[-30:])
    other = _history(tmp_path / "other.db", seed=SEED + 1)
    try:
        assert shared_closes.read(other, var, symbols, 5) is None   # same days, other prices
    finally:
        other.close()
    with pytest.raises(ValueError, match="keep"):
        shared_closes.rebuild(conn, var, keep=1)


def test_the_stress_universe_reads_the_same_returns_through_the_mapping(hist):
    conn, var, _ = hist
    settings = dataclasses.replace(get_settings(), var_dir=var, symbols=SYMBOLS, seed=SEED, risk_lookback_days=30)
    from_db = stress.Universe.from_history(conn, settings)
    shared_closes.rebuild(conn, var, keep=shared_closes.keep_days(settings))
    from_map = stress.Universe.from_history(conn, settings)
    assert from_map.returns.shape == (30, SYMBOLS) and np.array_equal(from_map.returns, from_db.returns)
    assert np.array_equal(from_map.last_price, from_db.last_price)


_RISK_READER = """
import sys
from core import history, risk_manager
conn = history.connect(sys.argv[1])
symbols = sys.argv[3].split(",")
closes = risk_manager.read_closes(conn, symbols, last_rows=int(sys.argv[4]), var_dir=sys.argv[2])
print(closes.shape[0], flush=True)
sys.stdin.readline()
"""


def test_two_risk_reader_processes_share_the_mapped_closes(tmp_path):
    """The product's read path (risk_manager.read_closes) in two real processes: both map the
    file, and its pages are theirs to share: each one's USS for it is a few pages at most."""
    conn = _history(tmp_path / "big.db", symbols=100, days=1500)
    var = tmp_path / "var"
    symbols = list(FactorModel.from_seed(100, SEED).symbols)
    shared_closes.rebuild(conn, var, keep=1500)
    conn.close()
    nbytes = memory.open_array(var, shared_closes.NAME).array.nbytes   # 101 series x 1500 days: 1.2 MB
    args = [sys.executable, "-c", _RISK_READER, f"sqlite:///{tmp_path / 'big.db'}", str(var), ",".join(symbols), "1000"]
    readers = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    try:
        assert [r.stdout.readline().strip() for r in readers] == ["1000", "1000"]
        usage = memory.mapped_usage(var, shared_closes.NAME, {r.pid: "worker" for r in readers})
    finally:
        for r in readers:
            r.communicate("\n", timeout=10)
    assert len(usage["readers"]) == 2
    for reader in usage["readers"]:
        assert reader["rss_bytes"] >= nbytes and reader["uss_bytes"] <= 16 * 1024
    assert usage["uss_saved_bytes"] >= 2 * nbytes - 32 * 1024


def test_keep_days_covers_the_backfill_and_the_risk_look_back():
    s = get_settings()
    assert shared_closes.keep_days(dataclasses.replace(s, backfill_days=504, risk_lookback_days=252)) == 504
    assert shared_closes.keep_days(dataclasses.replace(s, backfill_days=60, risk_lookback_days=252)) == 253

