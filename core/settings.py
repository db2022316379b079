"""The one place that reads the environment.

Ecosystem names are read as they are (REDIS_URL, DATABASE_URL, HOST, PORT); the console's
own variables carry the prefix CONSOLE_. Every value is parsed and range-checked once, at
import of `get_settings()`, and a bad value stops the process with a message naming the
variable (fail fast, as Redash's settings helpers do). Nothing else in the code base reads
os.environ for configuration, and no URL, port or secret literal lives anywhere else.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

PREFIX = "CONSOLE_"
ROOT = Path(__file__).resolve().parent.parent

# The spec's stage thresholds in milliseconds; a process may register more stages.
DEFAULT_STAGE_THRESHOLDS_MS: dict[str, float] = {
    "data_processing": 50.0,
    "model_inference": 100.0,
    "signal_generation": 20.0,
    "order_execution": 50.0,
    "database_query": 10.0,
    "cache_access": 1.0,
    "total_pipeline": 100.0,
}


class SettingsError(ValueError):
    """A configuration value is missing, malformed or out of range."""


def _parse_int(raw: str) -> int:
    return int(raw.strip(), 10)


def _parse_float(raw: str) -> float:
    value = float(raw.strip())
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], object], default,
          lo=None, hi=None):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None
    if lo is not None and value < lo:
        raise SettingsError(f"{name}={raw!r}: must be >= {lo}")
    if hi is not None and value > hi:
        raise SettingsError(f"{name}={raw!r}: must be <= {hi}")
    return value


def _read_url(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if value and not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={value!r}: must be an http:// or https:// URL")
    return value


def _read_secret(env: Mapping[str, str], name: str, min_len: int) -> str:
    value = (env.get(name) or "").strip()
    if value and len(value) < min_len:
        raise SettingsError(f"{name}: must be at least {min_len} characters (value not shown)")
    return value


@dataclass(frozen=True)
class Settings:
    """Start-up configuration. Defaults are documented in README.md (Configuration)."""

    host: str = "127.0.0.1"
    port: int = 8050
    redis_url: str = "redis://127.0.0.1:6390/0"
    redis_external: bool = False          # True when REDIS_URL was given
    redis_port: int = 6390                # the private server's port
    database_url: str = ""
    var_dir: Path = ROOT / "var"
    log_level: str = "INFO"
    # reference pipeline / simulator
    symbols: int = 20
    tick_rate: float = 1000.0             # ticks per second, all symbols together
    sim_day_seconds: float = 60.0         # wall seconds per simulated trading day
    backfill_days: int = 504              # about two years of daily bars
    seed: int = 7
    initial_cash: float = 1_000_000.0
    # telemetry and collection
    flush_interval_s: float = 1.0
    flush_backlog: int = 120              # flush intervals kept while Redis is down
    metrics_interval_s: float = 1.0
    heartbeat_stale_s: float = 10.0
    # web login (issue 8): secrets never appear in repr()
    secret_key: str = field(default="", repr=False)       # signs session cookies; "" = keep one in Redis
    admin_password: str = field(default="", repr=False)   # first-start password of `admin`; "" = random
    secure_cookies: bool = False                           # set when served over HTTPS
    session_hours: float = 12.0
    alert_webhook_url: str = ""                            # POST JSON on fire/resolve; "" = off
    # memory and cache management (issue 4)
    gc_threshold_pct: float = 70.0        # system memory % above which memory.optimize collects
    memory_threshold_pct: float = 80.0    # ... above which it also cleans caches and alerts
    cache_ttl_s: float = 300.0            # default TTL of a cache entry
    cache_max_entries: int = 1000         # L1 bound in entries (the spec's max_cache_size)
    cache_max_bytes: int = 64 * 1024**2   # L1 bound in bytes
    cache_l2_max_bytes: int = 256 * 1024**2   # stated L2 capacity (bytes of cache entries in Redis)
    cache_max_value_bytes: int = 8 * 1024**2  # one serialized value, larger is rejected
    memory_optimize_interval_s: float = 60.0
    cache_optimize_interval_s: float = 60.0
    database_analyze_interval_s: float = 300.0
    # safety (issue 5 part B)
    api_token: str = field(default="", repr=False)   # CONSOLE_API_TOKEN (>= 16 chars); "" = API answers 401
    metrics_token: str = field(default="", repr=False)   # CONSOLE_METRICS_TOKEN (>= 16 chars); "" = /metrics open
    guard_heartbeat_s: float = 2.0        # trading guard blocks orders after this long without Redis
    safety_interval_s: float = 1.0        # SafetyController rule evaluation period
    # risk analytics (issue 5 part A)
    risk_interval_s: float = 5.0          # risk.compute beat period
    risk_lookback_days: int = 252         # daily returns the risk figures use
    risk_mc_scenarios: int = 20_000       # Monte Carlo scenarios of the live computation
    model_confidence_threshold: float = 0.6   # model confidence below this raises an alert
    # compute kernels and the signal model (issue 3)
    model_path: Path = ROOT / "var" / "models" / "signal.onnx"   # built by `make setup`
    max_workers: int = min(32, os.cpu_count() or 1)   # threads for numba, ONNX Runtime, batches
    vectorization_enabled: bool = True    # numpy backend may be selected
    numba_enabled: bool = True
    onnx_enabled: bool = True
    kernels_optimize_interval_s: float = 300.0   # kernels.optimize beat period
    # stress-test jobs on Celery (issue 6): redelivery, staleness, fan-out, history, schedule
    stress_visibility_timeout_s: float = 300.0   # broker visibility_timeout (global, Redis transport)
    stress_stale_after_s: float = 420.0   # a running job silent this long is failed (> visibility)
    stress_queue_timeout_s: float = 3600.0   # a job queued this long without a worker is failed
    stress_reap_interval_s: float = 30.0  # stress.reap beat period
    stress_daily_at: str = "22:00"        # UTC "HH:MM" of stress.daily, or "off"
    stress_history: int = 200             # jobs kept in the history
    stress_worker_processes: int = 2      # stress worker processes assumed when none reports
    stress_chunks_per_process: int = 2    # Monte Carlo chunks per stress worker process (>= 2)
    stress_max_chunk_paths: int = 25_000  # bounds one chunk's run time (cancel latency)
    stage_thresholds_ms: dict = field(default_factory=lambda: dict(DEFAULT_STAGE_THRESHOLDS_MS))

    @property
    def sqlite_path(self) -> Path | None:
        """Filesystem path when DATABASE_URL is SQLite, else None."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix):])
        return None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse `env` (default: os.environ). Raises SettingsError naming the bad variable."""
    env = os.environ if env is None else env
    p = PREFIX
    var_dir = Path(env.get(p + "VAR_DIR") or (ROOT / "var")).resolve()
    redis_port = _read(env, p + "REDIS_PORT", _parse_int, 6390, 1, 65535)
    redis_url = (env.get("REDIS_URL") or "").strip()
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL={redis_url!r}: must start with redis://, rediss:// or unix://")
    database_url = (env.get("DATABASE_URL") or "").strip() or f"sqlite:///{var_dir / 'console.db'}"
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise SettingsError(f"DATABASE_URL={database_url!r}: must be sqlite:///PATH or postgresql://...")
    log_level = (env.get(p + "LOG_LEVEL") or "INFO").strip().upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"{p}LOG_LEVEL={log_level!r}: must be DEBUG, INFO, WARNING or ERROR")
    host = (env.get("HOST") or "127.0.0.1").strip()
    return Settings(
        host=host,
        port=_read(env, "PORT", _parse_int, 8050, 1, 65535),
        redis_url=redis_url or f"redis://127.0.0.1:{redis_port}/0",
        redis_external=bool(redis_url),
        redis_port=redis_port,
        database_url=database_url,
        var_dir=var_dir,
        log_level=log_level,
        symbols=_read(env, p + "SYMBOLS", _parse_int, 20, 1, 500),
        tick_rate=_read(env, p + "TICK_RATE", _parse_float, 1000.0, 1.0, 200_000.0),
        sim_day_seconds=_read(env, p + "SIM_DAY_SECONDS", _parse_float, 60.0, 1.0, 86_400.0),
        backfill_days=_read(env, p + "BACKFILL_DAYS", _parse_int, 504, 30, 5000),
        seed=_read(env, p + "SEED", _parse_int, 7, 0, 2**32 - 1),
        initial_cash=_read(env, p + "INITIAL_CASH", _parse_float, 1_000_000.0, 1.0, 1e12),
        flush_interval_s=_read(env, p + "FLUSH_INTERVAL", _parse_float, 1.0, 0.05, 60.0),
        flush_backlog=_read(env, p + "FLUSH_BACKLOG", _parse_int, 120, 1, 100_000),
        metrics_interval_s=_read(env, p + "METRICS_INTERVAL", _parse_float, 1.0, 0.2, 60.0),
        heartbeat_stale_s=_read(env, p + "HEARTBEAT_STALE", _parse_float, 10.0, 1.0, 3600.0),
        secret_key=_read_secret(env, p + "SECRET_KEY", 32),
        admin_password=_read_secret(env, p + "ADMIN_PASSWORD", 8),
        secure_cookies=_read(env, p + "SECURE_COOKIES", _parse_bool, False),
        session_hours=_read(env, p + "SESSION_HOURS", _parse_float, 12.0, 0.1, 24.0 * 30),
        alert_webhook_url=_read_url(env, p + "ALERT_WEBHOOK_URL"),
        **_memory_cache_settings(env, p),
        api_token=_read_secret(env, p + "API_TOKEN", 16),
        metrics_token=_read_secret(env, p + "METRICS_TOKEN", 16),
        guard_heartbeat_s=_read(env, p + "GUARD_HEARTBEAT", _parse_float, 2.0, 0.2, 60.0),
        safety_interval_s=_read(env, p + "SAFETY_INTERVAL", _parse_float, 1.0, 0.2, 60.0),
        risk_interval_s=_read(env, p + "RISK_INTERVAL", _parse_float, 5.0, 1.0, 3600.0),
        risk_lookback_days=_read(env, p + "RISK_LOOKBACK_DAYS", _parse_int, 252, 20, 5000),
        risk_mc_scenarios=_read(env, p + "RISK_MC_SCENARIOS", _parse_int, 20_000, 1000, 1_000_000),
        model_confidence_threshold=_read(env, p + "MODEL_CONFIDENCE_THRESHOLD", _parse_float,
                                         0.6, 0.0, 1.0),
        **_kernel_settings(env, p),
        **_stress_job_settings(env, p),
    )


def _kernel_settings(env: Mapping[str, str], p: str) -> dict:
    """Model path (relative paths are under the repo root), parallelism and backend flags (issue 3)."""
    raw_path = (env.get(p + "MODEL_PATH") or "").strip()
    model_path = Path(raw_path) if raw_path else ROOT / "var" / "models" / "signal.onnx"
    if not model_path.is_absolute():
        model_path = ROOT / model_path
    if model_path.suffix != ".onnx":
        raise SettingsError(f"{p}MODEL_PATH={raw_path!r}: must name an .onnx file")
    return dict(
        model_path=model_path,
        max_workers=_read(env, p + "MAX_WORKERS", _parse_int, min(32, os.cpu_count() or 1), 1, 1024),
        vectorization_enabled=_read(env, p + "VECTORIZATION_ENABLED", _parse_bool, True),
        numba_enabled=_read(env, p + "NUMBA_ENABLED", _parse_bool, True),
        onnx_enabled=_read(env, p + "ONNX_ENABLED", _parse_bool, True),
        kernels_optimize_interval_s=_read(env, p + "KERNELS_OPTIMIZE_INTERVAL", _parse_float, 300.0,
                                          10.0, 86_400.0),
    )


def _parse_daily_at(raw: str) -> str:
    """ "HH:MM" (UTC, 24-hour) or "off"; returned normalized."""
    text = raw.strip().lower()
    if text == "off":
        return text
    hours, sep, minutes = text.partition(":")
    if not sep or not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError('must be "HH:MM" (UTC) or "off"')
    if not (0 <= int(hours) <= 23 and 0 <= int(minutes) <= 59):
        raise ValueError("hour must be 0..23 and minute 0..59")
    return f"{int(hours):02d}:{minutes}"


def _stress_job_settings(env: Mapping[str, str], p: str) -> dict:
    """Stress-test jobs (issue 6). The stale bound must exceed the visibility timeout, so a
    job whose worker died is redelivered (and resumes) before it is declared lost."""
    visibility = _read(env, p + "STRESS_VISIBILITY_TIMEOUT", _parse_float, 300.0, 5.0, 86_400.0)
    out = dict(
        stress_visibility_timeout_s=visibility,
        stress_stale_after_s=_read(env, p + "STRESS_STALE_AFTER", _parse_float, visibility + 120.0,
                                   10.0, 7 * 86_400.0),
        stress_queue_timeout_s=_read(env, p + "STRESS_QUEUE_TIMEOUT", _parse_float, 3600.0,
                                     60.0, 7 * 86_400.0),
        stress_reap_interval_s=_read(env, p + "STRESS_REAP_INTERVAL", _parse_float, 30.0, 1.0, 3600.0),
        stress_daily_at=_read(env, p + "STRESS_DAILY_AT", _parse_daily_at, "22:00"),
        stress_history=_read(env, p + "STRESS_HISTORY", _parse_int, 200, 10, 10_000),
        stress_worker_processes=_read(env, p + "STRESS_WORKER_PROCESSES", _parse_int, 2, 1, 1024),
        stress_chunks_per_process=_read(env, p + "STRESS_CHUNKS_PER_PROCESS", _parse_int, 2, 2, 64),
        stress_max_chunk_paths=_read(env, p + "STRESS_MAX_CHUNK_PATHS", _parse_int, 25_000,
                                     1000, 1_000_000),
    )
    if out["stress_stale_after_s"] <= visibility:
        raise SettingsError(f"{p}STRESS_STALE_AFTER={out['stress_stale_after_s']} must exceed "
                            f"{p}STRESS_VISIBILITY_TIMEOUT={visibility}: a job must get the chance "
                            "to be redelivered before it is declared lost")
    return out


def _memory_cache_settings(env: Mapping[str, str], p: str) -> dict:
    """Thresholds, cache bounds and optimizer schedules (issue 4); GC must trigger below memory."""
    out = dict(
        gc_threshold_pct=_read(env, p + "GC_THRESHOLD_PCT", _parse_float, 70.0, 1.0, 99.0),
        memory_threshold_pct=_read(env, p + "MEMORY_THRESHOLD_PCT", _parse_float, 80.0, 1.0, 99.0),
        cache_ttl_s=_read(env, p + "CACHE_TTL", _parse_float, 300.0, 0.1, 30 * 86_400.0),
        cache_max_entries=_read(env, p + "CACHE_MAX_ENTRIES", _parse_int, 1000, 1, 10_000_000),
        cache_max_bytes=_read(env, p + "CACHE_MAX_BYTES", _parse_int, 64 * 1024**2, 1024, 2**40),
        cache_l2_max_bytes=_read(env, p + "CACHE_L2_MAX_BYTES", _parse_int, 256 * 1024**2, 1024, 2**40),
        cache_max_value_bytes=_read(env, p + "CACHE_MAX_VALUE_BYTES", _parse_int, 8 * 1024**2,
                                    64, 512 * 1024**2),
        memory_optimize_interval_s=_read(env, p + "MEMORY_OPTIMIZE_INTERVAL", _parse_float, 60.0,
                                         1.0, 86_400.0),
        cache_optimize_interval_s=_read(env, p + "CACHE_OPTIMIZE_INTERVAL", _parse_float, 60.0,
                                        1.0, 86_400.0),
        database_analyze_interval_s=_read(env, p + "DATABASE_ANALYZE_INTERVAL", _parse_float, 300.0,
                                          1.0, 86_400.0),
    )
    if out["gc_threshold_pct"] >= out["memory_threshold_pct"]:   # as the Settings page checks it
        raise SettingsError(f"{p}GC_THRESHOLD_PCT={out['gc_threshold_pct']} must be below "
                            f"{p}MEMORY_THRESHOLD_PCT={out['memory_threshold_pct']}")
    return out


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed once."""
    return load_settings()
