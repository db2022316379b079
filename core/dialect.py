"""The thin layer between the console's SQL and its two databases: SQLite (stdlib sqlite3, the
embedded default) and PostgreSQL (psycopg 3, through DATABASE_URL=postgresql://...).

Every query is written once, with `?` placeholders, in the subset both engines share
(upserts are `INSERT ... ON CONFLICT (key) DO UPDATE SET c = excluded.c`, SQLite >= 3.24).
What differs lives here:

  connections   `connect(url)`: a sqlite3 connection (subclass with `.dialect`) or a
                `PgConnection` with the same surface: execute / executemany / executescript,
                `with conn:` a transaction (commit, or rollback on error; never a close).
                PostgreSQL runs in autocommit outside `with`, as sqlite3 does for reads, so
                an idle pooled connection holds no snapshot and no lock.
  placeholders  `?` -> `%s` for psycopg, and a literal `%` doubled (`to_pyformat`).
  types         SQLite REAL is an 8-byte float, PostgreSQL REAL a 4-byte one: `DOUBLE
                PRECISION` there. Text is `COLLATE "C"` there: byte order, as SQLite's BINARY,
                so ORDER BY and prefix ranges give the same rows on both.
  catalog       `indexes(conn, table)`, `columns(conn, table)`: PRAGMA vs pg_index/pg_attribute.
  plans         `explain(...)`: EXPLAIN QUERY PLAN rows or the EXPLAIN (FORMAT JSON) tree, read
                into one shape (plan lines, full scans, index scans, sorts, indexes used).
  errors        `DB_ERRORS`: sqlite3.Error, or `PostgresError` (psycopg's, re-raised under one
                name so psycopg is imported only by processes that use PostgreSQL).
"""
from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_PREFIX = "sqlite:///"
CONNECT_TIMEOUT_S = 10            # libpq's default is to wait as long as TCP does
APPLICATION_NAME = "console"      # how the console's sessions show in pg_stat_activity
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"

# Column types by dialect, for the schema's {real} and {text} slots.
TYPES = {SQLITE: {"real": "REAL", "text": "TEXT"},
         POSTGRESQL: {"real": "DOUBLE PRECISION", "text": 'TEXT COLLATE "C"'}}


class PostgresError(Exception):
    """A psycopg error, re-raised: the message, `sqlstate` (e.g. '42P01'), the original as __cause__."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, PostgresError)


def kind_of(database_url: str) -> str:
    """SQLITE or POSTGRESQL for a DATABASE_URL; ValueError for anything else."""
    if not isinstance(database_url, str):
        raise ValueError(f"DATABASE_URL must be a string, got {database_url!r}")
    if database_url.startswith(_PG_SCHEMES):
        return POSTGRESQL
    if database_url.startswith(_SQLITE_PREFIX) and len(database_url) > len(_SQLITE_PREFIX):
        return SQLITE
    raise ValueError(f"DATABASE_URL must be sqlite:///PATH or postgresql://..., got {database_url!r}")


def require_driver(kind: str) -> None:
    """Fail now, with the fix, when PostgreSQL is named but psycopg is not installed."""
    if kind != POSTGRESQL:
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise NotImplementedError("DATABASE_URL is PostgreSQL but psycopg is not installed: "
                                  "`pip install -r requirements.txt` (it pins psycopg[binary])") from None


# ---- placeholders ---------------------------------------------------------------------------
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|\?|%")


def to_pyformat(sql: str) -> str:
    """`?` placeholders -> psycopg's `%s`; every literal `%` (also inside quotes, which psycopg
    scans too) -> `%%`. A `?` inside a quoted string or identifier stays as it is."""
    def swap(m: re.Match) -> str:
        tok = m.group()
        return "%s" if tok == "?" else tok.replace("%", "%%")
    return _TOKENS.sub(swap, sql)


# ---- connections ----------------------------------------------------------------------------
class SqliteConnection(sqlite3.Connection):
    """sqlite3.Connection that names its dialect (sqlite3.connect(factory=...))."""
    dialect = SQLITE
    broken = False


class PgConnection:
    """A psycopg connection (autocommit) with the part of sqlite3.Connection the console uses."""
    dialect = POSTGRESQL

    def __init__(self, raw):
        import psycopg
        self.raw = raw
        self._driver_error = psycopg.Error
        self._transactions: list = []

    @contextmanager
    def _errors(self):
        try:
            yield
        except self._driver_error as exc:
            raise PostgresError(str(exc).strip(), getattr(exc, "sqlstate", None)) from exc

    def execute(self, sql: str, params: Sequence = ()):
        with self._errors():
            return self.raw.execute(to_pyformat(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence]):
        with self._errors():
            cur = self.raw.cursor()
            cur.executemany(to_pyformat(sql), rows)
            return cur

    def executescript(self, script: str) -> None:
        """Several statements, no parameters (sent as they are: no placeholder scan)."""
        with self._errors():
            self.raw.execute(script)

    def __enter__(self) -> "PgConnection":
        tx = self.raw.transaction()
        with self._errors():
            tx.__enter__()
        self._transactions.append(tx)
        return self

    def __exit__(self, *exc_info) -> bool:
        with self._errors():
            return bool(self._transactions.pop().__exit__(*exc_info))

    def commit(self) -> None:
        """Nothing to do outside `with conn:` (autocommit); there the block commits."""

    def close(self) -> None:
        self.raw.close()

    @property
    def broken(self) -> bool:
        """The server went away or the connection was closed: do not hand it out again."""
        return bool(self.raw.broken or self.raw.closed)


Connection = SqliteConnection | PgConnection


def _pg_connect(database_url: str) -> PgConnection:
    require_driver(POSTGRESQL)
    import psycopg
    options = {"autocommit": True}
    if "connect_timeout=" not in database_url:
        options["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name=" not in database_url:
        options["application_name"] = APPLICATION_NAME
    try:
        return PgConnection(psycopg.connect(database_url, **options))
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to {redact(database_url)}: {str(exc).strip()}",
                            getattr(exc, "sqlstate", None)) from exc


def _sqlite_connect(database_url: str) -> SqliteConnection:
    path = Path(database_url[len(_SQLITE_PREFIX):])
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, factory=SqliteConnection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, fast commits
    return conn


def connect(database_url: str) -> Connection:
    """A new connection to DATABASE_URL (no schema: core.history.connect adds it)."""
    return _pg_connect(database_url) if kind_of(database_url) == POSTGRESQL else _sqlite_connect(database_url)


def redact(database_url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", database_url)


# ---- catalog ----------------------------------------------------------------------------------
_PG_INDEXES = """
SELECT i.relname, a.attname FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
WHERE x.indrelid = to_regclass(?) ORDER BY i.relname, k.pos"""
_PG_COLUMNS = ("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 "
               "AND NOT attisdropped ORDER BY attnum")


def _check_ident(name: str) -> str:
    if not re.fullmatch(IDENT, name or ""):
        raise ValueError(f"not a table name: {name!r}")
    return name


def indexes(conn: Connection, table: str) -> dict[str, list[str]]:
    """{index name: [column, ...] in key order} of `table` (primary-key indexes included)."""
    table = _check_ident(table)
    out: dict[str, list[str]] = {}
    if conn.dialect == POSTGRESQL:
        for name, col in conn.execute(_PG_INDEXES, (table,)).fetchall():
            out.setdefault(name, []).append(col)
        return out
    for row in conn.execute(f"PRAGMA index_list({table})").fetchall():
        out[row[1]] = [r[2] for r in conn.execute(f"PRAGMA index_info({row[1]})").fetchall()]
    return out


def columns(conn: Connection, table: str) -> list[str]:
    """Column names of `table` in declaration order ([] when there is no such table)."""
    table = _check_ident(table)
    if conn.dialect == POSTGRESQL:
        return [r[0] for r in conn.execute(_PG_COLUMNS, (table,)).fetchall()]
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def year_of(column: str, kind: str) -> str:
    """SQL for the 4-character year of an ISO-date TEXT column, in the dialect's own idiom."""
    return f"strftime('%Y', {column})" if kind == SQLITE else f"substr({column}, 1, 4)"


