"""Trading states and the SafetyController's rules.

States (as NautilusTrader's risk engine): ACTIVE (every order), REDUCING (only risk-reducing
orders), HALTED (nothing but cancels and the emergency stop's reduce-only liquidation).
The state lives in schema.TRADING_STATE (absent = ACTIVE). `transition()` changes it with one
Lua script, so the write, the last-transition record (schema.TRADING_META: who, why, from
where), the history entry (schema.TRADING_HISTORY) and the pub/sub message
(schema.TRADING_EVENTS, which core.trading_guard listens to) happen together or not at all.

Rules (SafetyConfig, evaluated by `evaluate_once` every second from two places, see below):
- daily_loss: loss since start of day >= daily_loss_fraction x start-of-day equity
- drawdown:   (peak equity - equity) / peak equity >= drawdown_fraction
- latency:    p99 of `latency_stage` over latency_threshold_ms in each of the last
              latency_windows completed one-second telemetry windows
- error_rate: event-bus handler errors per second above max_errors_per_s
Each rule has an action: "alert", "REDUCING" or "HALTED". A rule-triggered state returns to
ACTIVE by itself once no rule has been breached for `cooldown_s`, if that rule allows it
(`auto_resume_loss`, off by default, covers daily_loss and drawdown; `auto_resume_other`
the rest). A halt from the button, the API or the CLI (source not "rule:...") never resumes
by itself: the Lua script refuses the auto-resume when the stored source has changed.

Where the rules run: inside the pipeline runner (the process that trades, so the rules keep
firing when the Celery worker or beat is down) and as the beat task `safety.evaluate` (so
they also fire while the runner is stuck or for other processes' telemetry). A SET NX lock
(schema.SAFETY_LOCK) lets one evaluation run at a time; transitions are idempotent.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields

from core import alerts, schema
from core.locks import single_run

log = logging.getLogger(__name__)

ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"
STATES = (ACTIVE, REDUCING, HALTED)
ACTIONS = ("alert", REDUCING, HALTED)
SEVERITY = {ACTIVE: 0, REDUCING: 1, HALTED: 2}
LOSS_RULES = ("daily_loss", "drawdown")
MAX_REASON = 500

# KEYS: state, meta, history. ARGV: to_state, ts, reason, source, user, history maxlen,
# channel, force ("1": record even when the state does not change), require_from
# (comma list, "" = any), require_source ("" = any).
_TRANSITION = """
local old = redis.call('GET', KEYS[1]) or 'ACTIVE'
if ARGV[9] ~= '' and not string.find(',' .. ARGV[9] .. ',', ',' .. old .. ',', 1, true) then
  return {old, 0}
end
if ARGV[10] ~= '' then
  local raw = redis.call('GET', KEYS[2])
  local src = ''
  if raw then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' and meta['source'] then src = meta['source'] end
  end
  if src ~= ARGV[10] then return {old, 0} end
end
if old == ARGV[1] and ARGV[8] ~= '1' then return {old, 0} end
local doc = {ts = tonumber(ARGV[2]), from_state = old, to_state = ARGV[1], state = ARGV[1],
             reason = ARGV[3], source = ARGV[4], user = ARGV[5]}
local json = cjson.encode(doc)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], json)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'ts', ARGV[2], 'from_state', old,
           'to_state', ARGV[1], 'reason', ARGV[3], 'source', ARGV[4], 'user', ARGV[5])
