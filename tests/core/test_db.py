"""Database tier: pooling, the database_query stage, plan analysis, index suggestions with
measured before/after, and rewrites that are applied only when results stay identical. Every
test runs on both databases: embedded SQLite and a private PostgreSQL server."""
from __future__ import annotations

import datetime as dt
import sys
import threading

import numpy as np
import pytest

from core import db, dialect, history
from core.market import FactorModel
from tests.conftest import DATABASE_KINDS, new_database_url

TODAY = dt.date(2026, 1, 5)       # fixed, so the year windows below hold the same share of rows


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def database(request, tmp_path_factory):
    url = new_database_url(request, request.param, tmp_path_factory.mktemp("db"))
    conn = history.connect(url)
    history.backfill(conn, FactorModel.from_seed(10, 3), 400, 3, today=TODAY)
    conn.close()
    d = db.Database(url, pool_size=3)
    yield d
    d.close()


def test_pool_never_opens_more_connections_than_its_size(database):
    seen = set()

    def work():
        for _ in range(20):
            with database.connection() as conn:
                seen.add(id(conn))
                conn.execute("SELECT count(*) FROM daily_bars").fetchone()
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= len(seen) <= 3


def test_queries_are_recorded_as_the_database_query_stage(database):
    from core.telemetry import RECORDER
    RECORDER.collect()
    for _ in range(5):
        database.query("SELECT 1")
    assert int(RECORDER.collect()["database_query"].counts.sum()) == 5


def test_postgres_url_without_driver_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)      # what `import psycopg` sees uninstalled
    with pytest.raises(NotImplementedError, match="psycopg is not installed"):
        db.Database("postgresql://u@localhost/x")
    with pytest.raises(ValueError, match="sqlite:///PATH or postgresql://"):
        db.Database("mysql://u@localhost/x")


def test_analyze_names_full_scans_temp_sorts_and_unused_indexes(database):
    found = db.analyze_query(database, "SELECT day FROM daily_bars WHERE close > ? ORDER BY close", (1.0,))
    assert found["full_scans"] == ["daily_bars"] and found["index_scans"] == []
    sort_marker = "TEMP B-TREE" if database.kind == dialect.SQLITE else "Sort"
    assert any(sort_marker in d for d in found["temp_btrees"])
    assert {"daily_bars_day", "daily_bars_date"} <= set(found["unused_indexes"])
    ok = db.analyze_query(database, "SELECT close FROM daily_bars WHERE day = 3")
    assert ok["full_scans"] == [] and "daily_bars_day" in ok["indexes_used"]


def test_applied_index_removes_the_full_scan_and_reports_timings(database):
    sql, params = "SELECT day, close FROM daily_bars WHERE volume > ? ORDER BY volume", (1e12,)
    [suggestion] = db.suggest_indexes(database, sql, params)
    assert suggestion["columns"] == ["volume"]
    assert db.analyze_query(database, sql, params)["full_scans"] == ["daily_bars"]
    out = db.apply_index(database, suggestion, sql, params, repeats=3)
    assert out["before_ms"] > 0 and out["after_ms"] > 0
    full_scan = "SCAN daily_bars" if database.kind == dialect.SQLITE else "Seq Scan on daily_bars"
    assert any(full_scan in p for p in out["plan_before"])
    after = db.analyze_query(database, sql, params)
    assert not after["full_scans"] and "ix_daily_bars_volume" in after["indexes_used"]
    assert db.suggest_indexes(database, sql, params) == []      # nothing left to propose
    with pytest.raises(ValueError):
        db.apply_index(database, {"ddl": "DROP TABLE daily_bars"}, sql)


def test_function_on_indexed_column_becomes_a_range_with_identical_results(database):
    year = database.query("SELECT substr(min(date), 1, 4) FROM daily_bars")[0][0]
    sql = (f"SELECT symbol, day, close FROM daily_bars WHERE {dialect.year_of('date', database.kind)} "
           f"= '{year}' ORDER BY symbol, day")
    out = db.rewrite_query(database, sql, repeats=2)
    assert out["applied"] and out["identical"] and "date >= " in out["rewritten"]
    assert database.query(out["rewritten"]) == database.query(sql) and len(database.query(sql)) > 0
    assert "daily_bars_date" not in db.analyze_query(database, sql)["indexes_used"]     # the function hides it
    assert "daily_bars_date" in db.analyze_query(database, out["rewritten"])["indexes_used"]
    assert any("daily_bars_date" in p for p in out["plan_after"])


def test_or_chain_becomes_in_and_select_star_is_narrowed_with_identical_results(database):
    syms = [r[0] for r in database.query("SELECT symbol FROM symbols ORDER BY symbol LIMIT 3")]
    sql = (f"SELECT * FROM daily_bars WHERE (symbol = '{syms[0]}' OR symbol = '{syms[1]}' OR "
           f"symbol = '{syms[2]}') AND day < 50")
    out = db.rewrite_query(database, sql, columns_used=["day", "close"], repeats=2)
    assert out["applied"], out
    assert out["rewritten"].startswith("SELECT day, close FROM") and "IN (" in out["rewritten"]
    assert sorted(database.query(out["rewritten"])) == sorted(
        (r[1], r[6]) for r in database.query(sql))
    assert out["before_ms"] is not None and out["after_ms"] is not None


