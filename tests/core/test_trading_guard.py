"""The public trading guard: reacts to published transitions within milliseconds, starts
halted when the stored state is HALTED, fails closed within its heartbeat when Redis dies or
hangs, and halts a separate process that uses nothing but the guard."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core import emergency, redis_server, safety, schema
from core.trading_guard import TradingGuard
from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.timeout(60)
DB = 11


@pytest.fixture
def url(redis_url):
    u = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    c = schema.connect(u)
    c.flushdb()
    yield u
    c.flushdb()


def test_guard_blocks_until_first_read_and_starts_halted_when_state_is_halted(url):
    safety.transition(schema.connect(url), "HALTED", "earlier halt", "button")
    guard = TradingGuard(url, heartbeat_s=1.0)
    assert not guard.may_submit() and guard.state == "UNKNOWN"      # never read: closed
    guard.start()
    try:
        assert guard.state == "HALTED" and not guard.may_submit()
        assert not guard.may_submit(reducing=True)
        assert guard.may_submit(reducing=True, liquidation=True)
    finally:
        guard.stop()


def test_guard_reacts_to_a_published_halt_within_milliseconds(url):
    client = schema.connect(url)
    guard = TradingGuard(url, heartbeat_s=2.0).start()
    seen = []
    guard.on_change(lambda old, new: seen.append((new, time.perf_counter())))
    try:
        assert guard.may_submit()
        time.sleep(0.05)                  # let the subscription settle
        t0 = time.perf_counter()
        emergency.emergency_stop(client, "test", "t", "api")
        wait_for(lambda: not guard.may_submit(), 1.0, interval=0.001, what="guard halted")
        assert guard.messages >= 1
        assert seen[0][0] == "HALTED" and seen[0][1] - t0 < 0.2
        emergency.resume_trading(client, "t", "api")
        wait_for(guard.may_submit, 1.0, interval=0.001, what="guard active again")
        safety.transition(client, "REDUCING", "test", "test")
        wait_for(lambda: guard.state == "REDUCING", 1.0, interval=0.001, what="reducing")
        assert not guard.may_submit() and guard.may_submit(reducing=True)
    finally:
        guard.stop()


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_guard_stops_orders_within_the_heartbeat_when_redis_is_unreachable(tmp_path, how):
    port = free_port()
    proc = redis_server.start(port, tmp_path / "redis", appendonly=False)
    url = f"redis://127.0.0.1:{port}/0"
    heartbeat = 0.6
    guard = TradingGuard(url, heartbeat_s=heartbeat).start()
    try:
        assert guard.may_submit()
        t0 = time.monotonic()
        if how == "killed":
            proc.kill()
            proc.wait(5)
        else:
            os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: not guard.may_submit(), heartbeat + 0.5, interval=0.005, what="guard closed")
        assert time.monotonic() - t0 <= heartbeat + 0.1
        assert guard.state == "UNKNOWN"
        time.sleep(heartbeat)
        assert not guard.may_submit()                                   # stays closed
        if how == "killed":
            proc = redis_server.start(port, tmp_path / "redis", appendonly=False)
        else:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(guard.may_submit, 5, what="guard open again once Redis answers")
    finally:
        guard.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(5)


# A trading process that knows nothing of the console but the public guard API.
GUARD_CLIENT = textwrap.dedent("""
    import json, sys, time
    import redis
    from core.broker import PaperBroker
    from core.emergency import Liquidator
    from core.trading_guard import TradingGuard

    url, key = sys.argv[1], sys.argv[2]
    guard = TradingGuard(url, heartbeat_s=1.0)
    broker = PaperBroker(["XYZ"], 1e6, gate=guard.gate)
    liq = Liquidator(broker)
    guard.on_change(lambda old, new: liq.start() if new == "HALTED" else None)
    guard.start()
    out = redis.Redis.from_url(url)
    accepted, last_ts, side = 0, 0.0, 1
    while True:
        bid, ask = 99.0, 101.0
        if liq.active:
            liq.on_quote(0, bid, ask)
        elif broker.submit(0, side, 1.0, bid, ask) is not None:
            accepted, last_ts = accepted + 1, time.time()
            side = 1 if broker.position_qty(0) <= 0 else (1 if accepted % 3 else -1)
        out.set(key, json.dumps({"accepted": accepted, "last_ts": last_ts, "state": guard.state,
                                 "qty": broker.position_qty(0)}))
        time.sleep(0.003)
""")


def test_a_separate_process_using_only_the_guard_is_halted_and_flattens(url):
    client = schema.connect(url)
    key = "test:guard-client"
    proc = subprocess.Popen([sys.executable, "-c", GUARD_CLIENT, url, key], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        read = lambda: schema.loads(client.get(key)) or {}          # noqa: E731
        wait_for(lambda: read().get("accepted", 0) > 20 and read().get("qty"), 20, what="client trading")
        halted_at = emergency.emergency_stop(client, "guard test", "t", "api")["ts"]
        wait_for(lambda: read().get("state") == "HALTED" and read().get("qty") == 0, 5,
                 what="client halted and flat")
        time.sleep(0.3)
        after = read()
        assert after["last_ts"] <= halted_at + 0.05                  # no strategy order after the halt
        count = after["accepted"]
        time.sleep(0.3)
        assert read()["accepted"] == count
        emergency.resume_trading(client, "t", "api")
        wait_for(lambda: read().get("accepted", 0) > count, 5, what="client trading again")
    finally:
        proc.kill()
        proc.wait(5)
