"""The daily closes matrix, shared by memory map (core.memory) instead of re-read per process.

Why this array. It is the one array that several console processes read again and again:
risk.compute on the Celery worker (every settings.risk_interval_s), the stress engine's
Universe in the web process (a stress submission, a CSV upload) and in the stress workers, and
memory.optimize. Each read went to the database (the whole history for the Universe). The
pipeline runner, the history's writer, rewrites the file after every simulated day; readers
keep one read-only mapping per process (core.memory.shared_arrays), so its pages are the page
cache's, held once however many processes read it. Its size is days x series x 8 bytes: about
85 kB with the defaults (504 days, 20 symbols and the index), 20 MB at the settings' bounds
(5,000 days, 500 symbols). The pipeline's ticks are not mapped: they are consumed where they
are generated (core.pipeline.Feed) and no other process reads them.

Layout: float64 [days x series]; row i is day first_day + i, every day index up to last_day
(NaN where a series has no bar that day); columns are `symbols` (the series of the newest day,
the index included, in name order). meta = {"symbols", "first_day", "last_day"}. At most
`keep_days(settings)` rows are kept.

Currency (`read`): the mapping answers only when its last day is the database's last day and
its last row equals the database's closes of that day for the requested symbols; its rows are
then what history.closes_matrix returns for those symbols (a day missing any of them dropped).
Otherwise `read` returns None and the caller reads the database, as before.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core import db, history, memory, schema

NAME = "daily_closes"
MEASURE_EVERY_S = 3600.0          # the two-process copy-vs-mapping measurement (memory.optimize)


def keep_days(settings) -> int:
    """Rows kept: the backfilled depth, and never fewer than the risk look-back needs."""
    return max(int(settings.backfill_days), int(settings.risk_lookback_days) + 1)


def _query(conn):
    return lambda sql, params: conn.execute(sql, params).fetchall()


def _store(var_dir: Path, closes: np.ndarray, symbols: list[str], first_day: int, last_day: int,
           client=None) -> Path:
    return memory.store_array(var_dir, NAME, closes, client,
                              meta={"symbols": symbols, "first_day": int(first_day), "last_day": int(last_day)})


def rebuild(conn, var_dir: Path, keep: int, client=None) -> Path | None:
    """Write the newest `keep` days of the history's closes; None when the history is empty."""
    if keep < 2:
        raise ValueError(f"keep must be at least 2 days, got {keep!r}")
    last = history.last_day(conn)
    if last is None:
        return None
    symbols = sorted(history.last_closes(conn))
    first = max(0, last[0] - keep + 1)
    return _store(var_dir, db.closes_block(_query(conn), symbols, first, last[0]), symbols, first, last[0], client)


def append_day(conn, var_dir: Path, day: int, bars: Mapping[str, Sequence[float]], keep: int,
               client=None) -> Path | None:
    """After the history stored `day` with `bars` ({symbol: (open, high, low, close, volume)}):
    the mapped rows plus this day's closes, when the mapping ends on the day before with the
    same series (a copy of at most `keep` rows, no database read); else a rebuild from `conn`."""
    current = memory.shared_arrays(var_dir).get(NAME)
    symbols = sorted(bars)
    if (current is None or current.meta.get("last_day") != day - 1 or current.meta.get("symbols") != symbols
            or keep < 2):
        return rebuild(conn, var_dir, keep, client)
    kept = current.array[len(current.array) - (keep - 1):] if len(current.array) >= keep else current.array
    row = np.array([[float(bars[s][3]) for s in symbols]])
    return _store(var_dir, np.concatenate([kept, row]), symbols, day - len(kept), day, client)