redis.call('PUBLISH', ARGV[7], json)
return {old, 1}
"""


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_state(client) -> str:
    """The stored state; absent = ACTIVE, an unknown value = HALTED (fail closed).
    Redis errors propagate."""
    raw = client.get(schema.TRADING_STATE)
    if raw is None:
        return ACTIVE
    value = _text(raw)
    return value if value in STATES else HALTED


def read_meta(client) -> dict:
    """The last transition {state, from_state, to_state, source, reason, user, ts}, or {}."""
    try:
        return schema.loads(client.get(schema.TRADING_META)) or {}
    except ValueError:
        return {}


def _check_text(name: str, value, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    value = value.strip()
    if len(value) > MAX_REASON:
        raise ValueError(f"{name} is longer than {MAX_REASON} characters")
    return value


def transition(client, to_state: str, reason: str, source: str, user: str = "system",
               clock=time.time, force: bool = False, require_from: tuple = (),
               require_source: str = "") -> dict:
    """Change the trading state atomically (state + meta + history + publish).

    Returns {"changed", "from_state", "to_state", "ts", ...}. Unchanged when the state is
    already `to_state` (unless `force`), when it is not one of `require_from`, or when the
    stored source differs from `require_source`. Bad arguments raise ValueError; Redis errors
    propagate (a caller that cannot halt must know)."""
    if to_state not in STATES:
        raise ValueError(f"unknown trading state {to_state!r}; expected one of {STATES}")
    reason, source = _check_text("reason", reason), _check_text("source", source)
    user = _check_text("user", user)
    ts = float(clock())
    old, changed = client.eval(_TRANSITION, 3, schema.TRADING_STATE, schema.TRADING_META,
                               schema.TRADING_HISTORY, to_state, repr(ts), reason, source, user,
                               schema.TRADING_HISTORY_MAXLEN, schema.TRADING_EVENTS,
                               "1" if force else "0", ",".join(require_from), require_source)
    old = _text(old)
    if changed:
        log.warning("trading state %s -> %s by %s (%s): %s", old, to_state, user, source, reason)
    return {"changed": bool(changed), "from_state": old, "to_state": to_state if changed else old,
            "ts": ts, "reason": reason, "source": source, "user": user}


def history(client, limit: int = 100) -> list[dict]:
    """The newest `limit` transitions, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer in 1..10000, got {limit!r}")
    out = []
    for entry_id, f in client.xrevrange(schema.TRADING_HISTORY, count=limit):
        row = {_text(k): _text(v) for k, v in f.items()}
        row["id"] = _text(entry_id)
        row["ts"] = float(row.get("ts") or 0.0)
        out.append(row)
    return out


# ---- rules ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SafetyConfig:
    """Rule thresholds, actions and recovery. Defaults:
    daily_loss_fraction 0.05 (HALTED), drawdown_fraction 0.10 of peak equity (HALTED),
    latency p99 of total_pipeline over 100 ms in 5 consecutive 1 s windows (REDUCING),
    max_errors_per_s 5 (HALTED), cooldown_s 30, auto-resume off for loss rules, on otherwise."""

    daily_loss_fraction: float = 0.05
    daily_loss_action: str = HALTED
    drawdown_fraction: float = 0.10
    drawdown_action: str = HALTED
    latency_stage: str = "total_pipeline"
    latency_threshold_ms: float = 100.0
    latency_windows: int = 5
    latency_action: str = REDUCING
    max_errors_per_s: float = 5.0
    error_action: str = HALTED
    cooldown_s: float = 30.0
    auto_resume_loss: bool = False
    auto_resume_other: bool = True

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_action"):
                if v not in ACTIONS:
                    raise ValueError(f"{f.name} must be one of {ACTIONS}, got {v!r}")
            elif f.name == "latency_stage":
                if not isinstance(v, str) or not v:
                    raise ValueError(f"latency_stage must be a stage name, got {v!r}")
            elif f.name.startswith("auto_resume"):
                if not isinstance(v, bool):
                    raise ValueError(f"{f.name} must be a bool, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{f.name} must be a finite number > 0, got {v!r}")
        for name in ("daily_loss_fraction", "drawdown_fraction"):
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be within (0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.latency_windows, int) or self.latency_windows > 3600:
            raise ValueError(f"latency_windows must be an integer in 1..3600, got {self.latency_windows!r}")

    def action(self, rule: str) -> str:
        return {"daily_loss": self.daily_loss_action, "drawdown": self.drawdown_action,
                "latency": self.latency_action, "error_rate": self.error_action}[rule]

    def auto_resume(self, rule: str) -> bool:
        return self.auto_resume_loss if rule in LOSS_RULES else self.auto_resume_other


