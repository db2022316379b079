"""Cache and Memory pages in real Chromium against the whole console: press the buttons, see
the Celery task's result and the run in the history."""
from __future__ import annotations

import pytest

from core import cache, schema
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


def test_cache_page_optimize_now_runs_the_task_and_shows_its_result(console, page, redis_url):
    client = schema.connect(redis_url)
    clock = [0.0]
    cm = cache.CacheManager(client, clock=lambda: clock[0], record_telemetry=False)
    cm.enable_access_log()
    for step in range(30):                       # a prefix re-read every 4 s
        clock[0] = step * 4.0
        for i in range(25):
            cm.get_cached_data(f"browsertest:{i}", lambda: [1.0, 2.0])
    cache.publish_statistics(client, cm, proc="browsertest:1")
    page.goto(console + "/cache")
    wait_for(lambda: "L1 memory" in page.inner_text("#cache-tier-stats"), 30, 0.5, "tier table")
    wait_for(lambda: "Redis used memory" in page.inner_text("#cache-redis-figures"), 30, 0.5, "Redis figures")
    page.click("#cache-optimize-button")
    wait_for(lambda: "done" in page.inner_text("#cache-optimize-result")
             or "skipped" in page.inner_text("#cache-optimize-result"), 60, 0.5, "the task's result")
    if "skipped" in page.inner_text("#cache-optimize-result"):   # a beat run held the lock: press again
        wait_for(lambda: client.get(schema.opt_lock("cache")) is None, 30, 0.5, "lock free")
        page.click("#cache-optimize-button")
        wait_for(lambda: "done" in page.inner_text("#cache-optimize-result"), 60, 0.5, "the task's result")
    wait_for(lambda: "manual" in page.inner_text("#cache-history-table"), 30, 0.5, "the run in the history")
    wait_for(lambda: "browsertest" in page.inner_text("#cache-policy-table"), 30, 0.5, "the tuned prefix")
    assert "8.0" in page.inner_text("#cache-policy-table")       # 2 x the 4 s re-read interval
    assert not page.console_errors, page.console_errors
    client.hdel(schema.CACHE_POLICY, "browsertest")
    client.delete(schema.cache_stats("browsertest:1"))


def test_memory_page_run_optimization_now_shows_gc_result_and_history(console, page):
    page.goto(console + "/memory")
    wait_for(lambda: "Console memory" in page.inner_text("#memory-kpi-row"), 30, 0.5, "memory KPIs")
    page.click("#memory-optimize-button")
    wait_for(lambda: any(w in page.inner_text("#memory-optimize-result") for w in ("done", "skipped")),
             90, 0.5, "the task's result")
    wait_for(lambda: "worker rss_bytes" in page.inner_text("#memory-history-table"), 30, 0.5, "history")
    assert "Gen" in page.inner_text("#memory-gc")
    assert not page.console_errors, page.console_errors
