"""The console on PostgreSQL (DATABASE_URL=postgresql://...), against a private server: the
same history, the same risk figures and stress universe, and the database.analyze task, as on
SQLite; plus what only PostgreSQL has (placeholder translation, types and collation,
concurrent schema creation, transactions, broken connections). tests/core/test_db.py runs the
optimizer and the pool on both databases."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import numpy as np
import pytest

from core import db, dialect, history, risk_manager, schema, stress, stress_jobs
from core.cache import CacheManager
from core.market import FactorModel
from core.settings import get_settings
from tests.core.test_risk_manager import _book

DB = 13                      # the Redis database of the risk tests (never run at the same time)
TODAY = dt.date(2026, 1, 5)


@pytest.fixture
def pg_url(request, tmp_path):
    from tests.conftest import new_database_url
    return new_database_url(request, "postgresql", tmp_path)


def _twins(tmp_path, pg_url, model: FactorModel, days: int, seed: int):
    """The same backfill in a SQLite file and in PostgreSQL: (sqlite conn, postgres conn)."""
    conns = (history.connect(db.sqlite_url(tmp_path / "twin.db")), history.connect(pg_url))
    for conn in conns:
        assert history.backfill(conn, model, days, seed, today=TODAY) == days * (model.n + 1)
    return conns


def test_placeholders_become_pyformat_and_a_literal_percent_is_escaped():
    assert dialect.to_pyformat("SELECT a FROM t WHERE b = ? AND c IN (?,?)") == \
        "SELECT a FROM t WHERE b = %s AND c IN (%s,%s)"
    assert dialect.to_pyformat("SELECT '?', \"w?\", strftime('%Y', d) FROM t WHERE x LIKE 'a%' AND y = ?") == \
        "SELECT '?', \"w?\", strftime('%%Y', d) FROM t WHERE x LIKE 'a%%' AND y = %s"
    assert dialect.to_pyformat("SELECT 'it''s ?' WHERE 5 % 2 = ?") == "SELECT 'it''s ?' WHERE 5 %% 2 = %s"


def test_quoted_question_marks_and_percents_reach_postgres_as_text(pg_url):
    conn = history.connect(pg_url)
    try:
        assert conn.execute("SELECT '?', '100%', ? || '%'", ("a",)).fetchone() == ("?", "100%", "a%")
    finally:
        conn.close()


def test_history_on_postgres_holds_exactly_what_sqlite_holds(tmp_path, pg_url):
    model = FactorModel.from_seed(6, 4)
    lite, pg = _twins(tmp_path, pg_url, model, 120, 4)
    try:
        symbols = list(model.symbols)
        np.testing.assert_array_equal(history.closes_matrix(pg, symbols), history.closes_matrix(lite, symbols))
        assert history.last_day(pg) == history.last_day(lite) == (119, dt.date(2026, 1, 2))
        assert history.last_closes(pg) == history.last_closes(lite)
        read = "SELECT * FROM symbols ORDER BY symbol"
        assert pg.execute(read).fetchall() == lite.execute(read).fetchall()
        assert history.backfill(pg, model, 120, 4) == 0                        # idempotent
        # a live day with numpy scalars in its summary, then the same day again: replaced
        day = dt.date(2026, 1, 5)
        for conn in (lite, pg):
            history.append_day(conn, np.int64(120), day, {symbols[0]: (1, 2, 0.5, 1.5, 10)},
                               {"orders": np.int64(3), "fills": 2, "daily_pnl": np.float64(-4.25)})
            history.append_day(conn, 120, day, {symbols[0]: (1, 2, 0.5, 1.75, 10)},
                               {"orders": 4, "fills": 4, "daily_pnl": 7.5, "equity": 1e6})
        trades = "SELECT day, date, orders, fills, daily_pnl, equity FROM daily_trades"
        assert pg.execute(trades).fetchall() == lite.execute(trades).fetchall() == \
            [(120, "2026-01-05", 4, 4, 7.5, 1e6)]
        assert history.last_closes(pg) == history.last_closes(lite) == {symbols[0]: 1.75}
    finally:
        lite.close()
        pg.close()


def test_prices_are_eight_byte_floats_and_text_sorts_in_byte_order(tmp_path, pg_url):
    pg, lite = history.connect(pg_url), history.connect(db.sqlite_url(tmp_path / "order.db"))
    try:
        types = dict(pg.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'daily_bars'").fetchall())
        assert types["close"] == "double precision" and types["day"] == "integer"
        names = ["b", "B", "_x", "a-1", "a1", "Z", "a"]
        for conn in (pg, lite):
            with conn:
                conn.executemany(history.upsert_sql("symbols", ("symbol",), ("symbol",), replace=False),
                                 [(n,) for n in names])
        read = "SELECT symbol FROM symbols ORDER BY symbol"
        assert [r[0] for r in pg.execute(read)] == [r[0] for r in lite.execute(read)] == sorted(names)
    finally:
        pg.close()
        lite.close()


def test_concurrent_first_connects_create_the_schema_once(pg_url):
    errors, conns = [], []

    def first_connect():
        try:
            conns.append(history.connect(pg_url))
        except Exception as exc:      # noqa: BLE001  (collected and asserted below)
            errors.append(exc)
    threads = [threading.Thread(target=first_connect) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(conns) == 8
        assert set(dialect.indexes(conns[0], "daily_bars")) == {"daily_bars_pkey", "daily_bars_day",
                                                                 "daily_bars_date"}
    finally:
        for c in conns:
            c.close()


def test_a_connect_restores_a_missing_index_and_keeps_the_data(pg_url):
    conn = history.connect(pg_url)
    history.append_day(conn, 0, TODAY, {"S": (1, 1, 1, 1, 1)})
    conn.execute("DROP INDEX daily_bars_date")
    conn.close()
    conn = history.connect(pg_url)
    try:
        assert "daily_bars_date" in dialect.indexes(conn, "daily_bars")
        assert history.last_closes(conn) == {"S": 1.0}
    finally:
        conn.close()


def test_a_failed_block_rolls_back_and_errors_carry_the_sqlstate(pg_url):
    conn = history.connect(pg_url)
    try:
        with pytest.raises(RuntimeError):
            with conn:
                conn.execute("INSERT INTO symbols (symbol) VALUES (?)", ("GONE",))
                raise RuntimeError("abort the block")
        assert conn.execute("SELECT count(*) FROM symbols").fetchone() == (0,)
        with pytest.raises(dialect.PostgresError, match="no_such_table") as err:
            conn.execute("SELECT * FROM no_such_table")
        assert err.value.sqlstate == "42P01" and isinstance(err.value, history.DB_ERRORS)
        with conn:                                          # the connection is still good
            conn.execute("INSERT INTO symbols (symbol) VALUES (?)", ("KEPT",))
        assert conn.execute("SELECT symbol FROM symbols").fetchall() == [("KEPT",)]
    finally:
        conn.close()


def test_the_pool_replaces_a_connection_the_server_closed(pg_url):
    import psycopg
    database = db.Database(pg_url, pool_size=1)
    try:
        [(pid,)] = database.query("SELECT pg_backend_pid()")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(history.DB_ERRORS):
            database.query("SELECT 1")                      # the dead one fails once...
        [(new_pid,)] = database.query("SELECT pg_backend_pid()")   # ...and is not handed out again
        assert new_pid != pid
    finally:
        database.close()


def test_risk_on_postgres_gives_the_same_figures_as_on_sqlite(own_db, tmp_path, pg_url):
    model = FactorModel.from_seed(6, 3)
    lite, pg = _twins(tmp_path, pg_url, model, 300, 3)
    try:
        _book(own_db, model, lite, [(0, 1, 2000), (1, -1, 1500), (2, 1, 800)])
        direct = [risk_manager.compute(own_db, c, 250, 5000, seed=1, now=100.0) for c in (lite, pg)]
        cached = [risk_manager.compute(own_db, c, 250, 5000, seed=1, now=100.0,
                                       cache=CacheManager(None, record_telemetry=False)) for c in (lite, pg)]
    finally:
        lite.close()
        pg.close()
    assert direct[0]["n_positions"] == 3 and direct[0]["days_of_history"] == 250
    assert direct[1] == direct[0]
    assert cached[1] == cached[0] == direct[0]                 # day blocks through the cache too


def test_the_stress_universe_and_an_upload_read_postgres_like_sqlite(tmp_path, pg_url):
    base = get_settings()
    model = FactorModel.from_seed(base.symbols, base.seed)
    lite, pg = _twins(tmp_path, pg_url, model, 80, base.seed)
    lite.close()
    pg.close()
    on = {kind: dataclasses.replace(base, database_url=url, var_dir=tmp_path / kind)
          for kind, url in (("sqlite", db.sqlite_url(tmp_path / "twin.db")), ("postgresql", pg_url))}
    universes = {}
    for kind, settings in on.items():
        conn = history.connect(settings.database_url)
        try:
            universes[kind] = stress.Universe.from_history(conn, settings)
        finally:
            conn.close()
    assert universes["postgresql"].returns.shape == (79, base.symbols)
    np.testing.assert_array_equal(universes["postgresql"].returns, universes["sqlite"].returns)
    np.testing.assert_array_equal(universes["postgresql"].last_price, universes["sqlite"].last_price)
    csv = f"symbol,quantity\n{model.symbols[0]},100\n{model.symbols[1]},-50\n"
    book, errors = stress_jobs.uploaded_portfolio(csv, on["postgresql"])
    assert errors == [] and book.symbols == (model.symbols[0], model.symbols[1])
    np.testing.assert_array_equal(book.price, universes["sqlite"].last_price[:2])


@pytest.fixture
def tasks_on_postgres(own_db, redis_url, pg_url, monkeypatch):
    """The Celery tasks' settings pointed at `pg_url` and their Redis client at own_db."""
    from workers import _optimize
    monkeypatch.setenv("DATABASE_URL", pg_url)
    get_settings.cache_clear()
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    monkeypatch.setattr(_optimize, "_client", lambda: schema.connect(url))
    yield own_db
    monkeypatch.delenv("DATABASE_URL")
    get_settings.cache_clear()


