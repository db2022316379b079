"""Daily-bar history in the console's database: embedded SQLite (WAL mode) by default, or
PostgreSQL through DATABASE_URL=postgresql://... (core.dialect holds the differences).

Tables (the risk and cache issues read them):
  symbols(symbol PK, beta, idio_vol, half_spread_bps)            the factor model's parameters
  daily_bars(symbol, day, date, open, high, low, close, volume)  PK (symbol, day); index on day
  daily_trades(day PK, date, orders, fills, buy_qty, sell_qty, notional, realized_pnl,
               daily_pnl, equity)                                 the pipeline's day summary
`day` is a simulated trading-day index (0 = first backfilled day); `date` is a business-day
calendar date as ISO text: the backfill ends on the last business day before the first start,
live days follow on consecutive business days (simulated days run faster than wall time).
Prices are 8-byte floats in both databases, so the risk code reads identical numbers.
"""
from __future__ import annotations

import datetime as dt
import logging
import re

import numpy as np

from core import dialect
from core.dialect import DB_ERRORS, POSTGRESQL, Connection  # noqa: F401  (callers catch DB_ERRORS)
from core.market import INDEX_SYMBOL, FactorModel, daily_bars

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS symbols (
    symbol {text} PRIMARY KEY, beta {real}, idio_vol {real}, half_spread_bps {real});
CREATE TABLE IF NOT EXISTS daily_bars (
    symbol {text} NOT NULL, day INTEGER NOT NULL, date {text} NOT NULL,
    open {real} NOT NULL, high {real} NOT NULL, low {real} NOT NULL, close {real} NOT NULL,
    volume {real} NOT NULL, PRIMARY KEY (symbol, day));
CREATE INDEX IF NOT EXISTS daily_bars_day ON daily_bars(day);
CREATE INDEX IF NOT EXISTS daily_bars_date ON daily_bars(date);
CREATE TABLE IF NOT EXISTS daily_trades (
    day INTEGER PRIMARY KEY, date {text} NOT NULL, orders INTEGER, fills INTEGER,
    buy_qty {real}, sell_qty {real}, notional {real}, realized_pnl {real}, daily_pnl {real},
    equity {real});
"""
SYMBOL_COLUMNS = ("symbol", "beta", "idio_vol", "half_spread_bps")
BAR_COLUMNS = ("symbol", "day", "date", "open", "high", "low", "close", "volume")
TRADE_COLUMNS = ("day", "date", "orders", "fills", "buy_qty", "sell_qty", "notional",
                 "realized_pnl", "daily_pnl", "equity")
_SCHEMA_OBJECTS = tuple(re.findall(r"IF NOT EXISTS (\w+)", _SCHEMA))
# Concurrent first connects (worker, pipeline runner, web) must not race on CREATE TABLE.
_SCHEMA_LOCK = 0x636F6E73   # "cons"


def upsert_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...], replace: bool = True) -> str:
    """INSERT of one row of `columns` that, on a duplicate `key`, replaces the other columns
    (replace=True) or keeps the stored row (False). The same text runs on SQLite and PostgreSQL."""
    action = ("UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
              if replace else "NOTHING")
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) DO {action}")


_UPSERT_SYMBOL = upsert_sql("symbols", SYMBOL_COLUMNS, ("symbol",))
_UPSERT_BAR = upsert_sql("daily_bars", BAR_COLUMNS, ("symbol", "day"))
_INSERT_BAR = upsert_sql("daily_bars", BAR_COLUMNS, ("symbol", "day"), replace=False)
_UPSERT_TRADES = upsert_sql("daily_trades", TRADE_COLUMNS, ("day",))


def connect(database_url: str) -> Connection:
    """Open the database named by DATABASE_URL (sqlite:///PATH, creating the folder, or
    postgresql://...), creating the tables and indexes that are missing."""
    conn = dialect.connect(database_url)
    try:
        _ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: Connection) -> None:
    script = _SCHEMA.format(**dialect.TYPES[conn.dialect])
    if conn.dialect != POSTGRESQL:
        conn.executescript(script)
        return
    # a look first (one catalog read): every risk run connects, and the DDL takes ~2 ms and a lock
    [(found,)] = conn.execute("SELECT count(to_regclass(name)) FROM unnest(?::text[]) AS name",
                              (list(_SCHEMA_OBJECTS),)).fetchall()
    if found == len(_SCHEMA_OBJECTS):
        return
    with conn:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        conn.executescript(script)


