"""alerts.evaluate on the real worker, and the webhook's payload on a local HTTP server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from core import schema
from tests.conftest import wait_for
from workers import alert_tasks

pytestmark = pytest.mark.timeout(60)


def test_worker_evaluates_every_rule_into_redis(celery_worker_process, redis_url):
    client = schema.connect(redis_url)
    client.delete(schema.ALERTING_STATE)
    alert_tasks.evaluate_task.delay()
    states = wait_for(lambda: schema.read_json_hash(client, schema.ALERTING_STATE), 20, 0.2,
                      "rule states written by the worker")
    assert {"cpu_high", "memory_high", "throughput_low", "latency_total_pipeline"} <= set(states)


def test_webhook_receives_the_events_as_json_and_a_dead_one_is_only_logged():
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    events = [{"rule": "cpu_high", "event": "fired", "value": 93.0, "ts": 1.0}]
    alert_tasks._notify(f"http://127.0.0.1:{server.server_port}/hook", events)
    server.server_close()
    assert received == [{"source": "trading-console", "events": events}]
    alert_tasks._notify(f"http://127.0.0.1:{server.server_port}/hook", events)   # closed: no raise


def test_recovery_task_runs_on_the_real_worker_with_an_auto_trigger(celery_worker_process, redis_url):
    from celery_config import celery_app
    from core import alerting
    from core.memory import read_history
    client = schema.connect(redis_url)
    [(rule, task, kwargs)] = alerting.recovery_plan([{"rule": "memory_high", "event": "fired"}])
    celery_app.send_task(task, kwargs=kwargs)
    run = wait_for(lambda: next((r for r in read_history(client, "memory", 20) if r.get("trigger") == "auto"),
                                None), 60, 0.5, "memory.optimize run with trigger auto")
    assert run["status"] == "done" and run["changes"]
