"""Process-wide stage registry and the hot path that records one latency sample.

Each registered stage owns one flat Python list, its *buffer*: N_BUCKETS bucket counts
followed by the running sum and the max (integer ns). Recording is a handful of list
operations in pure Python (bit_length indexing, no numpy, no lock), which measured faster than
the alternatives; see bench/telemetry.py.

Hand-over to the flusher without losing samples: counts and sum are cumulative and never
reset. The flusher (`collect`) copies the buffer in one C-level slice (atomic under the GIL)
and ships the difference to its previous copy, so every increment lands in exactly one
interval: none is lost, none is counted twice. (An earlier double-buffer swap lost a few
samples per million under CPU load: a writer preempted between loading the buffer and
incrementing it wrote into the retired buffer.) Only the max is per interval and reset after
the copy; a sample that races that reset can leave an interval's max outside its highest
bucket, which `collect` repairs to that bucket's midpoint (off by < 0.4 %).
Two hot threads recording into the same stage at the same instant can still lose an increment
(`+=` on a list item is not atomic); that is the price of a lock-free hot path.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import re
import threading
import time
from functools import wraps
from time import perf_counter_ns

import numpy as np

from core.settings import DEFAULT_STAGE_THRESHOLDS_MS
from core.telemetry.histogram import (EXACT_LIMIT, MAX_VALUE, MIDPOINT, N_BUCKETS, SUB_BITS,
                                      Histogram, bucket_index)

log = logging.getLogger(__name__)

SUM_SLOT = N_BUCKETS
MAX_SLOT = N_BUCKETS + 1
BUFFER_LEN = N_BUCKETS + 2
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_LOG_EVERY_S = 10.0
_SHIFT_BASE = SUB_BITS + 1


class UnknownStageError(KeyError):
    """A stage name that was never registered with register_stage()."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0])


def _new_buffer() -> list:
    return [0] * BUFFER_LEN


class _Stage:
    __slots__ = ("name", "threshold_ms", "buf", "shipped_counts", "shipped_sum")

    def __init__(self, name: str, threshold_ms: float):
        self.name = name
        self.threshold_ms = threshold_ms
        self.buf = _new_buffer()
        self.shipped_counts = np.zeros(N_BUCKETS, dtype=np.int64)   # as of the last collect
        self.shipped_sum = 0

    def collect(self) -> Histogram | None:
        """Samples since the previous collect (None if there were none)."""
        snapshot = self.buf[:]              # one C-level copy: atomic under the GIL
        self.buf[MAX_SLOT] = 0
        counts = np.array(snapshot[:N_BUCKETS], dtype=np.int64)
        delta = counts - self.shipped_counts
        total = snapshot[SUM_SLOT] - self.shipped_sum
        self.shipped_counts, self.shipped_sum = counts, snapshot[SUM_SLOT]
        nonzero = np.flatnonzero(delta)
        if nonzero.size == 0:
            return None
        top, max_value = int(nonzero[-1]), snapshot[MAX_SLOT]
        if bucket_index(max_value) != top:  # a sample raced the max reset (module docstring)
            max_value = int(MIDPOINT[top])
        return Histogram(delta, max(total, 0), max_value)


