"""The pipeline runner under the emergency stop, as real processes: it flattens its book when
halted and audits the liquidation, a runner restarted while halted stays halted (and flattens
the book it restored), and with Redis unreachable it stops trading within the heartbeat."""
from __future__ import annotations

import os
import signal
import time

import pytest

from core import emergency, redis_server, safety, schema
from tests.conftest import free_port, stop_process, wait_for
from tests.workers.test_pipeline_runner import start_runner

pytestmark = pytest.mark.timeout(120)
DB = 9


def status(client) -> dict:
    return schema.loads(client.get(schema.PIPELINE_STATUS)) or {}


def positions(client) -> dict:
    return {k.decode(): schema.loads(v)["qty"] for k, v in client.hgetall(schema.BROKER_POSITIONS).items()}


def orders(client) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(schema.BROKER_ORDERS)]


@pytest.fixture
def db_url(redis_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    schema.connect(url).flushdb()
    yield url
    schema.connect(url).flushdb()


def test_runner_restarted_while_halted_stays_halted_and_flattens_its_restored_book(tmp_path, db_url):
    client = schema.connect(db_url)
    proc = start_runner(tmp_path, db_url)
    try:
        wait_for(lambda: any(positions(client).values()), 40, what="open positions")
    finally:
        stop_process(proc)
    held = {s: q for s, q in positions(client).items() if q}
    assert held
    emergency.emergency_stop(client, "halt while the runner is down", "t", "cli")
    restarted = time.time()
    proc = start_runner(tmp_path, db_url)
    try:
        wait_for(lambda: [a for a in emergency.recent_audit(client, 10) if a["action"] == "liquidation"],
                 40, what="the liquidation audit record")
        st = wait_for(lambda: (s := status(client)).get("ts", 0) > restarted + 1
                      and s.get("ticks_total", 0) > 0 and s, 20, what="a fresh status of a ticking runner")
        assert st["trading_state"] == "HALTED"
        wait_for(lambda: not any(positions(client).values()), 5, what="flat positions persisted")
        liq = [a for a in emergency.recent_audit(client, 10) if a["action"] == "liquidation"][0]
        assert {o["symbol"] for o in liq["details"]["orders"]} == set(held)
        after = [o for o in orders(client) if float(o["ts"]) > restarted]
        assert after and all(o["kind"] == "liquidation" for o in after)
        assert safety.read_state(client) == "HALTED"           # the runner never overwrote it
    finally:
        stop_process(proc)


def test_pipeline_stops_trading_within_the_heartbeat_when_redis_is_killed(tmp_path):
    port = free_port()
    data = tmp_path / "redis"
    server = redis_server.start(port, data, appendonly=False)
    url = f"redis://127.0.0.1:{port}/0"
    client = schema.connect(url)
    heartbeat = 2.0
    proc = start_runner(tmp_path, url, CONSOLE_GUARD_HEARTBEAT=str(heartbeat), CONSOLE_TICK_RATE="500")
    try:
        wait_for(lambda: status(client).get("orders_total", 0) > 50, 40, what="orders")
        time.sleep(1.0)
        # read before the kill: this server keeps no data across it (appendonly off)
        traded_until = max(float(o["ts"]) for o in wait_for(lambda: orders(client), 10,
                                                             what="persisted orders"))
        killed = time.time()
        server.kill()
        server.wait(5)
        time.sleep(heartbeat + 2.0)
        back = time.time()               # before the restart: it may reconnect at once
        server = redis_server.start(port, data, appendonly=False)
        wait_for(lambda: client.xlen(schema.BROKER_ORDERS) > 0, 15, what="the backlog persisted")
        wait_for(lambda: status(client).get("ts", 0) > back, 10, what="a fresh status")
        ts = sorted(float(o["ts"]) for o in orders(client))
        gap = [t for t in ts if killed + heartbeat < t < back]
        info = (traded_until, killed, back, ts[-5:], len(ts))
        assert killed - traded_until < 3.0, info             # it was trading up to the outage
        assert gap == [], info                               # nothing after the heartbeat ran out
        assert max(t for t in ts if t < back) <= killed + heartbeat, info
    finally:
        stop_process(proc)
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(5)
