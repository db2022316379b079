"""The console's own Redis keeps what matters across a restart, even a kill -9 (AOF, fsync 1 s)."""
from __future__ import annotations

import signal
import time

import pytest

from core import redis_server, schema, users
from core.audit import recent_audit, write_audit
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


def test_trading_state_users_and_audit_survive_a_killed_redis(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = redis_server.start(port, tmp_path)        # the same arguments `make run` uses
    client = schema.connect(url)
    client.set(schema.TRADING_STATE, "HALTED")
    users.create_user(client, "olga", "olga-password", "operator")
    write_audit(client, "halt", "olga", "test", "persistence check", {"n": 1})
    time.sleep(1.5)                                     # appendfsync everysec: on disk by now
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    server = redis_server.start(port, tmp_path)
    try:
        client = schema.connect(url)
        assert client.get(schema.TRADING_STATE) == b"HALTED"
        assert users.authenticate(client, "olga", "olga-password", "x")["role"] == "operator"
        assert recent_audit(client, 5)[0]["reason"] == "persistence check"
    finally:
        server.terminate()
        server.wait(timeout=10)
