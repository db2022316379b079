"""The runner as a real subprocess against the test Redis: heartbeat, status, positions,
history, live rate control, fail-closed on HALTED, clean SIGTERM, state restored on restart."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from core import schema
from tests.conftest import ROOT, stop_process, wait_for

pytestmark = pytest.mark.timeout(90)


def start_runner(tmp_path, redis_url, **env):
    log = open(tmp_path / "runner.log", "ab")
    full_env = {**os.environ, "REDIS_URL": redis_url, "CONSOLE_VAR_DIR": str(tmp_path / "var"),
                "CONSOLE_SIM_DAY_SECONDS": "1", "CONSOLE_BACKFILL_DAYS": "40",
                "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "workers.pipeline_runner"], cwd=ROOT,
                            env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def status(client):
    return schema.loads(client.get(schema.PIPELINE_STATUS))


def sigterm_and_wait(proc) -> float:
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=10)
    assert rc == 0
    return time.monotonic() - started


def test_runner_trades_reports_persists_and_stops_cleanly_on_sigterm(redis_client, redis_url, tmp_path):
    proc = start_runner(tmp_path, redis_url)
    try:
        wait_for(lambda: redis_client.get(schema.heartbeat("pipeline")), 30, what="heartbeat")
        hb = float(redis_client.get(schema.heartbeat("pipeline")))
        assert abs(hb - time.time()) < 5 and redis_client.ttl(schema.heartbeat("pipeline")) > 0
        wait_for(lambda: (status(redis_client) or {}).get("orders_total", 0) > 0, 20, what="orders")
        st = status(redis_client)
        assert st["running"] and st["ticks_total"] > 0 and st["trading_state"] == "ACTIVE"
        # account and positions from one persisted snapshot (the status JSON is written on its
        # own schedule: with the ONNX model trading often at 1 s sim days, it may be a few
        # fills apart from the positions hash)
        tx = redis_client.pipeline(transaction=True)
        account, positions = tx.hgetall(schema.BROKER_ACCOUNT).hvals(schema.BROKER_POSITIONS).execute()
        assert float(account[b"equity"]) == pytest.approx(float(account[b"cash"]) + sum(
            p["qty"] * p["last_price"] for p in map(schema.loads, positions)), rel=1e-3)
        wait_for(lambda: redis_client.zcard(schema.PIPELINE_DAILY) >= 1, 10, what="a closed sim day")
        assert redis_client.xlen(schema.BROKER_FILLS) > 0
        stats = {k.decode(): schema.loads(v) for k, v in redis_client.hgetall(schema.BUS_STATS).items()}
        assert stats["pipeline"]["events_total"] > 0 and stats["pipeline"]["errors"] == 0
        assert stats["fill_monitor"]["mode"] == "async" and stats["fill_monitor"]["event_type"] == "Fill"
        roles = [schema.loads(v)["role"] for v in redis_client.hvals(schema.PROCS)]
        assert "pipeline" in roles                                # the metrics collector sees us

        redis_client.set(schema.PIPELINE_CONTROL, schema.dumps({"tick_rate": -5}))
        time.sleep(1.5)                                           # bad value: ignored, logged
        assert status(redis_client)["tick_rate"] == 1000 and proc.poll() is None
        redis_client.set(schema.PIPELINE_CONTROL, schema.dumps({"tick_rate": 2000}))
        wait_for(lambda: status(redis_client)["tick_rate"] == 2000, 5, what="rate change")
        assert sigterm_and_wait(proc) < 5
    finally:
        stop_process(proc)
    assert "ignored bad console:pipeline:control value" in (tmp_path / "runner.log").read_text()
    final = status(redis_client)
    assert final["running"] is False
    account = redis_client.hgetall(schema.BROKER_ACCOUNT)
    assert int(account[b"orders_total"]) == final["orders_total"]
    db = sqlite3.connect(tmp_path / "var" / "console.db")
    days = db.execute("SELECT COUNT(DISTINCT day), MAX(day) FROM daily_bars").fetchone()
    assert days[0] >= 41 and days[1] >= 40                    # 40 backfilled + live days
    assert db.execute("SELECT COUNT(*) FROM daily_trades").fetchone()[0] >= 1

    # a restart continues from the persisted account instead of starting over
    proc = start_runner(tmp_path, redis_url)
    try:
        wait_for(lambda: (status(redis_client) or {}).get("ts", 0) > final["ts"] + 0.5, 30,
                 what="status from the restarted runner")
        assert status(redis_client)["orders_total"] >= final["orders_total"]
        assert "broker state restored from Redis" in (tmp_path / "runner.log").read_text()
    finally:
        sigterm_and_wait(proc)


def test_runner_places_no_orders_while_trading_is_halted(redis_client, redis_url, tmp_path):
    redis_client.set(schema.TRADING_STATE, "HALTED")
    proc = start_runner(tmp_path, redis_url)
    try:
        wait_for(lambda: (status(redis_client) or {}).get("ticks_total", 0) > 2000, 30, what="ticks")
        st = status(redis_client)
        assert st["trading_state"] == "HALTED" and st["orders_total"] == 0
        assert redis_client.xlen(schema.BROKER_ORDERS) == 0
    finally:
        sigterm_and_wait(proc)


def test_runner_backfills_and_appends_live_days_to_postgres(redis_client, redis_url, tmp_path, request):
    from core import history
    from tests.conftest import new_database_url
    url = new_database_url(request, "postgresql", tmp_path)
    proc = start_runner(tmp_path, redis_url, DATABASE_URL=url)
    try:
        wait_for(lambda: redis_client.zcard(schema.PIPELINE_DAILY) >= 2, 40, what="two closed sim days")
    finally:
        sigterm_and_wait(proc)
    conn = history.connect(url)
    try:
        days, last = conn.execute("SELECT COUNT(DISTINCT day), MAX(day) FROM daily_bars").fetchone()
        assert days >= 42 and last >= 41                         # 40 backfilled + live days
        assert conn.execute("SELECT COUNT(*) FROM daily_trades").fetchone()[0] >= 2
    finally:
        conn.close()
    assert "backfilled" in (tmp_path / "runner.log").read_text()


def test_runner_keeps_writing_days_after_a_postgres_restart(redis_client, redis_url, tmp_path, request):
    """Kept: every closed day, the ones closed while the server restarted included (queued and
    retried on a fresh connection). Lost: nothing."""
    from core import history
    from tests.conftest import new_database_url
    url = new_database_url(request, "postgresql", tmp_path)
    server = request.getfixturevalue("postgres_server")
    proc = start_runner(tmp_path, redis_url, DATABASE_URL=url)

    def last_day() -> int:
        conn = history.connect(url)
        try:
            return history.last_day(conn)[0]
        finally:
            conn.close()
    try:
        wait_for(lambda: redis_client.zcard(schema.PIPELINE_DAILY) >= 1, 40, what="a closed sim day")
        before = last_day()
        server.restart()
        wait_for(lambda: last_day() >= before + 3, 40, 0.5, "days written after the restart")
        assert proc.poll() is None
    finally:
        sigterm_and_wait(proc)
    conn = history.connect(url)
    try:
        days = [d for (d,) in conn.execute("SELECT DISTINCT day FROM daily_bars ORDER BY day").fetchall()]
    finally:
        conn.close()
    assert days == list(range(days[0], days[-1] + 1)), "a day is missing from the history"
    assert "history database reconnected" in (tmp_path / "runner.log").read_text()


def test_runner_with_an_unreachable_database_exits_with_a_clear_message(tmp_path, redis_url):
    from tests.conftest import free_port
    proc = start_runner(tmp_path, redis_url, DATABASE_URL=f"postgresql://u@127.0.0.1:{free_port()}/console")
    assert proc.wait(timeout=30) == 2
    assert "history database unavailable: cannot connect to postgresql://" in (tmp_path / "runner.log").read_text()


def test_runner_survives_redis_outage_and_recovers_when_it_returns(tmp_path):
    from core import redis_server
    from tests.conftest import free_port
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = redis_server.start(port, tmp_path / "redis", appendonly=False)
    proc = start_runner(tmp_path, url)
    client = schema.connect(url)
    try:
        wait_for(lambda: (status(client) or {}).get("orders_total", 0) > 0, 30, what="orders")
        server.terminate()
        server.wait(timeout=10)
        time.sleep(2.5)                                      # outage: the runner must not die
        assert proc.poll() is None
        server = redis_server.start(port, tmp_path / "redis", appendonly=False)
        st = wait_for(lambda: _status_safe(client), 15, what="status after Redis returned")
        assert st["ticks_total"] > 2000 and st["running"]
        wait_for(lambda: (_status_safe(client) or {}).get("trading_state") == "ACTIVE", 10,
                 what="trading re-enabled")
        log = (tmp_path / "runner.log").read_text()
        assert "Redis unreachable" in log and "Redis reachable again" in log
        sigterm_and_wait(proc)
    finally:
        stop_process(proc)
        server.terminate()
        server.wait(timeout=10)


def _status_safe(client):
    try:
        return status(client)
    except Exception:   # the server is still starting
        return None
