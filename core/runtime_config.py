"""Runtime settings: every tunable of the Settings page, versioned in Redis, live in every process.

Layers, lowest first: built-in defaults < the environment (core.settings.Settings, parsed once
at start) < the overrides stored here (schema.CONFIG_VALUES). `defaults()` is the first two,
`current(client)` all three. Only values that differ from the defaults are stored, so "reset to
defaults" deletes overrides and a changed environment shows through everything not overridden.

The registry (`TUNABLES`) says for every key its group, type, range (open or closed bounds),
unit, default (from Settings, LimitConfig or SafetyConfig) and whether it is hot (every process
adopts it within a second) or needs a restart, and of which process. Keys are Settings field
names where a Settings field backs them; otherwise `stage_ms.<stage>`, `alerts.<name>`,
`limits.<LimitConfig field>` and `safety.<SafetyConfig field>`.

Writes (`apply`, `reset`, `import_json`) validate the whole change first (types, ranges,
cross-field rules: `validate`), then commit it in one MULTI/EXEC under WATCH: the overrides,
the version (INCR), a history entry, an audit record (who, old -> new) and a PUBLISH on
schema.CONFIG_EVENTS. A change is applied completely or not at all.

Readers: `LiveConfig` is a per-process listener thread (as core.trading_guard's): it subscribes
to schema.CONFIG_EVENTS, re-reads on every message, and checks the version every POLL_S in case
a message was missed (a reconnect, a Redis restart); consumers read `live(role).values` (an
immutable mapping swapped atomically: no I/O on the reader's side) or register `on_change`
callbacks (the cache resizes itself through one, off its 1 µs hot path). Each listener records
the version it runs with in schema.CONFIG_APPLIED, which the Settings page shows per process.
With Redis unreachable a process keeps the last values it read (the defaults if none).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

import redis

from core import schema
from core.audit import audit_fields
from core.limits import LimitConfig
from core.safety import ACTIONS, SafetyConfig
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS, Settings, get_settings

log = logging.getLogger(__name__)

POLL_S = 2.0                  # version check period of a listener (missed-message fallback)
APPLIED_FRESH_S = 15.0        # a process that has not reported for this long is not listed
APPLIED_PRUNE_S = 3600.0      # ... and is forgotten after this long
MAX_IMPORT_BYTES = 256 * 1024
MAX_TEXT = 64                 # longest text accepted for one value
EXPORT_FORMAT = "trading-console-settings/1"
MiB = 1024**2


class ConfigError(ValueError):
    """A rejected change: `errors` maps a setting key ("" for the change as a whole) to a message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in self.errors.items()))


# ---- the registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Tunable:
    """One setting. `restart` names the processes to restart for it to apply; () = hot."""

    key: str
    group: str
    kind: str                                  # "float", "int", "bool" or "choice"
    default: Callable[[Settings], Any]
    description: str
    lo: float | None = None
    hi: float | None = None
    unit: str = ""
    lo_open: bool = False                      # lo itself is out of range
    hi_open: bool = False
    optional: bool = False                     # blank / null = "no limit"
    choices: tuple = ()
    restart: tuple[str, ...] = ()

    @property
    def hot(self) -> bool:
        return not self.restart

    def range_text(self) -> str:
        """'between 1 and 99 %', '> 0 and < 1', ...: the range as the messages state it."""
        if self.lo is None or self.hi is None:
            return ""
        unit = self.unit if self.unit in ("", "×") else f" {self.unit}"
        lo, hi = number_text(self.lo), number_text(self.hi)
        if not (self.lo_open or self.hi_open):
            return f"between {lo} and {hi}{unit}"
        return f"{'>' if self.lo_open else '>='} {lo} and {'<' if self.hi_open else '<='} {hi}{unit}"


def number_text(x: float) -> str:
    """1000000 -> '1,000,000', 0.05 -> '0.05', 1e15 -> '1e+15'."""
    if float(x).is_integer() and abs(x) < 1e12:
        return f"{int(x):,}"
    return f"{x:g}"


