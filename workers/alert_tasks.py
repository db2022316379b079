"""Celery tasks: `alerts.evaluate` advances the alert rules (thresholds and for-durations from
the live runtime settings), starts their recoveries and notifies the optional webhook;
`alerts.recover_throughput` is low throughput's recovery (more parallelism or more caching,
through the runtime settings as user "system"), and `alerts.recovery_effect` records the
throughput measured a while after it, beside the figure before."""
from __future__ import annotations

import functools
import json
import logging
import os
import urllib.error
import urllib.request

import redis
from celery.exceptions import SoftTimeLimitExceeded

from celery_config import celery_app
from core import alerting, runtime_config, schema
from core.locks import single_run
from core.settings import get_settings

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_S = 2.0
EFFECT_DELAY_S = 30.0          # throughput is measured over 10 s windows: wait for fresh ones


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
            rules = alerting.default_rules(runtime_config.live("worker").values)
            events = alerting.evaluate(client, rules, alerting.measure(client))
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


def _ops(client) -> float | None:
    return alerting.measure(client).get("throughput_ops_s")


def _fmt_ops(ops) -> str:
    return "n/a" if ops is None else f"{ops:.0f} ticks/s"


@celery_app.task(name="alerts.recover_throughput", soft_time_limit=10, ignore_result=True)
def recover_throughput(rule: str = "throughput_low", effect_delay_s: float = EFFECT_DELAY_S) -> dict:
    """Raise max_workers (up to the CPU count) or else the cache's size and TTL; re-run
    kernels.optimize after a max_workers change; schedule the effect measurement."""
    client = _client()
    try:
        before = _ops(client)
        snap = runtime_config.snapshot(client)
        change = alerting.throughput_recovery(snap["values"], snap["defaults"], os.cpu_count() or 1)
        if not change:
            alerting.record_recovery(client, rule, "settings", message="no recovery left: max_workers at "
                                     "the CPU count and the cache at its automatic bound")
            return {"status": "exhausted"}
        target = snap["values"]["alerts.throughput_target_ops_s"]
        result = runtime_config.apply(client, change, "system", source="recovery",
                                      reason=f"{rule}: {_fmt_ops(before)} under the target of {target:.0f}")
        what = ", ".join(f"{c['key']} {c['old']:g} -> {c['new']:g}" for c in result["changes"])
        alerting.record_recovery(client, rule, "settings", message=f"{what} (settings v{result['version']}; "
                                 f"throughput {_fmt_ops(before)})")
    except redis.RedisError as exc:
        log.warning("alerts.recover_throughput: Redis unavailable: %s", exc)
        return {"status": "failed", "reason": str(exc)}
    if "max_workers" in change:
        celery_app.send_task("kernels.optimize")
    recovery_effect.apply_async(kwargs={"rule": rule, "what": what, "before": before},
                                countdown=effect_delay_s, expires=effect_delay_s + 300)
    return {"status": "done", "version": result["version"], "changes": result["changes"]}


@celery_app.task(name="alerts.recovery_effect", soft_time_limit=10, ignore_result=True)
def recovery_effect(rule: str, what: str, before: float | None) -> str:
    """The figure after a recovery, logged beside the one before it."""
    client = _client()
    try:
        after = _ops(client)
        alerting.record_recovery(client, rule, "settings", event="recovery_effect",
                                 message=f"{what}: throughput {_fmt_ops(before)} -> {_fmt_ops(after)}")
    except redis.RedisError as exc:
        log.warning("alerts.recovery_effect: Redis unavailable: %s", exc)
        return "failed"
    return "recorded"
