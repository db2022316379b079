"""The one Celery app of the console, its configuration and its beat schedule.

Task names are `area.verb`; beat entries are keyed by the same names and carry `expires`
so a backlog of 1-second jobs never piles up behind a stopped worker.
"""
from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from core.settings import get_settings

TASK_MODULES = [
    "workers.telemetry_tasks",
    "workers.metrics_tasks",
    "workers.alert_tasks",
    "workers.safety_tasks",
    "workers.risk_tasks",
    "workers.memory_tasks",
    "workers.cache_tasks",
    "workers.database_tasks",
    "workers.kernel_tasks",
    "workers.stress_tasks",
]


def _stress_daily(s) -> dict:
    """The daily standard stress run at CONSOLE_STRESS_DAILY_AT (UTC), unless "off"."""
    if s.stress_daily_at == "off":
        return {}
    hour, minute = s.stress_daily_at.split(":")
    return {"stress.daily": {"task": "stress.daily", "schedule": crontab(hour=hour, minute=minute),
                             "options": {"expires": 3600}}}


class CeleryConfig:
    _s = get_settings()
    _s.var_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file lives there
    broker_url = _s.redis_url
    result_backend = _s.redis_url
    include = TASK_MODULES
    task_serializer = "json"
    result_serializer = "json"
    accept_content = ["json"]
    result_expires = 3600
    task_ignore_result = True
    timezone = "UTC"
    enable_utc = True
    worker_prefetch_multiplier = 1
    worker_hijack_root_logger = False
    broker_connection_retry_on_startup = True
    # Global for the Redis transport: how long a delivered, unacknowledged task waits before it
    # is redelivered (a dead worker's acks_late stress tasks). Only the stress tasks are
    # acks_late, and their soft time limits stay below the default 300 s (workers/stress_tasks.py).
    broker_transport_options = {"visibility_timeout": _s.stress_visibility_timeout_s}
    # stress jobs go to their own queue, so any machine's worker can take them (README: Scaling out)
    task_routes = {"stress.run": {"queue": "stress"}, "stress.mc_chunk": {"queue": "stress"}}
    beat_scheduler = "workers.health:HeartbeatScheduler"
    beat_schedule_filename = str(_s.var_dir / "celerybeat-schedule")
    beat_schedule = {
        "telemetry.rollup": {"task": "telemetry.rollup", "schedule": 1.0,
                             "options": {"expires": 2.0}},
        "metrics.collect": {"task": "metrics.collect", "schedule": _s.metrics_interval_s,
                            "options": {"expires": max(1.0, 2 * _s.metrics_interval_s)}},
        "alerts.evaluate": {"task": "alerts.evaluate", "schedule": 2.0, "options": {"expires": 4.0}},
        "safety.evaluate": {"task": "safety.evaluate", "schedule": _s.safety_interval_s,
                            "options": {"expires": max(1.0, 2 * _s.safety_interval_s)}},
        "risk.compute": {"task": "risk.compute", "schedule": _s.risk_interval_s,
                         "options": {"expires": max(1.0, _s.risk_interval_s)}},
        "memory.optimize": {"task": "memory.optimize", "schedule": _s.memory_optimize_interval_s,
                            "options": {"expires": _s.memory_optimize_interval_s}},
        "cache.optimize": {"task": "cache.optimize", "schedule": _s.cache_optimize_interval_s,
                           "options": {"expires": _s.cache_optimize_interval_s}},
        "database.analyze": {"task": "database.analyze", "schedule": _s.database_analyze_interval_s,
                             "options": {"expires": _s.database_analyze_interval_s}},
        "kernels.optimize": {"task": "kernels.optimize", "schedule": _s.kernels_optimize_interval_s,
                             "options": {"expires": _s.kernels_optimize_interval_s}},
        "stress.reap": {"task": "stress.reap", "schedule": _s.stress_reap_interval_s,
                        "options": {"expires": _s.stress_reap_interval_s}},
        **_stress_daily(_s),
    }


celery_app = Celery("console")
celery_app.config_from_object(CeleryConfig)

import workers.health  # noqa: E402,F401  (registers the worker heartbeat bootstep)

workers.health.install(celery_app)