GROUPS = {   # group id -> (title, where it takes effect)
    "latency": ("Latency thresholds", "alert rules latency_<stage> (worker), Latency and Overview pages, /metrics"),
    "alerts": ("Alert rules", "alerts.evaluate on the worker, the Alerts and Overview pages"),
    "memory": ("Memory", "memory.optimize on the worker, the memory_high alert rule"),
    "cache": ("Cache", "every process's CacheManager (L1 resized by a listener callback), cache.optimize"),
    "limits": ("Risk limits", "the pipeline's pre-trade check and limit utilization"),
    "safety": ("Safety rules", "safety.evaluate on the worker and inside the pipeline"),
    "optimization": ("Optimization", "kernels.optimize (started on save) and the pipeline's selection"),
    "schedules": ("Collection intervals and schedules", "celery beat's schedule (dynamic) and the pipeline's safety loop"),
    "process": ("Process start-up", "read once when the named process starts"),
}


def _setting(name: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(s, name)


def _limit_default(name: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(LimitConfig().scaled(s.initial_cash), name)


def _safety_default(name: str) -> Callable[[Settings], Any]:
    return lambda s: getattr(SafetyConfig(), name)


def _stage_tunables() -> list[Tunable]:
    return [Tunable(f"stage_ms.{stage}", "latency", "float",
                    lambda s, st=stage: float(s.stage_thresholds_ms.get(st, DEFAULT_STAGE_THRESHOLDS_MS[st])),
                    f"p99 above this fires latency_{stage}; the threshold line of its charts",
                    lo=0.001, hi=60_000.0, unit="ms")
            for stage in DEFAULT_STAGE_THRESHOLDS_MS]


def _alert_tunables() -> list[Tunable]:
    return [
        Tunable("alerts.throughput_target_ops_s", "alerts", "float", lambda s: 0.9 * s.tick_rate,
                "throughput_low fires below this many ticks/s (default 90 % of CONSOLE_TICK_RATE)",
                lo=1.0, hi=200_000.0, unit="ticks/s"),
        Tunable("alerts.cpu_pct", "alerts", "float", lambda s: 80.0, "cpu_high fires above this CPU use",
                lo=1.0, hi=100.0, unit="%"),
        Tunable("alerts.console_memory_budget_mib", "alerts", "int", lambda s: 2048,
                "console_memory_budget fires when the console's processes hold more RSS than this",
                lo=64, hi=1024 * 1024, unit="MiB"),
        Tunable("alerts.latency_for_s", "alerts", "float", lambda s: 15.0,
                "how long a stage's p99 must stay over its threshold before latency_<stage> fires",
                lo=0.0, hi=86_400.0, unit="s"),
        Tunable("alerts.throughput_for_s", "alerts", "float", lambda s: 30.0,
                "how long throughput must stay under target before throughput_low fires",
                lo=0.0, hi=86_400.0, unit="s"),
        Tunable("alerts.resource_for_s", "alerts", "float", lambda s: 60.0,
                "how long CPU or memory must stay high before cpu_high / memory_high / budget fire",
                lo=0.0, hi=86_400.0, unit="s"),
    ]


def _memory_cache_tunables() -> list[Tunable]:
    return [
        Tunable("gc_threshold_pct", "memory", "float", _setting("gc_threshold_pct"),
                "system memory use above which memory.optimize collects garbage; below the memory threshold",
                lo=1.0, hi=99.0, unit="%"),
        Tunable("memory_threshold_pct", "memory", "float", _setting("memory_threshold_pct"),
                "above this memory.optimize also cleans caches, and memory_high fires",
                lo=1.0, hi=99.0, unit="%"),
        Tunable("cache_ttl_s", "cache", "float", _setting("cache_ttl_s"),
                "default lifetime of a cache entry (L1 and L2)", lo=0.1, hi=30 * 86_400.0, unit="s"),
        Tunable("cache_max_entries", "cache", "int", _setting("cache_max_entries"),
                "L1 bound in entries (the spec's max_cache_size)", lo=1, hi=10_000_000, unit="entries"),
    ]


_LIMIT_RANGES = {"max_daily_loss_fraction": (1.0, "fraction"), "max_leverage": (1000.0, "×")}
_LIMIT_TEXT = {
    "max_position_per_symbol": "|exposure| of one symbol",
    "max_total_position": "gross exposure, all symbols",
    "max_portfolio_value": "|net exposure|",
    "max_daily_loss": "loss since the start of the day, in currency",
    "max_daily_loss_fraction": "loss since the start of the day / start-of-day equity",
    "max_leverage": "gross exposure / equity",
}


def _limit_tunables() -> list[Tunable]:
    out = []
    for f in fields(LimitConfig):
        hi, unit = _LIMIT_RANGES.get(f.name, (1e15, "currency"))
        out.append(Tunable(f"limits.{f.name}", "limits", "float", _limit_default(f.name),
                           _LIMIT_TEXT[f.name] + "; blank = no limit", lo=0.0, hi=hi, unit=unit,
                           lo_open=True, optional=True))
    return out


def _safety_tunables() -> list[Tunable]:
    stages = tuple(DEFAULT_STAGE_THRESHOLDS_MS)
    spec = {
        "daily_loss_fraction": ("float", 0.0, 1.0, "fraction", True, "daily loss / start-of-day equity that triggers its action"),
        "drawdown_fraction": ("float", 0.0, 1.0, "fraction", True, "drawdown from peak equity that triggers its action"),
        "latency_threshold_ms": ("float", 0.0, 60_000.0, "ms", True, "p99 of the watched stage over this, window after window"),
        "latency_windows": ("int", 1, 3600, "windows", False, "consecutive 1 s windows over the latency threshold"),
        "max_errors_per_s": ("float", 0.0, 1e6, "errors/s", True, "event-bus handler errors per second that trigger its action"),
        "cooldown_s": ("float", 0.0, 86_400.0, "s", True, "quiet time before a rule-triggered state resumes by itself"),
    }
    out = []
    for f in fields(SafetyConfig):
        key, default = f"safety.{f.name}", _safety_default(f.name)
        if f.name in spec:
            kind, lo, hi, unit, lo_open, text = spec[f.name]
            hi_open = f.name.endswith("_fraction")
            out.append(Tunable(key, "safety", kind, default, text, lo=lo, hi=hi, unit=unit,
                               lo_open=lo_open, hi_open=hi_open))
        elif f.name.endswith("_action"):
            out.append(Tunable(key, "safety", "choice", default,
                               f"what a breach of the {f.name[:-7].replace('_', ' ')} rule does",
                               choices=ACTIONS))
        elif f.name == "latency_stage":
            out.append(Tunable(key, "safety", "choice", default, "the stage the latency rule watches",
                               choices=stages))
        else:
            what = "daily loss and drawdown" if f.name.endswith("loss") else "latency and error rate"
            out.append(Tunable(key, "safety", "bool", default,
                               f"{what} states return to ACTIVE by themselves after the cooldown"))
    return out


def _optimization_tunables() -> list[Tunable]:
    flag = "backend may be selected by kernels.optimize"
    return [
        Tunable("vectorization_enabled", "optimization", "bool", _setting("vectorization_enabled"), f"numpy {flag}"),
        Tunable("numba_enabled", "optimization", "bool", _setting("numba_enabled"), f"numba {flag}"),
        Tunable("onnx_enabled", "optimization", "bool", _setting("onnx_enabled"),
                f"ONNX Runtime {flag}; off, the pipeline's model_inference runs the same model in Python"),
        Tunable("max_workers", "optimization", "int", _setting("max_workers"),
                "threads for numba, ONNX Runtime and batch scoring (at the next kernels.optimize)",
                lo=1, hi=1024, unit="threads"),
    ]


def _schedule_tunables() -> list[Tunable]:
    rows = [("metrics_interval_s", 0.2, 60.0, "metrics.collect: CPU, memory and process samples"),
            ("safety_interval_s", 0.2, 60.0, "safety.evaluate, and the pipeline's own rule evaluation"),
            ("risk_interval_s", 1.0, 3600.0, "risk.compute: VaR, drawdown, limits"),
            ("memory_optimize_interval_s", 1.0, 86_400.0, "memory.optimize"),
            ("cache_optimize_interval_s", 1.0, 86_400.0, "cache.optimize"),
            ("database_analyze_interval_s", 1.0, 86_400.0, "database.analyze"),
            ("kernels_optimize_interval_s", 10.0, 86_400.0, "kernels.optimize: backend selection")]
    return [Tunable(name, "schedules", "float", _setting(name), f"period of {text}", lo=lo, hi=hi, unit="s")
            for name, lo, hi, text in rows]


def _restart_tunables() -> list[Tunable]:
    return [
        Tunable("flush_interval_s", "process", "float", _setting("flush_interval_s"),
                "how often the pipeline ships its latency histograms", lo=0.05, hi=60.0, unit="s",
                restart=("pipeline",)),
        Tunable("guard_heartbeat_s", "process", "float", _setting("guard_heartbeat_s"),
                "the trading guard blocks orders after this long without a state read",
                lo=0.2, hi=60.0, unit="s", restart=("pipeline",)),
    ]


TUNABLES: tuple[Tunable, ...] = tuple(
    _stage_tunables() + _alert_tunables() + _memory_cache_tunables() + _limit_tunables()
    + _safety_tunables() + _optimization_tunables() + _schedule_tunables() + _restart_tunables())
REGISTRY: dict[str, Tunable] = {t.key: t for t in TUNABLES}
_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))


