"""`python -m workers.report`: the report on the command line, and clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, free_port


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_prints_summary_json_and_html(redis_url):
    summary = _run()
    assert summary.returncode == 0 and "total_pipeline p99" in summary.stdout
    doc = json.loads(_run("--json").stdout)
    assert "recommendations" in doc and "latency" in doc
    assert _run("--html").stdout.startswith("<!DOCTYPE html>")


def test_cli_bad_window_and_dead_redis_are_clear_errors():
    bad = _run("--window", "5")
    assert bad.returncode == 2 and "--window" in bad.stderr
    dead = _run(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert dead.returncode == 2 and "Redis unavailable" in dead.stderr
