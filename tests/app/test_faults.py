"""Faults the web tier must survive: a gunicorn worker killed under a signed-in user."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_killed_gunicorn_worker_is_replaced_and_the_session_continues(console, web_server, page):
    page.goto(console + "/latency")
    page.wait_for_selector("#shell-user")
    master = psutil.Process(web_server[1].pid)
    workers = {p.pid for p in master.children()}
    assert len(workers) == 2
    for pid in workers:                       # kill -9 every worker: no in-memory state survives
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len({p.pid for p in master.children()} - workers) == 2, 30, 0.2,
             "gunicorn to replace both workers")
    page.reload()
    page.wait_for_selector("#shell-user", timeout=30000)   # same cookie, new workers: still signed in
    assert page.inner_text("#shell-user") == "admin (admin)"
    page.wait_for_selector("#latency-stage-table", timeout=30000)
    assert "/login" not in page.url
