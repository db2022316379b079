"""Redis faults against a whole console of its own (private Redis with the same AOF settings as
`make run`, worker, beat, pipeline, gunicorn): a restart keeps the trading state, users and
audit log and everything resumes; a 10-second outage makes the pipeline stop trading (fail
closed), the dashboard shows its banner, nothing crashes, and trading state survives."""
from __future__ import annotations

import sys
import time

import pytest

from core import redis_server, schema, users
from core.audit import recent_audit, write_audit
from tests.app.conftest import _http_ok, login
from tests.conftest import _spawn, free_port, stop_process, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def own_console(test_tmp_dir):
    redis_port, web_port = free_port(), free_port()
    data_dir = test_tmp_dir / f"faults-{redis_port}"
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {"REDIS_URL": url, "CONSOLE_VAR_DIR": str(data_dir / "var")}
    state = {"redis": redis_server.start(redis_port, data_dir / "redis")}   # AOF, as make run
    py = sys.executable
    procs = [_spawn([py, "-m", "celery", "-A", "celery_config", "worker", "--loglevel=WARNING",
                     "--concurrency=1", "-n", f"faults{redis_port}@%h"], "faults-worker", env),
             _spawn([py, "-m", "celery", "-A", "celery_config", "beat", "--loglevel=WARNING"],
                    "faults-beat", env),
             _spawn([py, "-m", "workers.pipeline_runner"], "faults-pipeline", env),
             _spawn([py, "-m", "gunicorn", "wsgi:server", "--config", "gunicorn.conf.py", "--bind",
                     f"127.0.0.1:{web_port}", "--workers", "1"], "faults-web", env)]
    client = schema.connect(url)
    web = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: _http_ok(web + "/login"), 90, 0.5, "the web app")
    wait_for(lambda: client.get(schema.heartbeat("pipeline")), 90, 0.5, "the pipeline")

    def stop_redis():
        state["redis"].terminate()
        state["redis"].wait(timeout=10)

    def start_redis():
        state["redis"] = redis_server.start(redis_port, data_dir / "redis")

    yield {"client": client, "web": web, "stop_redis": stop_redis, "start_redis": start_redis,
           "url": url}
    for proc in procs:
        stop_process(proc)
    state["redis"].terminate()
    state["redis"].wait(timeout=10)


def _orders(client) -> int:
    return int((schema.loads(client.get(schema.PIPELINE_STATUS)) or {}).get("orders_total", 0))


def test_redis_restart_keeps_halt_users_and_audit_and_everything_resumes(own_console, page):
    client, web = own_console["client"], own_console["web"]
    login(page, web)
    users.create_user(client, "rita", "rita-password", "viewer")
    write_audit(client, "note", "test", "test", "before restart", {})
    client.set(schema.TRADING_STATE, "HALTED")
    wait_for(lambda: (schema.loads(client.get(schema.PIPELINE_STATUS)) or {}).get("trading_state")
             == "HALTED", 15, 0.2, "the pipeline to see HALTED")
    time.sleep(1.5)                                  # appendfsync everysec
    own_console["stop_redis"]()
    own_console["start_redis"]()
    client = schema.connect(own_console["url"])
    assert client.get(schema.TRADING_STATE) == b"HALTED"
    assert users.authenticate(client, "rita", "rita-password", "x")["role"] == "viewer"
    assert any(e["reason"] == "before restart" for e in recent_audit(client, 50))
    # collectors, beat, worker and pipeline resume on their own
    before = time.time()
    wait_for(lambda: float(client.get(schema.heartbeat("pipeline")) or 0) > before, 30, 0.5,
             "a fresh pipeline heartbeat")
    wait_for(lambda: client.zcount(schema.METRICS_SEC, before, "+inf") > 0, 30, 0.5,
             "a metrics sample after the restart")
    page.goto(web + "/latency")                      # same session cookie: key kept in Redis
    page.wait_for_selector("#latency-stage-table", timeout=30000)
    assert "/login" not in page.url
    page.wait_for_selector("#shell-redis-banner", state="hidden", timeout=15000)
    assert not page.console_errors, page.console_errors


def test_ten_second_outage_stops_trading_shows_the_banner_and_recovers(own_console, page):
    client, web = own_console["client"], own_console["web"]
    login(page, web)
    wait_for(lambda: _orders(client) > 0, 60, 0.5, "the pipeline to trade")
    page.goto(web + "/latency")
    page.wait_for_selector("#latency-stage-table", timeout=30000)
    own_console["stop_redis"]()
    down_at = time.time()
    page.wait_for_selector("#shell-redis-banner", state="visible", timeout=10000)
    time.sleep(max(0.0, 10.0 - (time.time() - down_at)))     # ten seconds without Redis
    up_at = time.time()
    own_console["start_redis"]()
    client = schema.connect(own_console["url"])
    page.wait_for_selector("#shell-redis-banner", state="hidden", timeout=20000)
    # the orders placed while Redis was away reach Redis afterwards (bounded backlog): none
    # after the guard's 2 s heartbeat had expired, i.e. the pipeline failed closed
    resumed = wait_for(lambda: _orders(client) and _orders(client), 30, 0.5, "the pipeline's status")
    wait_for(lambda: _orders(client) > resumed, 60, 0.5, "orders again after the outage")
    during = [float(f[b"ts"]) for _, f in client.xrange(schema.BROKER_ORDERS)
              if down_at + 2.5 < float(f[b"ts"]) < up_at]
    assert not during, f"{len(during)} orders while Redis was down"
    status = schema.loads(client.get(schema.PIPELINE_STATUS))
    assert status["running"] and status["trading_state"] == "ACTIVE"
    assert not page.console_errors, page.console_errors