def current_mapping(conn, var_dir: Path) -> memory.MappedArray | None:
    """This process's mapping of the closes when it is current: it ends on the database's last
    day, with the same series and the same closes that day. None otherwise (or absent)."""
    mapped = memory.shared_arrays(var_dir).get(NAME)
    if mapped is None or len(mapped.array) == 0:
        return None
    last = history.last_day(conn)
    if last is None or last[0] != mapped.meta.get("last_day"):
        return None
    latest = history.last_closes(conn)
    symbols = mapped.meta.get("symbols") or []
    if sorted(latest) != symbols:
        return None
    same = all(latest[s] == x for s, x in zip(symbols, mapped.array[-1].tolist()))
    return mapped if same else None


def read(conn, var_dir: Path, symbols: Sequence[str], last_rows: int | None = None) -> np.ndarray | None:
    """Closes of `symbols` (columns, in that order) by day, oldest first, days missing any of
    them dropped: the newest `last_rows` days (all when None). None when the mapping is absent
    or not current (`current_mapping`), lacks a symbol, or keeps fewer days than asked."""
    mapped = current_mapping(conn, var_dir) if symbols else None
    if mapped is None:
        return None
    index = {s: i for i, s in enumerate(mapped.meta["symbols"])}
    if any(s not in index for s in symbols):
        return None
    sub = mapped.array[:, [index[s] for s in symbols]]   # a private array: the mapping stays read-only
    rows = sub[~np.isnan(sub).any(axis=1)]
    whole_history = mapped.meta.get("first_day") == 0
    if last_rows is None:
        return rows if whole_history else None
    if len(rows) < last_rows and not whole_history:
        return None
    return rows[-last_rows:]


# ---- memory.optimize: keep it current and measure what it saves ----------------------------
def _measure_hourly(s, entry: dict) -> dict:
    """Two processes holding the closes at once, as private copies and as mappings
    (core.memory.measure_mmap_saving), at most every MEASURE_EVERY_S: the last one otherwise."""
    last = entry.get("measured") or None
    if last and time.time() - last.get("ts", 0) < MEASURE_EVERY_S:
        return last
    return {"ts": time.time(), **memory.measure_mmap_saving(s.var_dir, NAME, readers=2)}


def refresh_and_measure(client, s, pids: dict[int, str]) -> dict | None:
    """The memory-mapped daily closes: rebuilt when absent or behind the
    history (the pipeline runner keeps it current while it runs), then what it saves, measured:
    the console processes mapping it now (smaps) and the hourly two-process comparison."""
    conn = history.connect(s.database_url)
    try:
        mapped = current_mapping(conn, s.var_dir)
        if mapped is None and rebuild(conn, s.var_dir, keep_days(s), client):
            mapped = current_mapping(conn, s.var_dir)
    finally:
        conn.close()
    if mapped is None:
        return None                               # no history yet
    entry = schema.loads(client.hget(schema.MEMORY_MMAP, NAME)) or {}
    live = memory.mapped_usage(s.var_dir, NAME, pids)
    measured = _measure_hourly(s, entry)
    client.hset(schema.MEMORY_MMAP, NAME, schema.dumps(
        {"path": str(mapped.path), "shape": list(mapped.array.shape), "dtype": mapped.array.dtype.str,
         "bytes": int(mapped.array.nbytes), "t": mapped.written_at, "meta": mapped.meta,
         "live": live, "measured": measured}))
    return {"name": NAME, "shape": list(mapped.array.shape),
            "array_bytes": int(mapped.array.nbytes), "live": live, "measured": measured}


def saving_changes(mmap: dict) -> list[dict]:
    """The optimization history's rows: USS of the readers as private copies vs as mappings."""
    live, measured = mmap["live"], mmap["measured"]
    n = len(live["readers"])
    return [{"what": f"mmap {mmap['name']}: USS of its {n} live reader(s), private copies vs mapped",
             "before": live["rss_bytes"], "after": live["uss_bytes"]},
            {"what": f"mmap {mmap['name']}: USS of {measured['readers']} processes holding it, "
                     "copies vs mapped (measured)",
             "before": sum(measured["copy"]["uss_added"]), "after": sum(measured["mmap"]["uss_added"])}]
