"""The whole console for browser tests: worker, beat, pipeline, gunicorn; and headless Chromium."""
from __future__ import annotations

import sys
import urllib.request

import pytest

from core import schema
from tests.conftest import ADMIN_PASSWORD, _spawn, free_port, stop_process, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except Exception:
        return False


@pytest.fixture(scope="session")
def pipeline_process(redis_url):
    proc = _spawn([sys.executable, "-m", "workers.pipeline_runner"], "pipeline")
    client = schema.connect(redis_url)
    wait_for(lambda: client.get(schema.heartbeat("pipeline")), 90, what="pipeline heartbeat")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def web_server(redis_url):
    """gunicorn with two workers serving the app: (url, master process)."""
    port = free_port()
    proc = _spawn([sys.executable, "-m", "gunicorn", "wsgi:server", "--config", "gunicorn.conf.py",
                   "--bind", f"127.0.0.1:{port}", "--workers", "2"], "web")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _http_ok(url + "/login"), 60, what="gunicorn serving the app")
    yield url, proc
    stop_process(proc)


@pytest.fixture(scope="session")
def web_url(web_server):
    return web_server[0]


@pytest.fixture(scope="session")
def console(redis_url, celery_worker_process, celery_beat_process, pipeline_process, web_url):
    """Everything `make run` starts, against the test Redis."""
    return web_url


@pytest.fixture(scope="module")
def browser():
    # Module scope: Playwright's sync API keeps an event loop running in this thread while it
    # is open, which would break asyncio.run() in any test collected after it.
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def login(pg, base_url: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    """Sign in through the real login form; the session cookie stays in the page's context."""
    pg.goto(base_url + "/login")
    pg.fill("#login-username", username)
    pg.fill("#login-password", password)
    pg.click("#login-submit")
    pg.wait_for_url(lambda url: "/login" not in url, timeout=15000)


@pytest.fixture
def anonymous_page(browser):
    """A browser tab with no session."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture
def page(browser, request):
    """A browser tab signed in as admin when the test uses the `console` (else anonymous);
    records page errors and 5xx responses in `page.console_errors`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    if "console" in request.fixturenames:
        login(pg, request.getfixturevalue("console"))
    errors: list[str] = []
    requests: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    pg.on("request", lambda r: requests.append(r.url))
    pg.console_errors = errors
    pg.requested_urls = requests
    yield pg
    context.close()
