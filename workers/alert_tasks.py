"""Celery task `alerts.evaluate`: advance the alert rules, then notify the optional webhook."""
from __future__ import annotations

import functools
import json
import logging
import urllib.error
import urllib.request

import redis
from celery.exceptions import SoftTimeLimitExceeded

from celery_config import celery_app
from core import alerting, schema
from core.locks import single_run
from core.settings import get_settings

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_S = 2.0


@functools.lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return schema.connect(get_settings().redis_url)


def _notify(url: str, events: list[dict]) -> None:
    """POST the events as JSON; a dead webhook is logged, never retried into a backlog."""
    body = json.dumps({"source": "trading-console", "events": events}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        log.warning("alert webhook %s failed: %s", url, exc)


@celery_app.task(name="alerts.evaluate", soft_time_limit=5, ignore_result=True)
def evaluate_task() -> str:
    """Evaluate every rule once; returns a short report ('skipped', 'failed', 'N events')."""
    client = _client()
    try:
        with single_run(client, schema.ALERTING_LOCK, 10) as mine:
            if not mine:
                return "skipped"
            events = alerting.evaluate(client, alerting.default_rules(), alerting.measure(client))
    except redis.RedisError as exc:
        log.warning("alerts.evaluate: Redis unavailable: %s", exc)
        return "failed"
    except SoftTimeLimitExceeded:
        log.warning("alerts.evaluate: over its soft time limit")
        return "failed"
    for rule, task, kwargs in alerting.recovery_plan(events):
        try:
            celery_app.send_task(task, kwargs=kwargs)
            alerting.record_recovery(client, rule, task)
        except Exception as exc:  # noqa: BLE001  (a failed recovery must not stop the alerts)
            log.warning("alerts.evaluate: recovery %s for %s not started: %s", task, rule, exc)
    url = get_settings().alert_webhook_url
    if events and url:
        _notify(url, events)
    return f"{len(events)} events"
