"""Alert rules with "for" durations, as Prometheus alerting rules: a condition must hold for
`for_s` seconds before the rule fires (pending -> firing), so a one-second spike never pages
anyone; a firing rule resolves by itself when the condition clears, and an operator may
acknowledge it (silences the toast, keeps it listed) or resolve it by hand.

Rules read named measurements (`measure(client)` gathers them once per evaluation from what the
workers wrote). Evaluation is pure given (rules, values, previous states, now): tests drive the
clock. Each state change appends to a history stream and, on firing, raises an alert through
the minimal channel (core.alerts), deduplicated by rule; resolutions are alerts of severity
"info". State lives in Redis, so any worker may evaluate (one at a time, under a lock).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Mapping

import redis

from core import alerts, metrics, runtime_config, schema
from core.telemetry import query

OPS = {">": lambda v, t: v > t, "<": lambda v, t: v < t}
STATES = ("ok", "pending", "firing")
HISTORY_MAXLEN = 5000
GiB = 1024**3


@dataclass(frozen=True)
class Rule:
    """`metric op threshold` held for `for_s` seconds fires an alert of `severity`."""

    name: str
    metric: str
    op: str
    threshold: float
    for_s: float
    severity: str
    summary: str

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"rule {self.name}: op must be one of {list(OPS)}")
        if self.severity not in alerts.SEVERITIES:
            raise ValueError(f"rule {self.name}: severity must be one of {alerts.SEVERITIES}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise ValueError(f"rule {self.name}: threshold must be a finite number")
        if not (isinstance(self.for_s, (int, float)) and 0 <= self.for_s <= 86_400):
            raise ValueError(f"rule {self.name}: for_s must be within 0..86400 seconds")


def known_metrics(stages) -> set[str]:
    """Measurement names rules may use (validated when a rule is built)."""
    base = {"cpu_pct", "mem_pct", "console_rss_bytes", "throughput_ops_s"}
    return base | {f"p99_over_threshold:{s}" for s in stages}


def default_rules(config: Mapping | None = None) -> list[Rule]:
    """The spec's rules with the runtime settings' thresholds and for-durations (a mapping of
    core.runtime_config values; None = the defaults): CPU above alerts.cpu_pct and memory above
    memory_threshold_pct (warning, 80 % by default), a stage's p99 over its threshold
    (critical), throughput under target (degraded), console memory over its budget (warning)."""
    c = config if config is not None else runtime_config.defaults()
    cpu, mem, target = c["alerts.cpu_pct"], c["memory_threshold_pct"], c["alerts.throughput_target_ops_s"]
    budget, held = c["alerts.console_memory_budget_mib"] * 1024**2, c["alerts.resource_for_s"]
    rules = [
        Rule("cpu_high", "cpu_pct", ">", cpu, held, "warning", f"CPU above {cpu:g} %"),
        Rule("memory_high", "mem_pct", ">", mem, held, "warning", f"memory above {mem:g} %"),
        Rule("console_memory_budget", "console_rss_bytes", ">", budget, held, "warning",
             f"console processes above the {budget / GiB:g} GiB memory budget"),
        Rule("throughput_low", "throughput_ops_s", "<", target, c["alerts.throughput_for_s"], "degraded",
             f"throughput under the target of {target:.0f} ticks/s"),
    ]
    rules += [Rule(f"latency_{stage}", f"p99_over_threshold:{stage}", ">", 1.0, c["alerts.latency_for_s"],
                   "critical", f"{stage} p99 over its {ms:g} ms threshold")
              for stage, ms in runtime_config.stage_thresholds(c).items()]
    return rules


def validate_rules(rules: list[Rule], stages) -> None:
    """An unknown metric is rejected when the rule is saved, not when it silently never fires."""
    allowed = known_metrics(stages)
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError("rule names must be unique")
    for rule in rules:
        if rule.metric not in allowed:
            raise ValueError(f"rule {rule.name}: unknown metric {rule.metric!r}")


def measure(client: redis.Redis, window_s: int = 10) -> dict[str, float | None]:
    """Current values of every known metric (None when there is no data)."""
    sample = metrics.latest_metrics(client) or {}
    values: dict[str, float | None] = {k: sample.get(k) for k in ("cpu_pct", "mem_pct", "console_rss_bytes")}
    stats = query.get_latency_statistics(client, window_s=window_s)
    total = stats.get("total_pipeline") or {}
    values["throughput_ops_s"] = total.get("ops_s") if total.get("count") else None
    for stage, row in stats.items():
        p99, limit = row.get("p99_us"), row.get("threshold_us")
        values[f"p99_over_threshold:{stage}"] = p99 / limit if p99 is not None and limit else None
    return values


def step(rule: Rule, value: float | None, prev: dict | None, now: float) -> tuple[dict, str | None]:
    """Next state of one rule and the event it produced ('pending', 'fired', 'resolved' or None).
    No data holds the current state: a missing sample neither fires nor resolves a rule."""
    prev = prev or {"state": "ok", "since": now}
    if value is None:
        return prev, None
    active = OPS[rule.op](value, rule.threshold)
    state = prev["state"]
    if not active:
        if state == "ok":
            return prev, None
        return {"state": "ok", "since": now, "value": value}, ("resolved" if state == "firing" else None)
    if state == "ok":
        state, since = ("firing", now) if rule.for_s == 0 else ("pending", now)
        event = "fired" if state == "firing" else "pending"
        return {"state": state, "since": since, "value": value}, event
    if state == "pending" and now - prev["since"] >= rule.for_s:
        return {**prev, "state": "firing", "value": value, "fired_at": now}, "fired"
    return {**prev, "value": value}, None


def _describe(rule: Rule, value: float) -> str:
    shown = f"{value / GiB:.2f} GiB" if rule.metric == "console_rss_bytes" else f"{value:.3g}"
    return f"{rule.summary} (now {shown}, {rule.op} {rule.threshold:g} for {rule.for_s:g} s)"


def evaluate(client: redis.Redis, rules: list[Rule], values: dict, now: float | None = None) -> list[dict]:
    """Advance every rule; persist states, history and alerts. Returns the events."""
    now = time.time() if now is None else now
    states = schema.read_json_hash(client, schema.ALERTING_STATE)
    events, pipe = [], client.pipeline(transaction=False)
    for rule in rules:
        new, event = step(rule, values.get(rule.metric), states.get(rule.name), now)
        pipe.hset(schema.ALERTING_STATE, rule.name, schema.dumps(new))
        if event in ("fired", "resolved"):
            events.append({"rule": rule.name, "event": event, "value": new.get("value"), "ts": now})
            pipe.xadd(schema.ALERTING_HISTORY, {"rule": rule.name, "event": event, "ts": repr(now),
                                                "severity": rule.severity, "user": "",
                                                "value": repr(new.get("value"))},
                      maxlen=HISTORY_MAXLEN, approximate=True)
    pipe.execute()
    for ev in events:
        rule = next(r for r in rules if r.name == ev["rule"])
        if ev["event"] == "fired":
            alerts.raise_alert(client, rule.severity, f"rule:{rule.name}", _describe(rule, ev["value"]), ts=now)
        else:
            alerts.raise_alert(client, "info", f"rule:{rule.name}", f"resolved: {rule.summary}", ts=now)
    return events


# Automatic recovery (the spec's): what runs when a rule fires. High latency re-selects
# backends and batch size; low throughput adds parallelism or caching through the runtime
# settings (alerts.recover_throughput, which then re-runs kernels.optimize); memory pressure
# collects and cleans caches. Each action records its own before/after figures.
RECOVERY = {"memory_high": ("memory.optimize", {"trigger": "auto"}),
            "console_memory_budget": ("memory.optimize", {"trigger": "auto"}),
            "throughput_low": ("alerts.recover_throughput", {"rule": "throughput_low"})}
LATENCY_RECOVERY = ("kernels.optimize", {})
RECOVERY_CACHE_MAX_FACTOR = 8      # automatic caching growth stops at 8x the configured default


def recovery_plan(events: list[dict]) -> list[tuple[str, str, dict]]:
    """(rule, task name, kwargs) for every rule that just fired and has a recovery action;
    one run per task even when several rules call for it."""
    plan, seen = [], set()
    for ev in events:
        if ev["event"] != "fired":
            continue
        action = RECOVERY.get(ev["rule"]) or (LATENCY_RECOVERY if ev["rule"].startswith("latency_") else None)
        if action and action[0] not in seen:
            seen.add(action[0])
            plan.append((ev["rule"], action[0], action[1]))
    return plan


def throughput_recovery(values: Mapping, base: Mapping, cpu_count: int) -> dict:
    """The settings change low throughput calls for (pure): more parallelism first, max_workers
    doubled up to the CPU count; once there, more caching, L1 entries and TTL doubled up to
    RECOVERY_CACHE_MAX_FACTOR x their defaults (`base`). {} when both are exhausted."""
    workers = int(values["max_workers"])
    if workers < cpu_count:
        return {"max_workers": min(cpu_count, 2 * workers)}
    change = {}
    for key in ("cache_max_entries", "cache_ttl_s"):
        cap = base[key] * RECOVERY_CACHE_MAX_FACTOR
        hi = runtime_config.REGISTRY[key].hi
        grown = min(cap, hi, values[key] * 2)
        if grown > values[key]:
            change[key] = int(grown) if key == "cache_max_entries" else float(grown)
    return change


def record_recovery(client: redis.Redis, rule: str, task: str, now: float | None = None,
                    message: str | None = None, event: str = "recovery") -> None:
    """Log an automatic action on the Alerts page (history + an info alert); `message` says
    what it changed with its figures (default: "<task> started")."""
    now = time.time() if now is None else now
    client.xadd(schema.ALERTING_HISTORY, {"rule": rule, "event": event, "ts": repr(now),
                                          "severity": "info", "user": "auto", "value": message or task},
                maxlen=HISTORY_MAXLEN, approximate=True)
    text = message or f"{task} started"
    label = "automatic recovery" if event == "recovery" else "recovery effect"
    alerts.raise_alert(client, "info", f"rule:{rule}", f"{label}: {text}", ts=now)


def acknowledge(client: redis.Redis, rule_name: str, user: str, now: float | None = None) -> str:
    """Mark a firing rule acknowledged; a message says what happened."""
    return _operator_action(client, rule_name, user, "acknowledged", now)


def resolve(client: redis.Redis, rule_name: str, user: str, now: float | None = None) -> str:
    """Close a firing rule by hand; it fires again only after its condition holds anew for_s."""
    return _operator_action(client, rule_name, user, "resolved", now)


def _operator_action(client, rule_name: str, user: str, event: str, now: float | None) -> str:
    now = time.time() if now is None else now
    raw = client.hget(schema.ALERTING_STATE, rule_name)
    state = schema.loads(raw) if raw else None
    if not state or state.get("state") != "firing":
        return f"{rule_name} is not firing: nothing to do"
    if event == "acknowledged":
        state.update(acked_by=user, acked_at=now)
    else:
        state = {"state": "ok", "since": now, "value": state.get("value")}
    client.hset(schema.ALERTING_STATE, rule_name, schema.dumps(state))
    client.xadd(schema.ALERTING_HISTORY, {"rule": rule_name, "event": event, "ts": repr(now),
                                          "severity": "", "user": user, "value": ""},
                maxlen=HISTORY_MAXLEN, approximate=True)
    return f"{rule_name} {event} by {user}"


def rule_states(client: redis.Redis, rules: list[Rule]) -> list[dict]:
    """Every rule with its current state, for the Alerts page."""
    states = schema.read_json_hash(client, schema.ALERTING_STATE)
    return [{**asdict(rule), **(states.get(rule.name) or {"state": "ok"})} for rule in rules]


def history(client: redis.Redis, limit: int = 200) -> list[dict]:
    """State changes and operator actions, newest first."""
    out = []
    for entry_id, fields in client.xrevrange(schema.ALERTING_HISTORY, count=limit):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["id"], row["ts"] = entry_id.decode(), float(row.get("ts") or 0)
        out.append(row)
    return out