def business_days_ending(last: dt.date, count: int) -> list[dt.date]:
    """`count` weekdays ending at `last` (inclusive when it is a weekday), oldest first."""
    days, d = [], last
    while len(days) < count:
        if d.weekday() < 5:
            days.append(d)
        d -= dt.timedelta(days=1)
    return days[::-1]


def next_business_day(d: dt.date) -> dt.date:
    d += dt.timedelta(days=1)
    while d.weekday() >= 5:
        d += dt.timedelta(days=1)
    return d


def backfill(conn: Connection, model: FactorModel, days: int, seed: int,
             today: dt.date | None = None) -> int:
    """Fill `days` daily bars per symbol + the index. Does nothing if bars exist. Returns rows added."""
    if conn.execute("SELECT 1 FROM daily_bars LIMIT 1").fetchone():
        return 0
    today = today or dt.date.today()
    dates = business_days_ending(today - dt.timedelta(days=1), days)
    bars = daily_bars(model, days, seed)
    names = list(model.symbols) + [INDEX_SYMBOL]
    rows = [(names[j], d, dates[d].isoformat(), *(float(bars[k][d, j]) for k in
             ("open", "high", "low", "close", "volume")))
            for d in range(days) for j in range(len(names))]
    with conn:
        conn.executemany(_UPSERT_SYMBOL,
                         [(s, float(b), float(v), float(h)) for s, b, v, h in
                          zip(model.symbols, model.betas, model.idio_vol, model.half_spread_bps)])
        conn.executemany(_INSERT_BAR, rows)
    if conn.dialect == POSTGRESQL:
        # its planner reads statistics, which a bulk load leaves stale until autovacuum's next
        # pass; SQLite plans from its schema alone until ANALYZE is first run
        conn.execute("ANALYZE symbols, daily_bars")
    log.info("backfilled %d daily bars (%d days x %d series)", len(rows), days, len(names))
    return len(rows)


def last_day(conn: Connection) -> tuple[int, dt.date] | None:
    """(day index, date) of the latest stored bar, or None when empty."""
    row = conn.execute("SELECT day, date FROM daily_bars ORDER BY day DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), dt.date.fromisoformat(row[1]))


def last_closes(conn: Connection) -> dict[str, float]:
    """Close of every series on the latest stored day."""
    found = last_day(conn)
    if found is None:
        return {}
    rows = conn.execute("SELECT symbol, close FROM daily_bars WHERE day = ?", (found[0],))
    return {s: float(c) for s, c in rows}


def append_day(conn: Connection, day: int, date: dt.date, bars: dict[str, tuple],
               trades: dict | None = None) -> None:
    """Store one simulated day: bars {symbol: (open, high, low, close, volume)} and the trade summary."""
    day = int(day)
    rows = [(s, day, date.isoformat(), *map(float, ohlcv)) for s, ohlcv in bars.items()]
    with conn:
        conn.executemany(_UPSERT_BAR, rows)
        if trades is not None:
            conn.execute(_UPSERT_TRADES, (day, date.isoformat(), *(_number(trades.get(k, 0))
                                                                    for k in TRADE_COLUMNS[2:])))


def _number(value):
    """A plain int or float: psycopg adapts no numpy scalar (np.int64 is no int subclass)."""
    return value.item() if isinstance(value, np.generic) else value


def closes_matrix(conn: Connection, symbols: list[str]) -> np.ndarray:
    """Closes of `symbols` by day (rows: days ascending); days missing a symbol are dropped."""
    placeholders = ",".join("?" * len(symbols))
    rows = conn.execute(f"SELECT day, symbol, close FROM daily_bars WHERE symbol IN ({placeholders}) "
                        "ORDER BY day", symbols).fetchall()
    col = {s: i for i, s in enumerate(symbols)}
    by_day: dict[int, np.ndarray] = {}
    for day, sym, close in rows:
        by_day.setdefault(day, np.full(len(symbols), np.nan))[col[sym]] = close
    mat = np.array([v for _, v in sorted(by_day.items())]) if by_day else np.empty((0, len(symbols)))
    return mat[~np.isnan(mat).any(axis=1)] if len(mat) else mat
