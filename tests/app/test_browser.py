"""Real headless Chromium against the whole running console (worker, beat, pipeline, gunicorn)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)

LAST_X = """(sel) => {
  const g = document.querySelector(sel + ' .js-plotly-plot');
  if (!g || !g.data) return null;
  const xs = g.data.filter(t => t.x && t.x.length).map(t => t.x[t.x.length - 1]);
  return xs.length ? xs.sort().pop() : null;
}"""


def _as_utc(x: str) -> datetime:
    return datetime.fromisoformat(str(x).replace(" ", "T")).replace(tzinfo=timezone.utc)


def test_latency_page_charts_show_points_from_last_10s_that_advance(console, page):
    page.goto(console + "/latency")
    def fresh_point():
        x = page.evaluate(LAST_X, "#latency-stage-graph")
        return x if x and (datetime.now(timezone.utc) - _as_utc(x)).total_seconds() < 10 else None
    # the console has just started: wait for its first points (the clock must not be stale)
    first = wait_for(fresh_point, 60, 0.5, "a latency point from the last 10 s on the chart")
    second = wait_for(lambda: (x := page.evaluate(LAST_X, "#latency-stage-graph")) and
                      _as_utc(x) > _as_utc(first) and x, 20, 0.5, "the chart to advance")
    assert _as_utc(second) > _as_utc(first)
    for graph in ("#latency-p99-graph", "#latency-throughput-graph", "#latency-cdf-graph"):
        assert page.evaluate("(s) => !!document.querySelector(s + ' .js-plotly-plot')", graph)
    table = page.inner_text("#latency-table")
    for stage in ("data_processing", "model_inference", "signal_generation", "order_execution",
                  "total_pipeline"):
        assert stage in table
    assert "ok" in table or "over" in table
    assert not page.console_errors, page.console_errors


def test_overview_shows_live_kpis_and_only_local_assets(console, page):
    page.goto(console + "/")
    wait_for(lambda: "µs" in page.inner_text("#overview-kpi-p99-value")
             or "ms" in page.inner_text("#overview-kpi-p99-value"), 60, 0.5, "pipeline p99 KPI")
    wait_for(lambda: "%" in page.inner_text("#overview-kpi-cpu-value"), 30, 0.5, "CPU KPI")
    assert page.inner_text("#overview-kpi-redis-value") == "OK"
    nav = page.inner_text("nav")
    assert "Overview" in nav and "Latency" in nav
    # Offline: every request stays on the console's own origin, and Bootstrap's dark theme is local.
    foreign = [u for u in page.requested_urls if not u.startswith(console) and not u.startswith("data:")]
    assert not foreign, foreign
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == "dark"
    assert page.evaluate("[...document.styleSheets].some(s => (s.href||'').includes('bootstrap.min.css'))")
    assert not page.console_errors, page.console_errors


def test_healthz_reports_every_part_ok_when_console_runs(console):
    def fetch():
        try:
            with urllib.request.urlopen(console + "/healthz", timeout=3) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
    status, body = wait_for(lambda: (r := fetch())[0] == 200 and r, 30, 0.5, "healthz 200")
    assert body["status"] == "ok"
    assert set(body["parts"]) >= {"redis", "worker", "beat", "pipeline"}
    assert body["parts"]["pipeline"]["age_s"] < 10


def test_metrics_endpoint_serves_live_prometheus_text_from_any_gunicorn_worker(console):
    def scrape():
        with urllib.request.urlopen(console + "/metrics", timeout=3) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = resp.read().decode()
        line = next(l for l in text.splitlines()
                    if l.startswith('console_stage_latency_seconds_count{stage="total_pipeline"}'))
        return float(line.rsplit(" ", 1)[1])
    first = wait_for(lambda: scrape() > 0 and scrape(), 30, 0.5, "stage counts in /metrics")
    # several scrapes land on both workers; the counter only grows (state lives in Redis)
    later = [scrape() for _ in range(6)]
    assert all(b >= a for a, b in zip([first] + later, later))
    wait_for(lambda: scrape() > first, 15, 0.5, "the counter to advance")


@pytest.fixture
def web_with_own_redis(test_tmp_dir):
    """The web app alone on a private Redis the test may kill: (url, redis process)."""
    import sys
    from core import redis_server
    from tests.app.conftest import _http_ok
    from tests.conftest import _spawn, free_port, stop_process
    port, redis_port = free_port(), free_port()
    own_redis = redis_server.start(redis_port, test_tmp_dir / f"redis-{redis_port}", appendonly=False)
    proc = _spawn([sys.executable, "-m", "gunicorn", "wsgi:server", "--config", "gunicorn.conf.py",
                   "--bind", f"127.0.0.1:{port}", "--workers", "1"], "web-ownredis",
                  env={"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"})
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _http_ok(url + "/login"), 60, what="gunicorn on its own redis")
    yield url, own_redis
    stop_process(proc)
    if own_redis.poll() is None:
        own_redis.kill()


def test_redis_lost_mid_session_shows_banner_not_callback_errors(web_with_own_redis, page):
    from tests.app.conftest import login
    url, own_redis = web_with_own_redis
    login(page, url)
    page.goto(url + "/latency")
    page.wait_for_selector("#latency-stage-table")
    own_redis.kill()                      # Redis gone while a signed-in user watches
    own_redis.wait(timeout=10)
    for path in ("/latency", "/"):
        page.goto(url + path)
        page.wait_for_selector("#shell-redis-banner", state="visible", timeout=20000)
        assert "Redis unreachable" in page.inner_text("#shell-redis-banner")
        time.sleep(2.5)  # at least one more refresh cycle
    assert not page.console_errors, page.console_errors
    try:
        urllib.request.urlopen(url + "/healthz", timeout=5)
        raise AssertionError("healthz answered 200 with Redis down")
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        assert err.code == 503 and body["parts"]["redis"]["status"] == "fail"
    # the login page says why signing in is impossible instead of failing
    page.context.clear_cookies()
    page.goto(url + "/login")
    page.fill("#login-username", "admin")
    page.fill("#login-password", "whatever-password")
    page.click("#login-submit")
    assert "Redis unreachable" in page.inner_text("#login-error")


def test_overview_recommendations_and_report_downloads_need_a_login(console, page):
    page.goto(console + "/")
    page.wait_for_selector("#overview-recommendations-list, #overview-recommendations p", timeout=30000)
    body = page.request.get(console + "/report.json")                  # the page's session cookie
    assert body.status == 200 and "recommendations" in body.json()
    html_page = page.request.get(console + "/report.html")
    assert html_page.status == 200 and "Performance report" in html_page.text()
    with urllib.request.urlopen(console + "/report.json", timeout=5) as anonymous:   # no session
        assert "/login?next=/report.json" in anonymous.url            # sent to sign in, no data