def test_a_rewrite_that_would_change_results_is_never_applied(database):
    # substr(date,1,4) = '20' has a 4-character window but a 2-character literal: a prefix range
    # would match differently, so no rewrite is proposed; and a rule that does misfire is caught
    sql = "SELECT day FROM daily_bars WHERE substr(date, 1, 4) = '20'"
    assert db.rewrite_query(database, sql)["rewritten"] == sql
    original = db._rewrite_functions
    try:  # a broken rule (">=" into ">") must be rejected by the data check
        db._rewrite_functions = lambda s, idx, notes: notes.append("bad") or s.replace(">=", ">")
        mid = database.query("SELECT date FROM daily_bars ORDER BY date LIMIT 1 OFFSET 2000")[0][0]
        bad = f"SELECT day FROM daily_bars WHERE date >= '{mid}'"
        out = db.rewrite_query(database, bad)
        assert not out["identical"] and not out["applied"] and out["rewritten"] == bad
        assert out["rejected"] == bad.replace(">=", ">")
    finally:
        db._rewrite_functions = original


def test_bad_sql_gives_a_clear_error(database):
    with pytest.raises(ValueError, match="one statement"):
        db.analyze_query(database, "SELECT 1; DROP TABLE daily_bars")
    with pytest.raises(ValueError):
        db.rewrite_query(database, "")


# ---- range-chunked reads through the cache -----------------------------------------------
def _all_symbols(database):
    return [r[0] for r in database.query("SELECT DISTINCT symbol FROM daily_bars ORDER BY symbol")]


def test_windows_read_from_day_blocks_equal_direct_reads_and_share_their_blocks(database):
    from core.cache import CacheManager
    cm = CacheManager(None, record_telemetry=False)
    symbols, newest = _all_symbols(database), 399
    windows = [(s, d) for s in range(0, 380, 7) for d in (1, 20, 59)]
    for start, days in windows:
        got = db.cached_closes(cm, database.query, symbols, start, start + days - 1, newest, block_days=32)
        np.testing.assert_array_equal(got, db.read_closes_window(database, start, days))
    assert cm.loads == 400 // 32 + 1          # each block once, not each of the 162 windows once
    past = db.cached_closes(cm, database.query, symbols, 390, 450, newest, block_days=32)
    np.testing.assert_array_equal(past, db.read_closes_window(database, 390, 10))   # clipped to newest


def test_the_tail_skips_incomplete_days_like_closes_matrix_and_a_new_day_reloads_one_block(database_url):
    from core.cache import CacheManager
    conn = history.connect(database_url)
    model = FactorModel.from_seed(4, 5)
    history.backfill(conn, model, 200, 5)
    with conn:
        conn.execute("DELETE FROM daily_bars WHERE day = 150 AND symbol = ?", (model.symbols[1],))
        conn.execute("DELETE FROM daily_bars WHERE day BETWEEN 170 AND 175")
    query = lambda sql, p: conn.execute(sql, p).fetchall()   # noqa: E731
    cm = CacheManager(None, record_telemetry=False)
    symbols = list(model.symbols)
    full = history.closes_matrix(conn, symbols)
    for rows in (1, 30, 40, 60, 199, 10_000):      # 40: the gaps make the walk read further back
        np.testing.assert_array_equal(db.cached_closes_tail(cm, query, symbols, 199, rows, 16), full[-rows:])
    np.testing.assert_array_equal(db.cached_closes_tail(cm, query, symbols, 199, None, 16), full)
    loads = cm.loads
    day, date = history.last_day(conn)
    history.append_day(conn, 200, history.next_business_day(date),
                       {s: (1.0, 1.0, 1.0, 1.0, 1.0) for s in symbols})
    tail = db.cached_closes_tail(cm, query, symbols, 200, 60, 16)
    np.testing.assert_array_equal(tail, history.closes_matrix(conn, symbols)[-60:])
    assert cm.loads == loads + 1 and tail[-1].tolist() == [1.0] * 4    # the open block only
    conn.close()


def test_chunked_reads_reject_bad_ranges_with_a_message(database):
    from core.cache import CacheManager
    cm = CacheManager(None, record_telemetry=False)
    with pytest.raises(ValueError, match="rows must be a positive int"):
        db.cached_closes_tail(cm, database.query, ["S00"], 10, 0)
    with pytest.raises(ValueError, match="is after last"):
        db.cached_closes(cm, database.query, ["S00"], 20, 10, 399)
    with pytest.raises(ValueError, match="symbols must not be empty"):
        db.cached_closes(cm, database.query, [], 0, 10, 399)
    with pytest.raises(ValueError, match="index >= 0"):
        db.cached_closes(cm, database.query, ["S00"], -5, 10, 399)
