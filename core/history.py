"""Daily-bar history in the embedded SQLite database (stdlib sqlite3, WAL mode).

Tables (the risk and cache issues read them):
  symbols(symbol PK, beta, idio_vol, half_spread_bps)            the factor model's parameters
  daily_bars(symbol, day, date, open, high, low, close, volume)  PK (symbol, day); index on day
  daily_trades(day PK, date, orders, fills, buy_qty, sell_qty, notional, realized_pnl,
               daily_pnl, equity)                                 the pipeline's day summary
`day` is a simulated trading-day index (0 = first backfilled day); `date` is a business-day
calendar date: the backfill ends on the last business day before the first start, live days
follow on consecutive business days (simulated days run faster than wall time).
"""
from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from pathlib import Path

import numpy as np

from core.market import INDEX_SYMBOL, FactorModel, daily_bars

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS symbols (
    symbol TEXT PRIMARY KEY, beta REAL, idio_vol REAL, half_spread_bps REAL);
CREATE TABLE IF NOT EXISTS daily_bars (
    symbol TEXT NOT NULL, day INTEGER NOT NULL, date TEXT NOT NULL,
    open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
    volume REAL NOT NULL, PRIMARY KEY (symbol, day));
CREATE INDEX IF NOT EXISTS daily_bars_day ON daily_bars(day);
CREATE INDEX IF NOT EXISTS daily_bars_date ON daily_bars(date);
CREATE TABLE IF NOT EXISTS daily_trades (
    day INTEGER PRIMARY KEY, date TEXT NOT NULL, orders INTEGER, fills INTEGER,
    buy_qty REAL, sell_qty REAL, notional REAL, realized_pnl REAL, daily_pnl REAL, equity REAL);
"""


def connect(database_url: str) -> sqlite3.Connection:
    """Open (creating tables and the parent folder) the database named by DATABASE_URL."""
    if database_url.startswith(("postgresql://", "postgres://")):
        raise NotImplementedError("DATABASE_URL is PostgreSQL: not supported yet, use sqlite:///PATH "
                                  "(a later issue adds PostgreSQL)")
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        raise ValueError(f"DATABASE_URL must be sqlite:///PATH, got {database_url!r}")
    path = Path(database_url[len(prefix):])
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, fast commits
    conn.executescript(_SCHEMA)
    return conn


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


def backfill(conn: sqlite3.Connection, model: FactorModel, days: int, seed: int,
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
        conn.executemany("INSERT OR REPLACE INTO symbols VALUES (?,?,?,?)",
                         [(s, float(b), float(v), float(h)) for s, b, v, h in
                          zip(model.symbols, model.betas, model.idio_vol, model.half_spread_bps)])
        conn.executemany("INSERT OR IGNORE INTO daily_bars VALUES (?,?,?,?,?,?,?,?)", rows)
    log.info("backfilled %d daily bars (%d days x %d series)", len(rows), days, len(names))
    return len(rows)


def last_day(conn: sqlite3.Connection) -> tuple[int, dt.date] | None:
    """(day index, date) of the latest stored bar, or None when empty."""
    row = conn.execute("SELECT day, date FROM daily_bars ORDER BY day DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), dt.date.fromisoformat(row[1]))


def last_closes(conn: sqlite3.Connection) -> dict[str, float]:
    """Close of every series on the latest stored day."""
    found = last_day(conn)
    if found is None:
        return {}
    rows = conn.execute("SELECT symbol, close FROM daily_bars WHERE day = ?", (found[0],))
    return {s: float(c) for s, c in rows}


def append_day(conn: sqlite3.Connection, day: int, date: dt.date, bars: dict[str, tuple],
               trades: dict | None = None) -> None:
    """Store one simulated day: bars {symbol: (open, high, low, close, volume)} and the trade summary."""
    rows = [(s, day, date.isoformat(), *map(float, ohlcv)) for s, ohlcv in bars.items()]
    with conn:
        conn.executemany("INSERT OR REPLACE INTO daily_bars VALUES (?,?,?,?,?,?,?,?)", rows)
        if trades is not None:
            keys = ("orders", "fills", "buy_qty", "sell_qty", "notional", "realized_pnl",
                    "daily_pnl", "equity")
            conn.execute("INSERT OR REPLACE INTO daily_trades VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (day, date.isoformat(), *(trades.get(k, 0) for k in keys)))


def closes_matrix(conn: sqlite3.Connection, symbols: list[str]) -> np.ndarray:
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
