"""Alerts in a real browser: a new critical alert toasts on any page; the Alerts page lists
the rules with their live state and filters the history."""
from __future__ import annotations

import time

import pytest

from core import alerts, schema

pytestmark = pytest.mark.timeout(120)


def test_new_critical_alert_toasts_and_the_alerts_page_filters_history(console, page, redis_url):
    client = schema.connect(redis_url)
    page.goto(console + "/latency")
    page.wait_for_selector("#latency-stage-table")
    time.sleep(2.5)                              # the shell has taken its starting point
    marker = f"test critical {time.time():.0f}"
    alerts.raise_alert(client, "critical", "test", marker)
    page.wait_for_selector(f"#shell-toasts :text('{marker}')", timeout=15000)
    page.goto(console + "/alerts")
    page.wait_for_selector("#alerts-rules-table")
    rules = page.inner_text("#alerts-rules-table")
    for name in ("cpu_high", "memory_high", "throughput_low", "latency_total_pipeline"):
        assert name in rules
    page.wait_for_selector(f"#alerts-history-table :text('{marker}')")
    page.select_option("#alerts-severity", "info")
    page.wait_for_function("(m) => !document.querySelector('#alerts-history-table').innerText.includes(m)",
                           arg=marker, timeout=10000)
    page.select_option("#alerts-severity", "critical")
    page.wait_for_selector(f"#alerts-history-table :text('{marker}')")
    assert not page.console_errors, page.console_errors