# ---- plans ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A query plan read into one shape. `sorts`: plan lines of temporary sorts (SQLite's
    TEMP B-TREE, PostgreSQL's Sort nodes)."""
    lines: list[str]
    full_scans: list[str] = field(default_factory=list)
    index_scans: list[str] = field(default_factory=list)
    sorts: list[str] = field(default_factory=list)
    indexes_used: set[str] = field(default_factory=set)


def explain(conn: Connection, sql: str, params: Sequence, table_indexes: dict[str, dict]) -> Plan:
    """The plan of `sql`; `table_indexes` ({table: indexes(conn, table)}) names SQLite's
    primary-key autoindexes, which its plan calls PRIMARY KEY."""
    if conn.dialect == POSTGRESQL:
        [[doc]] = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()
        return _pg_plan(doc[0]["Plan"])
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return _sqlite_plan([r[3] for r in rows], table_indexes)


def _sqlite_plan(lines: list[str], table_indexes: dict[str, dict]) -> Plan:
    plan = Plan(lines)
    for detail in lines:
        m = re.match(rf"SCAN (?:TABLE )?({IDENT})(.*)", detail)
        if m:
            (plan.index_scans if "INDEX" in m.group(2) else plan.full_scans).append(m.group(1))
        plan.indexes_used.update(re.findall(rf"INDEX ({IDENT})", detail))
        if "PRIMARY KEY" in detail:
            plan.indexes_used.update(i for ix in table_indexes.values() for i in ix
                                     if i.startswith("sqlite_autoindex"))
        if "TEMP B-TREE" in detail:
            plan.sorts.append(detail)
    return plan


_PG_INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
_PG_SORTS = {"Sort", "Incremental Sort"}
_PG_DETAILS = ("Sort Key", "Index Cond", "Recheck Cond", "Filter")


def _pg_nodes(node: dict, depth: int = 0):
    yield depth, node
    for child in node.get("Plans", ()):
        yield from _pg_nodes(child, depth + 1)


def _pg_line(node: dict, depth: int) -> str:
    """One node as EXPLAIN's text form writes its first line, with its conditions in brackets."""
    kind = node["Node Type"]
    text = kind + (" Backward" if node.get("Scan Direction") == "Backward" else "")
    if "Index Name" in node:
        text += f" on {node['Index Name']}" if kind == "Bitmap Index Scan" else f" using {node['Index Name']}"
    if "Relation Name" in node:
        text += f" on {node['Relation Name']}"
    details = [f"{k}: {v if isinstance(v, str) else ', '.join(v)}" for k in _PG_DETAILS
               for v in [node.get(k)] if v]
    prefix = "  " * (depth - 1) + "->  " if depth else ""
    return prefix + text + (f" [{'; '.join(details)}]" if details else "")


def _pg_plan(root: dict) -> Plan:
    plan = Plan([])
    for depth, node in _pg_nodes(root):
        line = _pg_line(node, depth)
        plan.lines.append(line)
        kind = node["Node Type"]
        if kind == "Seq Scan":
            plan.full_scans.append(node["Relation Name"])
        elif kind in _PG_INDEX_SCANS:
            plan.index_scans.append(node["Relation Name"])
        if "Index Name" in node:
            plan.indexes_used.add(node["Index Name"])
        if kind in _PG_SORTS:
            plan.sorts.append(line)
    return plan
