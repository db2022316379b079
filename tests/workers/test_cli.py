"""`python -m workers.cli halt | resume | state` as a real subprocess against Redis."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core import emergency, safety, schema
from tests.conftest import ROOT

DB = 8


@pytest.fixture
def db_url(redis_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    schema.connect(url).flushdb()
    yield url
    schema.connect(url).flushdb()


def cli(url, *args):
    p = subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=30, env={**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)})
    return p.returncode, json.loads(p.stdout or p.stderr)


def test_cli_halt_state_resume_and_resume_no_op(db_url):
    client = schema.connect(db_url)
    assert cli(db_url, "state") == (0, {"state": "ACTIVE", "last_transition": None})
    rc, out = cli(db_url, "halt", "--reason", "night drill")
    assert rc == 0 and out["state"] == "HALTED" and safety.read_state(client) == "HALTED"
    audit = emergency.recent_audit(client, 1)[0]
    assert audit["source"] == "cli" and audit["user"].startswith("cli:") and audit["reason"] == "night drill"
    assert cli(db_url, "state")[1]["last_transition"]["source"] == "cli"
    rc, out = cli(db_url, "resume")
    assert rc == 0 and out["changed"] and out["state"] == "ACTIVE"
    rc, out = cli(db_url, "resume")
    assert rc == 0 and not out["changed"] and "not halted" in out["message"]


def test_cli_rejects_an_empty_reason_and_reports_redis_down(db_url):
    rc, out = cli(db_url, "halt", "--reason", "  ")
    assert rc == 2 and "reason" in out["error"]
    assert cli("redis://127.0.0.1:1/0", "state")[0] == 1
