"""Shared fixtures: a real Redis server for the whole run, a clean database per test,
and real Celery worker / beat processes for integration tests. Never a fake, never eager."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The environment must be in place before any project module reads settings.
_TMP = Path(tempfile.mkdtemp(prefix="console-test-"))
_REDIS_PORT = free_port()
os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_REDIS_PORT}/0"
os.environ["CONSOLE_VAR_DIR"] = str(_TMP / "var")
os.environ.setdefault("CONSOLE_BACKFILL_DAYS", "60")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ADMIN_PASSWORD = "test-admin-password"
os.environ["CONSOLE_ADMIN_PASSWORD"] = ADMIN_PASSWORD
API_TOKEN = "test-api-token-0123456789"   # the operator token of the HTTP API (app/api.py)
os.environ["CONSOLE_API_TOKEN"] = API_TOKEN
os.environ.setdefault("NUMBA_CACHE_DIR", str(_TMP / "var" / "numba"))

from core import redis_server, schema  # noqa: E402
from core.settings import get_settings  # noqa: E402


@pytest.fixture(scope="session")
def redis_url():
    proc = redis_server.start(_REDIS_PORT, _TMP / "redis", appendonly=False)
    yield os.environ["REDIS_URL"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_client(redis_url):
    client = schema.connect(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def own_db(redis_url, request):
    """A client on a Redis database of the test module's own (its `DB` constant, default 11),
    flushed before and after: the live console of the browser tests and parallel suites use
    db 0, which unit tests must not disturb nor be disturbed by."""
    number = getattr(request.module, "DB", 11)
    client = schema.connect(redis_url.rsplit("/", 1)[0] + f"/{number}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings():
    get_settings.cache_clear()
    return get_settings()


def _spawn(args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
    log = open(_TMP / f"{name}.log", "ab")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def celery_worker_process(redis_url):
    """A real `celery worker` process (prefork, 2 children) against the test Redis."""
    proc = _spawn([sys.executable, "-m", "celery", "-A", "celery_config", "worker",
                   "--loglevel=INFO", "--concurrency=2", "-Q", "celery,stress", "-n", "testworker@%h"],
                  "worker")
    client = schema.connect(redis_url)
    wait_for(lambda: any(client.scan_iter(schema.heartbeat("worker:*"))), 30, what="worker heartbeat")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def celery_beat_process(redis_url, celery_worker_process):
    """A real `celery beat` process with the console's schedule."""
    proc = _spawn([sys.executable, "-m", "celery", "-A", "celery_config", "beat",
                   "--loglevel=INFO"], "beat")
    client = schema.connect(redis_url)
    wait_for(lambda: client.get(schema.heartbeat("beat")), 30, what="beat heartbeat")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def test_tmp_dir() -> Path:
    return _TMP


# ---- PostgreSQL (DATABASE_URL=postgresql://...): a private server, stopped at the end ----------
DATABASE_KINDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the run (tests/pg_server.py). Where PostgreSQL is not
    installed the test is skipped with the reason, except under CI=true, where it fails:
    .ci/run installs it, so a skip there would hide lost coverage."""
    from tests import pg_server
    reason = pg_server.missing_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
        pytest.skip(reason)
    server = pg_server.PostgresServer(free_port()).start()
    yield server
    server.stop()


def new_database_url(request, kind: str, folder: Path) -> str:
    """A new, empty history database of `kind`: a SQLite file in `folder`, or a database of
    its own on the private PostgreSQL server."""
    if kind == "sqlite":
        return f"sqlite:///{folder / 'history.db'}"
    return request.getfixturevalue("postgres_server").create_database(f"t_{os.urandom(6).hex()}")


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request, tmp_path) -> str:
    """A fresh DATABASE_URL, once per database kind: tests using it run on both."""
    return new_database_url(request, request.param, tmp_path)
