"""memory.optimize keeps the daily closes memory-mapped (rebuilt when the pipeline is not there
to do it) and records what the mapping saves: the live readers' USS for it, and two processes
holding it at once as private copies and as mappings (measured at most hourly)."""
from __future__ import annotations

import os

import pytest

from core import history, memory, schema, shared_closes
from core.market import FactorModel
from core.settings import get_settings
from workers import _optimize, memory_tasks

DB = 5          # tests/core/test_memory.py's: modules run one after the other


@pytest.fixture
def task_env(own_db, redis_url, monkeypatch, tmp_path):
    """The task on its own Redis database and on a history of 100 symbols in tmp_path."""
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    monkeypatch.setattr(_optimize, "_client", lambda: schema.connect(url))
    monkeypatch.setenv("CONSOLE_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    conn = history.connect(settings.database_url)
    history.backfill(conn, FactorModel.from_seed(100, 1), 300, seed=1)
    conn.close()
    yield own_db, settings
    get_settings.cache_clear()


def test_memory_optimize_maps_the_closes_and_records_the_measured_saving(task_env):
    client, settings = task_env
    assert memory_tasks.optimize("manual")["status"] == "done"
    [run] = memory.read_history(client, "memory")
    mmap = run["mmap"]
    keep = shared_closes.keep_days(settings)
    nbytes = keep * 101 * 8
    assert mmap["name"] == shared_closes.NAME and mmap["shape"] == [keep, 101] and mmap["array_bytes"] == nbytes
    assert [r["pid"] for r in mmap["live"]["readers"]] == [os.getpid()]   # the task's own process maps it
    measured = mmap["measured"]
    assert min(measured["copy"]["uss_added"]) > 0.9 * nbytes
    assert max(measured["mmap"]["uss_added"]) < 0.1 * nbytes and measured["saved_bytes"] > 1.6 * nbytes
    rows = [c for c in run["changes"] if c["what"].startswith("mmap daily_closes")]
    assert len(rows) == 2 and rows[1]["before"] > rows[1]["after"]
    listed = schema.loads(client.hget(schema.MEMORY_MMAP, shared_closes.NAME))
    assert listed["meta"]["last_day"] == 299 and listed["measured"]["ts"] == measured["ts"]

    assert memory_tasks.optimize("manual")["status"] == "done"        # within the hour: not re-measured
    assert memory.read_history(client, "memory")[0]["mmap"]["measured"]["ts"] == measured["ts"]
