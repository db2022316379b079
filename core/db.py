"""The database tier: a connection pool, timed queries and the query optimizer.

SQLite (stdlib sqlite3, the history of core.history) is the embedded default; PostgreSQL
through DATABASE_URL=postgresql://... (psycopg 3) runs the same code: every query here is
written once with `?` placeholders, and core.dialect supplies what differs (placeholders,
catalog reads, plans: EXPLAIN QUERY PLAN in SQLite, EXPLAIN (FORMAT JSON) in PostgreSQL).

Every query run through `Database.query` is recorded as the `database_query` telemetry stage.

Optimizer:
  analyze_query    the plan -> full scans, temporary sorts, indexes left unused
  suggest_indexes  an index per scanned table on its filtered, then sorted, columns
  apply_index      creates one and reports the query's median time before and after
  rewrite_query    function-on-indexed-column -> range, OR chain -> IN, SELECT * -> columns;
                   applied only when the result is identical on the data (checked), with timings
"""
from __future__ import annotations

import functools
import queue
import re
import statistics
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter_ns
from typing import Callable, Iterable, Sequence

import numpy as np

from core import cache as cache_mod
from core import dialect, history
from core.dialect import DB_ERRORS, IDENT as _IDENT
from core.telemetry import measure_latency

POOL_SIZE = 4