def defaults(settings: Settings | None = None) -> dict[str, Any]:
    """Every key's value from the environment and the built-in defaults."""
    settings = settings or get_settings()
    return {t.key: t.default(settings) for t in TUNABLES}


# ---- parsing and validation ---------------------------------------------------------------
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _blank(raw) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _number(t: Tunable, raw) -> float | int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError("must be a number")
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) > MAX_TEXT:
            raise ValueError("must be a number")
        try:
            raw = float(text) if t.kind == "float" or not text.lstrip("+-").isdigit() else int(text)
        except ValueError:
            raise ValueError("must be a whole number" if t.kind == "int" else "must be a number") from None
    try:
        if isinstance(raw, float) and not math.isfinite(raw):
            raise OverflowError
        if t.kind == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError("must be a whole number")
            value: float | int = int(raw)
        else:
            value = float(raw)
    except OverflowError:
        raise ValueError("must be a finite number") from None
    below = value <= t.lo if t.lo_open else value < t.lo
    above = value >= t.hi if t.hi_open else value > t.hi
    if below or above:
        raise ValueError(f"must be {t.range_text()}")
    return value


def parse(t: Tunable, raw) -> Any:
    """`raw` (a JSON value or the text of a form field) as the setting's type; ValueError with
    the message to show beside the field."""
    if _blank(raw):
        if t.optional:
            return None
        raise ValueError("required" + (f": a value {t.range_text()}" if t.lo is not None else ""))
    if t.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = raw.strip().lower() if isinstance(raw, str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be true or false")
    if t.kind == "choice":
        if isinstance(raw, str) and raw.strip() in t.choices:
            return raw.strip()
        raise ValueError(f"must be one of {', '.join(t.choices)}")
    return _number(t, raw)


def _attribute(message: str, prefix: str, changed: Mapping) -> str:
    """The key a config object's error message names (longest field name first), else ""."""
    names = sorted((k for k in REGISTRY if k.startswith(prefix)), key=len, reverse=True)
    for key in names:
        if key[len(prefix):] in message:
            return key
    return next((k for k in changed if k.startswith(prefix)), "")


def _cross_field_errors(merged: Mapping[str, Any], changed: Mapping[str, Any]) -> dict[str, str]:
    """Rules between fields, checked on the whole configuration the change would produce."""
    errors: dict[str, str] = {}
    gc, mem = merged["gc_threshold_pct"], merged["memory_threshold_pct"]
    if gc >= mem:
        key = "memory_threshold_pct" if "memory_threshold_pct" in changed and "gc_threshold_pct" not in changed \
            else "gc_threshold_pct"
        errors[key] = (f"the GC threshold ({gc:g} %) must be below the memory threshold ({mem:g} %)")
    for prefix, build in (("limits.", limit_config), ("safety.", safety_config)):
        try:
            build(merged)
        except (ValueError, TypeError) as exc:
            errors.setdefault(_attribute(str(exc), prefix, changed), str(exc))
    try:
        from core import alerting      # here: alerting reads telemetry, which reads this module
        alerting.validate_rules(alerting.default_rules(merged), stage_thresholds(merged))
    except ValueError as exc:
        errors.setdefault("", f"alert rules: {exc}")
    return errors


def validate(changes, base: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(parsed values, errors per key) of `changes` on top of `base` (default: the defaults).
    Unknown keys, types and ranges first; the cross-field rules once every field parses."""
    if not isinstance(changes, Mapping):
        return {}, {"": "settings must be an object of key: value pairs"}
    clean, errors = {}, {}
    for key, raw in changes.items():
        tunable = REGISTRY.get(key) if isinstance(key, str) else None
        if tunable is None:
            errors[str(key)[:100]] = "unknown setting"
            continue
        try:
            clean[key] = parse(tunable, raw)
        except ValueError as exc:
            errors[key] = str(exc)
    if not errors:
        errors = _cross_field_errors({**(base or defaults()), **clean}, clean)
    return clean, errors


# ---- derived views for the consumers ---------------------------------------------------------
def stage_thresholds(values: Mapping[str, Any]) -> dict[str, float]:
    """stage -> p99 threshold in ms."""
    return {k[len("stage_ms."):]: float(v) for k, v in values.items() if k.startswith("stage_ms.")}


def limit_config(values: Mapping[str, Any]) -> LimitConfig:
    return LimitConfig(**{f.name: values[f"limits.{f.name}"] for f in fields(LimitConfig)})


def safety_config(values: Mapping[str, Any]) -> SafetyConfig:
    return SafetyConfig(**{f.name: values[f"safety.{f.name}"] for f in fields(SafetyConfig)})


def effective_settings(values: Mapping[str, Any], settings: Settings | None = None) -> Settings:
    """Settings with the runtime values of the keys Settings has (thresholds, cache bounds,
    flags, max_workers, intervals, stage thresholds): what tasks pass to core functions."""
    settings = settings or get_settings()
    overlay = {k: v for k, v in values.items() if k in _SETTINGS_FIELDS}
    overlay["stage_thresholds_ms"] = {**settings.stage_thresholds_ms, **stage_thresholds(values)}
    return replace(settings, **overlay)


# ---- Redis: read --------------------------------------------------------------------------
def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_overrides(client: redis.Redis) -> tuple[int, dict[str, Any]]:
    """(version, stored overrides), read together in one MULTI. Undecodable entries are skipped."""
    pipe = client.pipeline(transaction=True)
    pipe.get(schema.CONFIG_VERSION)
    pipe.hgetall(schema.CONFIG_VALUES)
    version, raw = pipe.execute()
    overrides = {}
    for key, value in raw.items():
        try:
            overrides[_text(key)] = schema.loads(value)
        except ValueError:
            log.warning("runtime config: undecodable override %r ignored", key)
    return int(version or 0), overrides


def overlay(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with every override that still parses (a value stored under an older registry
    that is now unknown or out of range is ignored, with a warning)."""
    out = dict(base)
    for key, raw in overrides.items():
        tunable = REGISTRY.get(key)
        try:
            if tunable is None:
                raise ValueError("unknown setting")
            out[key] = parse(tunable, raw)
        except ValueError as exc:
            log.warning("runtime config: stored %s=%r ignored: %s", key, raw, exc)
    return out


def stage_overrides(client: redis.Redis) -> dict[str, float]:
    """stage -> threshold ms for the stages whose threshold the Settings page changed."""
    raw = client.hgetall(schema.CONFIG_VALUES)
    stages = {}
    for key, value in raw.items():
        key = _text(key)
        if key.startswith("stage_ms.") and key in REGISTRY:
            try:
                stages[key] = schema.loads(value)
            except ValueError:
                continue
    return stage_thresholds(overlay({}, stages))


def snapshot(client: redis.Redis, settings: Settings | None = None) -> dict:
    """{"version", "values" (effective), "defaults", "overridden" (keys)}: what the page shows."""
    base = defaults(settings)
    version, overrides = read_overrides(client)
    values = overlay(base, overrides)
    return {"version": version, "values": values, "defaults": base,
            "overridden": sorted(k for k in overrides if k in REGISTRY)}


def current(client: redis.Redis, settings: Settings | None = None) -> dict[str, Any]:
    """The effective value of every key, read from Redis now (web callbacks use this)."""
    return snapshot(client, settings)["values"]


def history(client: redis.Redis, limit: int = 50) -> list[dict]:
    """Settings changes, newest first: {version, ts, user, source, reason, changes: [...]}."""
    out = []
    for entry_id, f in client.xrevrange(schema.CONFIG_HISTORY, count=limit):
        row = {_text(k): _text(v) for k, v in f.items()}
        try:
            row["changes"] = json.loads(row.get("changes") or "[]")
        except ValueError:
            row["changes"] = []
        row.update(id=_text(entry_id), ts=float(row.get("ts") or 0), version=int(row.get("version") or 0))
        out.append(row)
    return out


def applied(client: redis.Redis, now: float | None = None) -> list[dict]:
    """Processes with a listener that reported recently: [{proc, role, version, ts, detail}];
    entries silent for APPLIED_PRUNE_S are deleted."""
    now = time.time() if now is None else now
    rows, stale = [], []
    for proc, doc in schema.read_json_hash(client, schema.CONFIG_APPLIED).items():
        ts = float((doc or {}).get("ts") or 0) if isinstance(doc, dict) else 0.0
        if now - ts > APPLIED_PRUNE_S:
            stale.append(proc)
        elif now - ts <= APPLIED_FRESH_S:
            rows.append({"proc": proc, **doc})
    if stale:
        client.hdel(schema.CONFIG_APPLIED, *stale)
    return sorted(rows, key=lambda r: (r.get("role", ""), r["proc"]))


# ---- Redis: write -------------------------------------------------------------------------
def _diff(base: Mapping[str, Any], clean: Mapping[str, Any]) -> list[dict]:
    return [{"key": k, "old": base[k], "new": v} for k, v in clean.items() if base[k] != v]


def apply(client: redis.Redis, changes, user: str, source: str = "web", reason: str = "",
          action: str = "settings_change", settings: Settings | None = None,
          forget_unknown: bool = False, now: float | None = None) -> dict:
    """Validate `changes` against the current values and commit them atomically.

    Returns {"version", "changes": [{key, old, new}]} (no changes: nothing is written, the
    version stays). Raises ConfigError with a message per key; redis errors propagate."""
    base_defaults = defaults(settings)
    with client.pipeline(transaction=True) as pipe:
        for _attempt in range(10):
            try:
                pipe.watch(schema.CONFIG_VERSION, schema.CONFIG_VALUES)
                version, overrides = read_overrides(client)
                base = overlay(base_defaults, overrides)
                clean, errors = validate(changes, base)
                if errors:
                    raise ConfigError(errors)
                diff = _diff(base, clean)
                stale = [k for k in overrides if k not in REGISTRY] if forget_unknown else []
                if not diff and not stale:
                    pipe.unwatch()
                    return {"version": version, "changes": []}
                _commit(pipe, diff, stale, base_defaults, version + 1, user, source, reason, action, now)
                return {"version": version + 1, "changes": diff}
            except redis.WatchError:
                pipe.reset()
    raise ConfigError({"": "the settings kept changing under this save; try again"})


def _commit(pipe, diff: list[dict], stale: list[str], base_defaults: Mapping, version: int,
            user: str, source: str, reason: str, action: str, now: float | None) -> None:
    now = time.time() if now is None else now
    pipe.multi()
    for c in diff:
        if c["new"] == base_defaults[c["key"]]:
            pipe.hdel(schema.CONFIG_VALUES, c["key"])
        else:
            pipe.hset(schema.CONFIG_VALUES, c["key"], schema.dumps(c["new"]))
    if stale:
        pipe.hdel(schema.CONFIG_VALUES, *stale)
    pipe.incr(schema.CONFIG_VERSION)
    text = schema.dumps(diff)
    pipe.xadd(schema.CONFIG_HISTORY, {"version": version, "ts": repr(now), "user": user, "source": source,
                                      "action": action, "reason": reason, "changes": text},
              maxlen=schema.CONFIG_HISTORY_MAXLEN, approximate=True)
    summary = ", ".join(f"{c['key']} {c['old']} -> {c['new']}" for c in diff)[:500]
    pipe.xadd(schema.AUDIT, audit_fields(action, user, source, reason or summary,
                                         {"version": version, "changes": diff}, ts=now),
              maxlen=schema.AUDIT_MAXLEN, approximate=True)
    pipe.publish(schema.CONFIG_EVENTS, schema.dumps({"version": version}))
    pipe.execute()


def reset(client: redis.Redis, user: str, keys=None, source: str = "web",
          settings: Settings | None = None) -> dict:
    """Back to the environment and built-in defaults: every key (None) or the given ones."""
    base = defaults(settings)
    keys = list(REGISTRY) if keys is None else list(keys)
    unknown = [k for k in keys if k not in REGISTRY]
    if unknown:
        raise ConfigError({str(k)[:100]: "unknown setting" for k in unknown})
    return apply(client, {k: base[k] for k in keys}, user, source, reason="reset to defaults",
                 action="settings_reset", settings=settings, forget_unknown=True)


def export_json(client: redis.Redis, settings: Settings | None = None) -> str:
    """Every effective value as a JSON document `import_json` accepts."""
    snap = snapshot(client, settings)
    return json.dumps({"format": EXPORT_FORMAT, "version": snap["version"], "exported_at": time.time(),
                       "values": snap["values"]}, indent=2, sort_keys=True)


def parse_import(text) -> dict:
    """The values of an exported document; ConfigError({"": why}) for anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError({"": "the file is not UTF-8 text"}) from None
    if not isinstance(text, str) or not text.strip():
        raise ConfigError({"": "the file is empty"})
    if len(text) > MAX_IMPORT_BYTES:
        raise ConfigError({"": f"the file is larger than {MAX_IMPORT_BYTES // 1024} KiB"})
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError({"": f"not valid JSON: {exc}"[:200]}) from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("values"), dict):
        raise ConfigError({"": f'not a settings export: expected {{"format": "{EXPORT_FORMAT}", "values": {{...}}}}'})
    return doc["values"]


def import_json(client: redis.Redis, text, user: str, source: str = "web",
                settings: Settings | None = None) -> dict:
    """Validate the whole document, then apply it in one transaction (or nothing at all)."""
    return apply(client, parse_import(text), user, source, reason="import from JSON",
                 action="settings_import", settings=settings)


# ---- the per-process listener ----------------------------------------------------------------
class LiveConfig:
    """This process's view of the runtime settings, kept current by a daemon thread.

    `values` is an immutable mapping replaced as a whole on every change (readers never lock).
    `on_change(fn)`: fn(values, changed_keys) runs on the listener thread after each change.
    `detail` is free-form JSON the process reports beside its version (beat: its schedule)."""

    def __init__(self, redis_url: str, role: str, poll_s: float = POLL_S, settings: Settings | None = None):
        self.role, self.poll_s = role, float(poll_s)
        self._defaults = defaults(settings)
        self.values: Mapping[str, Any] = MappingProxyType(dict(self._defaults))
        self.version = 0                          # 0: nothing read yet (the defaults)
        self.detail: dict = {}
        self.proc = f"{role}:{socket.gethostname()}:{os.getpid()}"
        self._client = schema.connect(redis_url, socket_timeout=2.0, health_check_interval=0)
        self._callbacks: list[Callable[[Mapping[str, Any], set], None]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = 0.0
        self._lock = threading.Lock()

    def on_change(self, fn: Callable[[Mapping[str, Any], set], None]) -> None:
        self._callbacks.append(fn)

    def start(self, wait_s: float = 1.0) -> "LiveConfig":
        self._thread = threading.Thread(target=self._run, name=f"config-{self.role}", daemon=True)
        self._thread.start()
        self._ready.wait(wait_s)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self._client.hdel(schema.CONFIG_APPLIED, self.proc)
        except redis.RedisError:
            pass
        self._client.close()

    def refresh(self, force: bool = False) -> bool:
        """Adopt what Redis holds if its version differs (or `force`); True when values changed.
        Safe to call from any thread (a task that must see a change made just before it)."""
        with self._lock:
            return self._refresh(force)

    def _refresh(self, force: bool) -> bool:
        if not force and int(self._client.get(schema.CONFIG_VERSION) or 0) == self.version:
            self._report()
            return False
        version, overrides = read_overrides(self._client)
        new = overlay(self._defaults, overrides)
        changed = {k for k, v in new.items() if self.values.get(k) != v}
        self.values, self.version = MappingProxyType(new), version
        for fn in list(self._callbacks) if changed else ():
            try:
                fn(self.values, changed)
            except Exception:  # noqa: BLE001  (one consumer's bug must not stop the others)
                log.exception("runtime config: on_change callback %r failed", fn)
        if changed:
            log.info("runtime config v%d adopted by %s: %s", version, self.role, sorted(changed))
        self._report(force=True)
        return bool(changed)

    def report(self) -> None:
        """Record version and `detail` in schema.CONFIG_APPLIED now (best effort)."""
        try:
            self._report(force=True)
        except redis.RedisError as exc:
            log.warning("runtime config: %s not reported: %s", self.proc, exc)

    def _report(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_report >= self.poll_s:
            self._last_report = now
            self._client.hset(schema.CONFIG_APPLIED, self.proc, schema.dumps(
                {"role": self.role, "version": self.version, "ts": now, "pid": os.getpid(),
                 "detail": self.detail}))

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(schema.CONFIG_EVENTS)
                self.refresh(force=True)          # after subscribing: no change can fall between
                self._ready.set()
                next_poll = time.monotonic() + self.poll_s
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=max(0.0, min(0.5, next_poll - time.monotonic())))
                    if msg is not None and msg.get("type") == "message":
                        self.refresh(force=True)  # versions can repeat after a flush: re-read
                    if time.monotonic() >= next_poll:
                        self.refresh()
                        next_poll = time.monotonic() + self.poll_s
            except Exception as exc:  # noqa: BLE001  (Redis gone: keep the last values, retry)
                log.warning("runtime config listener (%s): %s; keeping version %d", self.role, exc, self.version)
                self._ready.set()
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
            self._stop.wait(min(self.poll_s, 1.0))


_LIVE: dict[int, LiveConfig] = {}
_LIVE_LOCK = threading.Lock()


def live(role: str) -> LiveConfig:
    """This process's listener, started on first use (per pid: a forked child starts its own)."""
    pid = os.getpid()
    inst = _LIVE.get(pid)
    if inst is None:
        with _LIVE_LOCK:
            inst = _LIVE.get(pid)
            if inst is None:
                inst = LiveConfig(get_settings().redis_url, role).start()
                _LIVE.clear()
                _LIVE[pid] = inst
    return inst