@dataclass
class RuleInputs:
    """What the rules look at; `gather_inputs` reads it from Redis."""
    equity: float | None = None
    day_start_equity: float | None = None
    latency_p99_ms: list | None = None      # the last N completed windows, oldest first
    errors_total: float | None = None


def gather_inputs(client, config: SafetyConfig, now: float) -> RuleInputs:
    """Account (schema.BROKER_ACCOUNT), per-second telemetry summaries and bus statistics."""
    pipe = client.pipeline(transaction=False)
    pipe.hmget(schema.BROKER_ACCOUNT, "equity", "day_start_equity")
    pipe.get(schema.TELE_ROLLUP_LAST)
    pipe.hgetall(schema.BUS_STATS)
    (equity, sod), last, bus = pipe.execute()
    inputs = RuleInputs(equity=_num(equity), day_start_equity=_num(sod))
    end = min(int(now) - 1, int(last)) if last is not None else None
    if end is not None:
        start = end - config.latency_windows + 1
        rows = {}
        for m in client.zrangebyscore(schema.tele_sec_summary(config.latency_stage), start, end):
            try:
                doc = schema.loads(m)
                rows[int(doc["t"])] = doc.get("p99_us")
            except (ValueError, KeyError, TypeError):
                continue
        inputs.latency_p99_ms = [None if rows.get(t) is None else rows[t] / 1000.0
                                 for t in range(start, end + 1)]
    if bus:
        total = 0.0
        for raw in bus.values():
            try:
                total += float((schema.loads(raw) or {}).get("errors") or 0)
            except (ValueError, TypeError, AttributeError):
                continue
        inputs.errors_total = total
    return inputs


def _num(raw) -> float | None:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def evaluate_rules(config: SafetyConfig, inputs: RuleInputs, memory: dict, now: float) -> list[dict]:
    """Pure: one result per rule {name, value, threshold, breached, action}. Updates `memory`
    (peak_equity, errors_total, errors_ts) in place. A rule without data is not breached."""
    results = []
    eq, sod = inputs.equity, inputs.day_start_equity
    loss = (sod - eq) / sod if eq is not None and sod and sod > 0 else None
    results.append(_result("daily_loss", loss, config.daily_loss_fraction,
                           loss is not None and loss >= config.daily_loss_fraction, config))
    dd = None
    if eq is not None:
        peak = max(float(memory.get("peak_equity") or eq), eq)
        memory["peak_equity"] = peak
        dd = (peak - eq) / peak if peak > 0 else None
    results.append(_result("drawdown", dd, config.drawdown_fraction,
                           dd is not None and dd >= config.drawdown_fraction, config))
    lat = inputs.latency_p99_ms or []
    over = (len(lat) >= config.latency_windows
            and all(v is not None and v > config.latency_threshold_ms for v in lat))
    worst = max((v for v in lat if v is not None), default=None)
    results.append(_result("latency", worst, config.latency_threshold_ms, over, config))
    rate = None
    if inputs.errors_total is not None:
        prev, prev_ts = memory.get("errors_total"), memory.get("errors_ts")
        if prev is not None and prev_ts is not None and now > float(prev_ts) \
                and inputs.errors_total >= float(prev):
            rate = (inputs.errors_total - float(prev)) / (now - float(prev_ts))
        memory["errors_total"], memory["errors_ts"] = inputs.errors_total, now
    results.append(_result("error_rate", rate, config.max_errors_per_s,
                           rate is not None and rate > config.max_errors_per_s, config))
    return results


def _result(name, value, threshold, breached, config) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "breached": bool(breached),
            "action": config.action(name)}