class Database:
    """A small thread-safe connection pool over one DATABASE_URL (`kind`: "sqlite" or
    "postgresql"). Connections open lazily, at most pool_size; a broken one (the server went
    away) is closed when it comes back instead of being handed out again."""

    def __init__(self, database_url: str, pool_size: int = POOL_SIZE):
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        self.url = database_url
        self.kind = dialect.kind_of(database_url)
        dialect.require_driver(self.kind)
        self._pool: queue.LifoQueue = queue.LifoQueue(maxsize=pool_size)
        self._created = 0
        self._size = pool_size
        self._lock = threading.Lock()

    def _open(self) -> dialect.Connection:
        return history.connect(self.url)

    @contextmanager
    def connection(self, timeout: float = 10.0):
        """Borrow a pooled connection; opens up to pool_size, then waits for one to return."""
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._created < self._size
                if grow:
                    self._created += 1
            if grow:
                try:
                    conn = self._open()
                except Exception:
                    with self._lock:
                        self._created -= 1
                    raise
            else:
                conn = self._pool.get(timeout=timeout)
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _give_back(self, conn) -> None:
        if not conn.broken:
            self._pool.put(conn)
            return
        with self._lock:
            self._created -= 1
        try:
            conn.close()
        except DB_ERRORS:
            pass

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run one statement and fetch all rows, timed as the `database_query` stage."""
        with self.connection() as conn, measure_latency("database_query"):
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence = ()) -> None:
        with self.connection() as conn, measure_latency("database_query"):
            with conn:
                conn.execute(sql, params)

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
        self._created = 0


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{path}"


# ---- the risk code's read: a window of daily closes ----------------------------------
WINDOW_SQL = "SELECT day, symbol, close FROM daily_bars WHERE day BETWEEN ? AND ? ORDER BY day, symbol"


def read_closes_window(db: Database, start_day: int, days: int) -> np.ndarray:
    """Closes of every series for days [start_day, start_day + days): rows days, columns symbols
    in name order. A day missing any series is dropped (as history.closes_matrix does)."""
    rows = db.query(WINDOW_SQL, (int(start_day), int(start_day) + int(days) - 1))
    if not rows:
        return np.empty((0, 0))
    symbols = sorted({r[1] for r in rows})
    col = {s: i for i, s in enumerate(symbols)}
    day_ids = sorted({r[0] for r in rows})
    row_of = {d: i for i, d in enumerate(day_ids)}
    mat = np.full((len(day_ids), len(symbols)), np.nan)
    for day, sym, close in rows:
        mat[row_of[day], col[sym]] = close
    return mat[~np.isnan(mat).any(axis=1)]


# ---- the same read in day blocks, through a cache (range-chunked caching) ---------------
BLOCK_DAYS = 64              # a quarter of a trading year: ~11 kB per block for 21 series
BLOCK_SQL = "SELECT day, symbol, close FROM daily_bars WHERE day BETWEEN ? AND ? AND symbol IN ({})"
Query = Callable[[str, Sequence], list]


def closes_block(query: Query, symbols: Sequence[str], first_day: int, last_day: int) -> np.ndarray:
    """Closes of `symbols` (columns, in the given order) for every day index first..last_day
    (rows), NaN where a day has no bar for a symbol. `query(sql, params)` returns rows:
    `Database.query`, or `lambda sql, p: conn.execute(sql, p).fetchall()` on a connection."""
    mat = np.full((int(last_day) - int(first_day) + 1, len(symbols)), np.nan)
    col = {s: i for i, s in enumerate(symbols)}
    sql = BLOCK_SQL.format(",".join("?" * len(symbols)))
    for day, sym, close in query(sql, (int(first_day), int(last_day), *symbols)):
        mat[day - first_day, col[sym]] = close
    return mat


def _complete(rows: np.ndarray) -> np.ndarray:
    """The rows without NaN, as a new array (never a view of a cached block)."""
    if not np.isnan(rows.sum()):           # the usual case: one reduction instead of a mask
        return rows.copy()
    return rows[~np.isnan(rows).any(axis=1)]


@functools.lru_cache(maxsize=256)
def _blocks_name(symbols: tuple[str, ...]) -> str:
    if not symbols:
        raise ValueError("symbols must not be empty")
    return f"closes:{len(symbols)}:{zlib.crc32(','.join(symbols).encode()):08x}"


def cached_closes(cache, query: Query, symbols: Sequence[str], first_day: int, last_day: int,
                  newest: int, block_days: int = BLOCK_DAYS) -> np.ndarray:
    """Closes of `symbols` for days first_day..last_day (rows: the days that have every symbol,
    oldest first), read from day blocks through `cache` (core.cache.read_blocks). Same rows as
    a direct read of the range; `newest` is the history's latest day index."""
    blocks = cache_mod.read_blocks(cache, _blocks_name(tuple(symbols)), first_day, last_day, block_days,
                                   newest, lambda lo, hi: closes_block(query, symbols, lo, hi))
    if not blocks:
        return np.empty((0, len(symbols)))
    start = (first_day // block_days) * block_days
    lo, hi = first_day - start, min(last_day, newest) - start + 1
    return _complete(blocks[0][lo:hi] if len(blocks) == 1 else np.concatenate(blocks)[lo:hi])


def cached_closes_tail(cache, query: Query, symbols: Sequence[str], newest: int,
                       rows: int | None = None, block_days: int = BLOCK_DAYS) -> np.ndarray:
    """The newest `rows` complete days of closes of `symbols` (all of them when None; fewer
    when the history is shorter), oldest first, walking day blocks back from `newest` through
    `cache`: what history.closes_matrix(conn, symbols)[-rows:] returns, without re-reading the
    closed part of the history on every new day."""
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"rows must be a positive int or None, got {rows!r}")
    parts, have, hi = [], 0, int(newest)
    while hi >= 0 and (rows is None or have < rows):
        span = hi + 1 if rows is None else max(1, rows - have)
        lo = max(0, ((hi - span + 1) // block_days) * block_days)
        part = cached_closes(cache, query, symbols, lo, hi, newest, block_days)
        parts.append(part)
        have += len(part)
        hi = lo - 1
    out = np.concatenate(parts[::-1]) if parts else np.empty((0, len(symbols)))
    return out if rows is None else out[-rows:]


# ---- timing ---------------------------------------------------------------------------
def time_query(db: Database, sql: str, params: Sequence = (), repeats: int = 7) -> float:
    """Median wall time of `sql` in milliseconds over `repeats` runs (one warm-up first)."""
    db.query(sql, params)
    samples = []
    for _ in range(max(1, repeats)):
        t0 = perf_counter_ns()
        db.query(sql, params)
        samples.append((perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


# ---- analyze_query --------------------------------------------------------------------
def _tables_in(sql: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in re.finditer(
        rf"\b(?:FROM|JOIN)\s+({_IDENT})", sql, re.IGNORECASE)))


def analyze_query(db: Database, sql: str, params: Sequence = ()) -> dict:
    """Read the plan of `sql` (EXPLAIN QUERY PLAN in SQLite, EXPLAIN in PostgreSQL) and name
    its problems.

    Returns {"plan": [line, ...], "full_scans": [table], "index_scans": [table],
    "temp_btrees": [line], "indexes_used": [index], "unused_indexes": [index],
    "tables": [table]}. `temp_btrees` are the temporary sorts (SQLite's TEMP B-TREE,
    PostgreSQL's Sort nodes); `unused_indexes` are indexes of the query's tables the plan does
    not use.
    """
    _check_sql(sql)
    tables = _tables_in(sql)
    with db.connection() as conn:
        all_indexes = {t: dialect.indexes(conn, t) for t in tables}
        plan = dialect.explain(conn, sql, params, all_indexes)
    unused = sorted(i for t in all_indexes.values() for i in t if i not in plan.indexes_used)
    return {"plan": plan.lines, "full_scans": plan.full_scans, "index_scans": plan.index_scans,
            "temp_btrees": plan.sorts, "indexes_used": sorted(plan.indexes_used),
            "unused_indexes": unused, "tables": tables}


def _check_sql(sql: str) -> None:
    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("sql must be a non-empty string")
    if ";" in sql.strip().rstrip(";"):
        raise ValueError("one statement only")


# ---- suggest_indexes / apply_index ----------------------------------------------------
def _where_and_order(sql: str) -> tuple[list[str], list[str], list[str]]:
    """(equality columns, range columns, order-by columns) named in the query text."""
    where = re.search(r"\bWHERE\b(.*?)(?:\bGROUP BY\b|\bORDER BY\b|\bLIMIT\b|$)", sql,
                      re.IGNORECASE | re.DOTALL)
    order = re.search(r"\bORDER BY\b(.*?)(?:\bLIMIT\b|$)", sql, re.IGNORECASE | re.DOTALL)
    eq, rng = [], []
    if where:
        text = where.group(1)
        eq = re.findall(rf"\b({_IDENT})\s*(?:=|\bIN\b)", text, re.IGNORECASE)
        rng = re.findall(rf"\b({_IDENT})\s*(?:<=|>=|<|>|\bBETWEEN\b|\bLIKE\b)", text, re.IGNORECASE)
    by = re.findall(rf"\b({_IDENT})\b(?:\s+(?:ASC|DESC))?", order.group(1), re.IGNORECASE) if order else []
    by = [c for c in by if c.upper() not in {"ASC", "DESC"}]
    return eq, rng, by


def suggest_indexes(db: Database, sql: str, params: Sequence = ()) -> list[dict]:
    """Indexes for the tables the plan scans in full or sorts through a temporary b-tree.

    Columns: equality-filtered first, then one range column, then the ORDER BY columns (the
    usual composite-index order). Each item: {"table", "columns", "ddl", "reason"}.
    An index whose leading columns an existing index already covers is not proposed.
    """
    found = analyze_query(db, sql, params)
    eq, rng, by = _where_and_order(sql)
    out = []
    with db.connection() as conn:
        for table in found["tables"]:
            scanned = table in found["full_scans"]
            sorts = bool(found["temp_btrees"])
            if not (scanned or sorts):
                continue
            cols = dialect.columns(conn, table)
            chosen = [c for c in dict.fromkeys(eq) if c in cols]
            ranged = [c for c in dict.fromkeys(rng) if c in cols and c not in chosen][:1]
            chosen += ranged
            # after a range column an index still gives the order only if ORDER BY starts with it
            if not ranged or (by and by[0] == ranged[0]):
                chosen += [c for c in dict.fromkeys(by) if c in cols and c not in chosen]
            if not chosen:
                continue
            existing = dialect.indexes(conn, table).values()
            if any(ix[:len(chosen)] == chosen for ix in existing):
                continue
            name = f"ix_{table}_{'_'.join(chosen)}"
            reason = ("full scan" if scanned else "temporary sort") + f" of {table} filtered/sorted on " + ", ".join(chosen)
            out.append({"table": table, "columns": chosen, "name": name, "reason": reason,
                        "ddl": f"CREATE INDEX IF NOT EXISTS {name} ON {table}({', '.join(chosen)})"})
    return out


def apply_index(db: Database, suggestion: dict, sql: str, params: Sequence = (),
                repeats: int = 7, min_speedup: float | None = None) -> dict:
    """Create the suggested index and measure `sql` before and after (median ms).

    With `min_speedup`, an index that does not make the query at least that much faster is
    dropped again ("kept": False): a measured no-gain index only costs writes.
    """
    ddl = suggestion.get("ddl", "")
    if not re.fullmatch(rf"CREATE INDEX IF NOT EXISTS {_IDENT} ON {_IDENT}\([A-Za-z0-9_, ]+\)", ddl):
        raise ValueError(f"not an index suggestion from suggest_indexes: {ddl!r}")
    before_ms = time_query(db, sql, params, repeats)
    plan_before = analyze_query(db, sql, params)["plan"]
    db.execute(ddl)
    db.execute("ANALYZE")
    after_ms = time_query(db, sql, params, repeats)
    speedup = before_ms / after_ms if after_ms > 0 else float("inf")
    plan_after = analyze_query(db, sql, params)["plan"]
    kept = min_speedup is None or speedup >= min_speedup
    if not kept:
        db.execute(f"DROP INDEX IF EXISTS {ddl.split()[5]}")
    return {"ddl": ddl, "before_ms": before_ms, "after_ms": after_ms, "speedup": speedup,
            "kept": kept, "plan_before": plan_before, "plan_after": plan_after}


# ---- rewrite_query --------------------------------------------------------------------
def _next_prefix(text: str) -> str:
    """The smallest string greater than every string starting with `text` in byte order
    (SQLite's BINARY collation; the console's PostgreSQL text columns are COLLATE "C")."""
    return text[:-1] + chr(ord(text[-1]) + 1)


def _indexed_columns(conn, tables: Iterable[str]) -> set[str]:
    cols = set()
    for t in tables:
        for ix in dialect.indexes(conn, t).values():
            if ix:
                cols.add(ix[0])
    return cols


def _rewrite_functions(sql: str, indexed: set[str], notes: list[str]) -> str:
    def substr(m):
        col, n, lit = m.group(1), int(m.group(2)), m.group(3)
        if col not in indexed or len(lit) != n or not lit:
            return m.group(0)
        notes.append(f"substr({col}, 1, {n}) = '{lit}' -> range on indexed {col}")
        return f"({col} >= '{lit}' AND {col} < '{_next_prefix(lit)}')"

    def strftime(m):
        fmt, col, lit = m.group(1), m.group(2), m.group(3)
        if col not in indexed:
            return m.group(0)
        if fmt == "%Y" and re.fullmatch(r"\d{4}", lit):
            lo, hi = f"{lit}-01-01", f"{int(lit) + 1:04d}-01-01"
        elif fmt == "%Y-%m" and re.fullmatch(r"\d{4}-\d{2}", lit):
            y, mo = int(lit[:4]), int(lit[5:])
            lo, hi = f"{lit}-01", (f"{y + 1:04d}-01-01" if mo == 12 else f"{y:04d}-{mo + 1:02d}-01")
        else:
            return m.group(0)
        notes.append(f"strftime('{fmt}', {col}) = '{lit}' -> range on indexed {col}")
        return f"({col} >= '{lo}' AND {col} < '{hi}')"

    sql = re.sub(rf"\bsubstr\(\s*({_IDENT})\s*,\s*1\s*,\s*(\d+)\s*\)\s*=\s*'([^']*)'", substr, sql,
                 flags=re.IGNORECASE)
    return re.sub(rf"\bstrftime\(\s*'([^']+)'\s*,\s*({_IDENT})\s*\)\s*=\s*'([^']*)'", strftime, sql,
                  flags=re.IGNORECASE)


_LITERAL = r"(?:'[^']*'|-?\d+(?:\.\d+)?|\?)"


def _rewrite_or_chains(sql: str, notes: list[str]) -> str:
    pattern = re.compile(rf"(\(\s*)?\b({_IDENT})\s*=\s*({_LITERAL})((?:\s+OR\s+\2\s*=\s*{_LITERAL})+)(\s*\))?",
                         re.IGNORECASE)

    def repl(m):
        col = m.group(2)
        values = [m.group(3)] + re.findall(rf"OR\s+{col}\s*=\s*({_LITERAL})", m.group(4), re.IGNORECASE)
        notes.append(f"{len(values)} OR'ed equalities on {col} -> IN")
        text = f"{col} IN ({', '.join(values)})"
        opened, closed = m.group(1) is not None, m.group(5) is not None
        if opened and closed:
            return f"({text})"
        # a lone parenthesis belongs to the surrounding expression: keep it
        return (m.group(1) or "") + text + (m.group(5) or "")
    return pattern.sub(repl, sql)


def _rewrite_star(sql: str, columns: Sequence[str] | None, conn, notes: list[str]) -> str:
    if not columns:
        return sql
    m = re.match(rf"\s*SELECT\s+\*\s+FROM\s+({_IDENT})", sql, re.IGNORECASE)
    if not m:
        return sql
    known = dialect.columns(conn, m.group(1))
    missing = [c for c in columns if c not in known]
    if missing:
        raise ValueError(f"columns {missing} are not columns of {m.group(1)}")
    notes.append(f"SELECT * narrowed to {', '.join(columns)}")
    return re.sub(r"^\s*SELECT\s+\*", "SELECT " + ", ".join(columns), sql, count=1, flags=re.IGNORECASE)


def _same_rows(a: list[tuple], b: list[tuple], ordered: bool) -> bool:
    if ordered:
        return a == b
    key = repr
    return sorted(a, key=key) == sorted(b, key=key)


def rewrite_query(db: Database, sql: str, params: Sequence = (),
                  columns_used: Sequence[str] | None = None, repeats: int = 5) -> dict:
    """Rewrite `sql` into an equivalent, index-friendlier form, verified on the data.

    `columns_used`: the columns the caller reads, to narrow a `SELECT *`. The original and
    the rewrite are both run; `identical` says whether their results match (as lists when the
    query orders its rows, else as multisets; a narrowed SELECT * is compared with the
    original's projection). `applied` is True only when identical, so a rewrite that would
    change results is never applied. Returns {"original", "rewritten", "rules", "identical",
    "applied", "before_ms", "after_ms", "plan_before", "plan_after"}.
    """
    _check_sql(sql)
    notes: list[str] = []
    with db.connection() as conn:
        indexed = _indexed_columns(conn, _tables_in(sql))
        rewritten = _rewrite_functions(sql, indexed, notes)
        rewritten = _rewrite_or_chains(rewritten, notes)
        rewritten = _rewrite_star(rewritten, columns_used, conn, notes)
        star_cols = None
        if columns_used and re.match(r"\s*SELECT\s+\*", sql, re.IGNORECASE):
            cur = conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            star_cols = [names.index(c) for c in columns_used]
            original_rows = [tuple(r[i] for i in star_cols) for r in cur.fetchall()]
        else:
            original_rows = conn.execute(sql, params).fetchall()
    result = {"original": sql, "rewritten": rewritten, "rules": notes, "identical": True,
              "applied": False, "before_ms": None, "after_ms": None}
    if rewritten == sql:
        return result
    try:
        new_rows = db.query(rewritten, params)
    except DB_ERRORS as exc:
        result.update(identical=False, error=f"rewrite failed to run: {exc}")
        return result
    ordered = bool(re.search(r"\bORDER BY\b", sql, re.IGNORECASE))
    identical = _same_rows(original_rows, new_rows, ordered)
    result.update(identical=identical, applied=identical,
                  before_ms=time_query(db, sql, params, repeats),
                  after_ms=time_query(db, rewritten, params, repeats),
                  plan_before=analyze_query(db, sql, params)["plan"],
                  plan_after=analyze_query(db, rewritten, params)["plan"])
    if not identical:
        result["rewritten"] = sql   # never applied: the caller keeps the original
        result["rejected"] = rewritten
    return result


# ---- the watched queries database.analyze reviews -------------------------------------
def watched_queries(year: int | None = None, kind: str = dialect.SQLITE
                    ) -> list[tuple[str, str, tuple, tuple | None]]:
    """(name, sql, params, columns_used) of the queries the console's readers run, in the
    `kind` database's idiom (the year filter is each dialect's usual function on the date)."""
    year = time.gmtime().tm_year if year is None else int(year)
    return [
        ("closes window", WINDOW_SQL, (0, 59), None),
        ("bars of one year", f"SELECT * FROM daily_bars WHERE {dialect.year_of('date', kind)} = '{year:04d}'",
         (), ("symbol", "day", "close")),
        ("closes of a few symbols", "SELECT day, close FROM daily_bars WHERE symbol = 'IDX' OR "
         "symbol = 'S00' OR symbol = 'S01' ORDER BY day, close", (), None),
        ("trades by equity", "SELECT day, equity FROM daily_trades WHERE equity > ? ORDER BY equity",
         (0.0,), None),
    ]


def review(db: Database, timestamp: float | None = None) -> dict:
    """Analyze every watched query and try the safe rewrites; what database.analyze stores."""
    findings = []
    for name, sql, params, cols in watched_queries(kind=db.kind):
        try:
            entry = {"name": name, "sql": sql, "analysis": analyze_query(db, sql, params),
                     "suggestions": suggest_indexes(db, sql, params),
                     "rewrite": rewrite_query(db, sql, params, cols, repeats=3),
                     "median_ms": time_query(db, sql, params, 3)}
        except (*DB_ERRORS, ValueError) as exc:
            entry = {"name": name, "sql": sql, "error": str(exc)}
        findings.append(entry)
    return {"ts": time.time() if timestamp is None else timestamp, "queries": findings}
