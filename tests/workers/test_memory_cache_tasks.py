"""memory.optimize, cache.optimize, database.analyze: locks, idempotence, history with
before/after figures, schedules from settings, and a real worker running them."""
from __future__ import annotations

import json

import pytest

from celery_config import celery_app
from core import cache, memory, schema
from core.settings import get_settings
from tests.conftest import wait_for
from workers import _optimize, cache_tasks, database_tasks, memory_tasks

DB = 6


@pytest.fixture
def own_db(own_db, redis_url, monkeypatch):
    # the conftest database DB, and the task module's client pointed at it
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    monkeypatch.setattr(_optimize, "_client", lambda: schema.connect(url))
    return own_db


def test_memory_optimize_records_gc_and_memory_before_after_in_history(own_db):
    out = memory_tasks.optimize("manual")
    assert out["status"] == "done"
    [run] = memory.read_history(own_db, "memory")
    assert run["trigger"] == "manual" and [g["generation"] for g in run["gc"]] == [0, 1, 2]
    whats = {c["what"]: c for c in run["changes"]}
    assert whats["worker rss_bytes"]["before"] > 0 and whats["console rss_bytes"]["after"] > 0
    assert own_db.get(schema.opt_lock("memory")) is None


@pytest.mark.parametrize("task,area", [(memory_tasks.optimize, "memory"), (cache_tasks.optimize, "cache"),
                                       (database_tasks.analyze, "database")])
def test_a_run_is_skipped_while_another_holds_the_lock(own_db, task, area):
    own_db.set(schema.opt_lock(area), "other", ex=30)
    assert task("manual")["status"] == "skipped"
    assert own_db.xlen(schema.opt_history(area)) == 0
    assert task("sideways")["status"] == "failed"


def test_cache_optimize_turns_published_profiles_into_a_stored_policy(own_db):
    clock = [0.0]
    cm = cache.CacheManager(own_db, clock=lambda: clock[0], record_telemetry=False)
    cm.enable_access_log()
    for step in range(50):
        clock[0] = step * 3.0
        for i in range(40):
            cm.get_cached_data(f"risk:{i}", lambda: 1.0)
    cache.publish_statistics(own_db, cm, proc="h:1")
    first = cache_tasks.optimize("manual")
    assert first["status"] == "done"
    policy = schema.read_json_hash(own_db, schema.CACHE_POLICY)
    assert policy["risk"]["ttl_s"] == pytest.approx(6.0)
    assert int(own_db.get(schema.CACHE_L1_SIZE)) == max(40, cache.MIN_L1_ENTRIES)   # working set 40, floor
    assert {c["what"] for c in first["changes"]} == {"ttl:risk", "l1_max_entries"}
    second = cache_tasks.optimize("manual")            # idempotent: nothing left to change
    assert second["changes"] == []
    runs = memory.read_history(own_db, "cache")
    assert len(runs) == 2 and runs[0]["effect"]["hit_rate_before"] == runs[1]["hit_rate_now"]
    adopter = cache.CacheManager(own_db, record_telemetry=False)
    adopter.load_policy()
    assert adopter.policy["risk"]["ttl_s"] == pytest.approx(6.0) and adopter.max_entries == max(40, cache.MIN_L1_ENTRIES)


def test_database_analyze_stores_findings_and_keeps_only_indexes_that_help(own_db):
    out = database_tasks.analyze("manual")
    assert out["status"] == "done"
    findings = schema.loads(own_db.get(schema.DB_FINDINGS))
    assert {q["name"] for q in findings["queries"]} >= {"closes window", "bars of one year"}
    [run] = memory.read_history(own_db, "database")
    for change in run["changes"]:
        assert change["before"] is not None and change["after"] is not None
    assert database_tasks.analyze("manual")["status"] == "done"     # a second run is harmless


def test_beat_schedules_the_three_optimizations_from_settings_with_expiry():
    s = get_settings()
    sched = celery_app.conf.beat_schedule
    for name, every in (("memory.optimize", s.memory_optimize_interval_s),
                        ("cache.optimize", s.cache_optimize_interval_s),
                        ("database.analyze", s.database_analyze_interval_s)):
        assert sched[name]["task"] == name and sched[name]["schedule"] == every
        assert sched[name]["options"]["expires"] > 0


@pytest.mark.timeout(90)
def test_real_worker_runs_cache_optimize_sent_by_name_and_records_it(redis_url, celery_worker_process):
    client = schema.connect(redis_url)
    before = client.xlen(schema.opt_history("cache"))
    result = celery_app.send_task("cache.optimize", kwargs={"trigger": "manual"})
    out = result.get(timeout=60)
    assert out["status"] in ("done", "skipped")
    if out["status"] == "done":
        assert client.xlen(schema.opt_history("cache")) == before + 1
        assert json.loads(client.get(schema.opt_last("cache")))["trigger"] == "manual"
    wait_for(lambda: client.get(schema.opt_lock("cache")) is None, 10, what="lock released")