def decide(config: SafetyConfig, state: str, meta: dict, results: list[dict], memory: dict,
           now: float) -> dict | None:
    """Pure: the transition the results call for, or None. Escalates to the most severe
    breached action; auto-resumes a rule-triggered state after `cooldown_s` of no breach.
    Updates memory["normal_since"]."""
    breached = [r for r in results if r["breached"] and r["action"] != "alert"]
    if breached:
        memory["normal_since"] = None
        worst = max(breached, key=lambda r: SEVERITY[r["action"]])
        if SEVERITY[worst["action"]] > SEVERITY.get(state, 2):
            return {"to_state": worst["action"], "source": f"rule:{worst['name']}",
                    "reason": f"{worst['name']} {_fmt(worst['value'])} over {_fmt(worst['threshold'])}"}
        return None
    if memory.get("normal_since") is None:
        memory["normal_since"] = now
    source = str(meta.get("source") or "")
    if state == ACTIVE or not source.startswith("rule:"):
        return None
    rule = source[5:]
    if rule in ("daily_loss", "drawdown", "latency", "error_rate") and config.auto_resume(rule) \
            and now - float(memory["normal_since"]) >= config.cooldown_s:
        return {"to_state": ACTIVE, "source": "safety", "require_source": source,
                "reason": f"conditions normal for {config.cooldown_s:g} s after {rule}"}
    return None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


class SafetyController:
    """Runs the rules against Redis: gather, evaluate, decide, transition, alert. Clock, store
    and config are arguments so tests drive time."""

    def __init__(self, client, config: SafetyConfig | None = None, clock=time.time):
        self.client = client
        self.config = config or SafetyConfig()
        self._clock = clock

    def _memory(self) -> dict:
        raw = self.client.hgetall(schema.SAFETY_RULES)
        mem = {}
        for k, v in raw.items():
            mem[_text(k)] = None if _text(v) == "" else float(v)
        return mem

    def _save(self, memory: dict) -> None:
        self.client.hset(schema.SAFETY_RULES, mapping={k: "" if v is None else repr(float(v))
                                                       for k, v in memory.items()})

    def evaluate(self, inputs: RuleInputs | None = None) -> dict:
        """One evaluation. Returns {ts, state, rules, transition}."""
        now = float(self._clock())
        inputs = gather_inputs(self.client, self.config, now) if inputs is None else inputs
        memory = self._memory()
        results = evaluate_rules(self.config, inputs, memory, now)
        state = read_state(self.client)
        step = decide(self.config, state, read_meta(self.client), results, memory, now)
        done = None
        if step is not None:
            done = transition(self.client, step["to_state"], step["reason"], step["source"],
                              user="safety", clock=lambda: now,
                              require_source=step.get("require_source", ""))
            if done["changed"]:
                state = done["to_state"]
                sev = {HALTED: "critical", REDUCING: "warning", ACTIVE: "info"}[state]
                alerts.raise_alert(self.client, sev, "safety",
                                   f"Trading {state}: {step['reason']} ({step['source']})", ts=now)
        for r in results:
            if r["breached"] and r["action"] == "alert":
                alerts.raise_alert(self.client, "warning", "safety",
                                   f"{r['name']} {_fmt(r['value'])} over {_fmt(r['threshold'])}",
                                   ts=now, dedupe_key=f"safety:{r['name']}", dedupe_s=60)
        self._save(memory)
        report = {"ts": now, "state": state, "rules": results, "transition": done}
        self.client.set(schema.SAFETY_STATUS, schema.dumps(report))
        return report


def evaluate_once(client, config: SafetyConfig | None = None, clock=time.time,
                  lock_ttl_s: float = 0.9) -> dict | None:
    """`SafetyController.evaluate` under the SET NX lock; None when another run holds it.
    Redis errors propagate."""
    with single_run(client, schema.SAFETY_LOCK, lock_ttl_s) as mine:
        if not mine:
            return None
        return SafetyController(client, config, clock).evaluate()