class Recorder:
    """The registry of stages and their live buffers; one per process (`RECORDER`)."""

    def __init__(self, thresholds_ms: dict[str, float] | None = None):
        self._stages: dict[str, _Stage] = {}
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()
        self.version = 0                 # bumped on every registry change (flusher ships it)
        self.invalid_samples = 0
        self._last_warn = 0.0
        self._unwarned = 0
        for name, ms in (thresholds_ms or {}).items():
            self.register_stage(name, ms)

    # ---- registry ------------------------------------------------------------------
    def register_stage(self, name: str, threshold_ms: float) -> None:
        """Register (or change the threshold of) a stage. Names: [a-z][a-z0-9_]{0,39}."""
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise ValueError(f"invalid stage name {name!r}: use 1-40 chars of [a-z0-9_], "
                             "starting with a letter")
        if (isinstance(threshold_ms, bool) or not isinstance(threshold_ms, numbers.Real)
                or not math.isfinite(threshold_ms) or threshold_ms <= 0):
            raise ValueError(f"stage {name!r}: threshold_ms must be a positive finite number, "
                             f"got {threshold_ms!r}")
        with self._lock:
            stage = self._stages.get(name)
            if stage is None:
                self._stages[name] = _Stage(name, float(threshold_ms))
            elif stage.threshold_ms == float(threshold_ms):
                return
            else:
                stage.threshold_ms = float(threshold_ms)
            self.version += 1

    def stage(self, name: str) -> _Stage:
        try:
            return self._stages[name]
        except (KeyError, TypeError):
            raise UnknownStageError(
                f"unknown telemetry stage {name!r}; registered stages: "
                f"{', '.join(sorted(self._stages))} (add one with register_stage(name, threshold_ms))"
            ) from None

    def thresholds_ms(self) -> dict[str, float]:
        return {name: st.threshold_ms for name, st in list(self._stages.items())}

    # ---- recording -----------------------------------------------------------------
    def record(self, stage: str, duration_ns) -> None:
        """Record one sample. Bad durations are dropped, counted and logged; never raises
        for them. An unregistered stage raises UnknownStageError."""
        st = self.stage(stage)
        if type(duration_ns) is not int or duration_ns < 0 or duration_ns > MAX_VALUE:
            duration_ns = self._coerce(stage, duration_ns)
            if duration_ns is None:
                return
        buf = st.buf
        if duration_ns < EXACT_LIMIT:
            buf[duration_ns] += 1
        else:
            shift = duration_ns.bit_length() - _SHIFT_BASE
            buf[(shift << SUB_BITS) + (duration_ns >> shift)] += 1
        buf[SUM_SLOT] += duration_ns
        if duration_ns > buf[MAX_SLOT]:
            buf[MAX_SLOT] = duration_ns

    def _coerce(self, stage: str, value) -> int | None:
        reason = None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            reason = f"not a number ({type(value).__name__})"
        elif not math.isfinite(value):
            reason = f"not finite ({value!r})"
        elif value < 0:
            reason = f"negative ({value!r})"
        if reason is None:
            return min(int(value), MAX_VALUE)
        self.invalid_samples += 1
        self._warn(stage, reason)
        return None

    def _warn(self, stage: str, reason: str) -> None:
        # rate-limited: a broken caller on the hot path must not flood the log
        now = time.monotonic()
        if now - self._last_warn < _LOG_EVERY_S:
            self._unwarned += 1
            return
        suppressed, self._unwarned, self._last_warn = self._unwarned, 0, now
        log.warning("telemetry: dropped duration for stage %r: %s (%d more dropped since the "
                    "last warning; %d in all)", stage, reason, suppressed, self.invalid_samples)

    # ---- flushing ------------------------------------------------------------------
    def collect(self) -> dict[str, Histogram]:
        """Every stage's samples since the last collect; stages without samples are left out."""
        with self._collect_lock:
            collected = {st.name: st.collect() for st in list(self._stages.values())}
        return {name: h for name, h in collected.items() if h is not None}

    def reset(self) -> None:
        """Forget all samples (a forked child must not ship its parent's)."""
        with self._collect_lock:
            for st in list(self._stages.values()):
                st.buf = _new_buffer()
                st.shipped_counts = np.zeros(N_BUCKETS, dtype=np.int64)
                st.shipped_sum = 0


RECORDER = Recorder(DEFAULT_STAGE_THRESHOLDS_MS)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=RECORDER.reset)


def register_stage(name: str, threshold_ms: float) -> None:
    RECORDER.register_stage(name, threshold_ms)


def record(stage: str, duration_ns: int) -> None:
    RECORDER.record(stage, duration_ns)


class measure_latency:  # noqa: N801  (the spec's name; used like a function)
    """Time a stage with perf_counter_ns, as a context manager or a decorator:

        with measure_latency("data_processing"): ...
        @measure_latency("model_inference")
        def infer(...): ...

    The stage is looked up once, here, so an unregistered name fails at the call site.
    Exceptions propagate; the time spent until the exception is still recorded.
    """

    __slots__ = ("_stage", "_t0")

    def __init__(self, stage: str, recorder: Recorder | None = None):
        try:
            self._stage = (recorder or RECORDER)._stages[stage]
        except (KeyError, TypeError):
            self._stage = (recorder or RECORDER).stage(stage)   # raises UnknownStageError

    def __enter__(self):
        self._t0 = perf_counter_ns()
        return self

    def __exit__(self, exc_type, exc, tb):
        duration = perf_counter_ns() - self._t0   # monotonic clock: never negative
        buf = self._stage.buf
        if duration < EXACT_LIMIT:
            buf[duration] += 1
        else:
            shift = duration.bit_length() - _SHIFT_BASE
            buf[(shift << SUB_BITS) + (duration >> shift)] += 1
        buf[SUM_SLOT] += duration
        if duration > buf[MAX_SLOT]:
            buf[MAX_SLOT] = duration
        return False

    def __call__(self, fn):
        stage = self._stage

        @wraps(fn)
        def timed_call(*args, **kwargs):
            with _StageTimer(stage):
                return fn(*args, **kwargs)
        return timed_call


class _StageTimer(measure_latency):
    """measure_latency for an already resolved stage (the decorator's per-call timer)."""

    __slots__ = ()

    def __init__(self, stage: _Stage):
        self._stage = stage


timed = measure_latency