def test_database_analyze_task_reviews_postgres_and_keeps_only_indexes_that_help(tasks_on_postgres, pg_url):
    from core import memory
    from workers import database_tasks
    conn = history.connect(pg_url)
    history.backfill(conn, FactorModel.from_seed(10, 3), 400, 3, today=dt.date(dt.date.today().year, 2, 2))   # 20 days of this year (the watched query asks for it)
    conn.close()
    assert database_tasks.analyze("manual")["status"] == "done"
    findings = schema.loads(tasks_on_postgres.get(schema.DB_FINDINGS))
    by_name = {q["name"]: q for q in findings["queries"]}
    assert set(by_name) == {n for n, *_ in db.watched_queries()}
    assert not [q for q in findings["queries"] if "error" in q]
    year = by_name["bars of one year"]
    assert "substr(date, 1, 4)" in year["sql"] and year["analysis"]["full_scans"] == ["daily_bars"]
    assert year["rewrite"]["applied"] and year["rewrite"]["identical"]
    assert any("Index Scan using daily_bars_date" in p for p in year["rewrite"]["plan_after"])
    ors = by_name["closes of a few symbols"]["rewrite"]
    assert ors["applied"] and "symbol IN ('IDX', 'S00', 'S01')" in ors["rewritten"]
    [run] = memory.read_history(tasks_on_postgres, "database")
    applied = [a for q in findings["queries"] for a in q.get("applied", [])]
    assert applied and all(a["before_ms"] > 0 and a["after_ms"] > 0 for a in applied)
    check = history.connect(pg_url)
    try:
        present = set(dialect.indexes(check, "daily_bars")) | set(dialect.indexes(check, "daily_trades"))
    finally:
        check.close()
    for a in applied:                                       # kept ones stay, dropped ones are gone
        assert (a["ddl"].split()[5] in present) == a["kept"]
    assert len(run["changes"]) >= len(applied)

