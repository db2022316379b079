"""Background flusher: ships this process's histograms to Redis once per interval.

Every interval (aligned to wall-clock boundaries, so one-second intervals are the seconds of
the clock) the flusher collects the recorder's histograms and queues ONE stream entry holding every
stage's histogram blob: {proc, role, sec, h:<stage>: blob}. Shipping is one pipelined round
trip: XADD (trimmed by MINID ~) plus, only when the stage registry changed, one HSET of
TELE_STAGES. Redis load therefore depends on the number of processes, never on the sample rate.

Redis down: entries wait in a bounded backlog (settings.flush_backlog intervals); beyond it
the oldest are dropped and counted; shipping is retried with exponential backoff. The thread
catches everything, logs it (rate-limited) and carries on: it never dies.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
import time

from redis.backoff import NoBackoff
from redis.retry import Retry

from core import schema
from core.settings import get_settings
from core.telemetry.recorder import RECORDER, Recorder

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
_LOG_EVERY_S = 30.0


def proc_id(role: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


class Flusher:
    """One per process. Use start_flusher(); tests may drive flush_once() directly."""

    def __init__(self, role: str, redis_url: str | None = None, interval_s: float | None = None,
                 recorder: Recorder | None = None, backlog: int | None = None):
        settings = get_settings()
        self.role = role
        self.interval_s = float(interval_s or settings.flush_interval_s)
        if not math.isfinite(self.interval_s) or self.interval_s <= 0:
            raise ValueError(f"flush interval must be a positive number of seconds, got {interval_s!r}")
        self.recorder = recorder or RECORDER
        self.proc = proc_id(role)
        # no client-side retries: the flusher has its own backoff and must not block for long
        self._client = schema.connect(redis_url or settings.redis_url,
                                      retry=Retry(NoBackoff(), 0))
        self._backlog: collections.deque = collections.deque()
        self._max_backlog = int(backlog or settings.flush_backlog)
        self._shipped_version = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_log = 0.0
        self._lock = threading.Lock()    # flush_once from stop() vs the thread
        self.flushed = self.dropped = self.dropped_samples = self.errors = 0

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "Flusher":
        self._thread = threading.Thread(target=self._run, name=f"telemetry-flusher-{self.role}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, then flush what was recorded since the last interval."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._retry_at = 0.0
        self.flush_once(int(time.time()))
        self._client.close()

    def stats(self) -> dict:
        return {"flushed": self.flushed, "dropped": self.dropped, "backlog": len(self._backlog),
                "errors": self.errors, "dropped_samples": self.dropped_samples,
                "invalid_samples": self.recorder.invalid_samples}

    def _run(self) -> None:
        while not self._stop.is_set():
            boundary = (math.floor(time.time() / self.interval_s) + 1) * self.interval_s
            if self._stop.wait(max(0.0, boundary - time.time())):
                return
            # Label the entry with the second the interval started in. With intervals longer
            # than 1 s (or a flusher that fell behind) several seconds' samples share one
            # label; per-second ops/s is exact only at the default 1 s interval.
            second = int(math.floor(boundary - self.interval_s + 1e-6))
            try:
                self.flush_once(second)
            except Exception:            # never let the thread die; flush_once logs details
                self.errors += 1
                self._log(logging.ERROR, "telemetry flusher: unexpected error", exc_info=True)

    # ---- one interval ----------------------------------------------------------------
    def flush_once(self, second: int | None = None) -> None:
        """Collect the recorder's histograms into the backlog and try to ship the backlog."""
        with self._lock:
            second = int(time.time()) if second is None else second
            histograms = self.recorder.collect()
            if histograms:
                self._enqueue(second, histograms)
            if self._needs_shipping() and time.monotonic() >= self._retry_at:
                self._ship()

    def _enqueue(self, second: int, histograms: dict) -> None:
        fields = {"proc": self.proc, "role": self.role, "sec": str(second)}
        fields.update({f"h:{stage}": h.encode() for stage, h in histograms.items()})
        samples = sum(h.count for h in histograms.values())
        self._backlog.append((fields, samples))
        while len(self._backlog) > self._max_backlog:
            _, lost = self._backlog.popleft()
            self.dropped += 1
            self.dropped_samples += lost
            self._log(logging.WARNING, "telemetry flusher: backlog full (%d intervals), dropped the "
                      "oldest; %d intervals / %d samples dropped so far",
                      self._max_backlog, self.dropped, self.dropped_samples)

    def _needs_shipping(self) -> bool:
        return bool(self._backlog) or self._shipped_version != self.recorder.version

    def _ship(self) -> None:
        version = self.recorder.version
        entries = list(self._backlog)
        minid = int((time.time() - schema.RAW_STREAM_RETENTION_S) * 1000)
        try:
            pipe = self._client.pipeline(transaction=False)
            if version != self._shipped_version:
                pipe.hset(schema.TELE_STAGES, mapping={
                    name: schema.dumps({"threshold_ms": ms})
                    for name, ms in self.recorder.thresholds_ms().items()})
            for fields, _ in entries:
                pipe.xadd(schema.TELE_RAW, fields, minid=minid, approximate=True)
            pipe.execute()
        except Exception as exc:        # Redis down or slow: keep the backlog, back off
            self.errors += 1
            self._failures += 1
            delay = min(MAX_BACKOFF_S, self.interval_s * 2 ** min(self._failures - 1, 10))
            self._retry_at = time.monotonic() + delay
            self._log(logging.WARNING, "telemetry flusher: Redis write failed (%s); %d intervals "
                      "waiting, retry in %.1fs", exc, len(self._backlog), delay)
            return
        for _ in entries:
            self._backlog.popleft()
        self.flushed += len(entries)
        self._shipped_version = version
        if self._failures:
            log.info("telemetry flusher: Redis reachable again; shipped %d intervals", len(entries))
        self._failures = 0

    def _log(self, level: int, msg: str, *args, exc_info=False) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S or level >= logging.ERROR:
            self._last_log = now
            log.log(level, msg, *args, exc_info=exc_info)


_ACTIVE: Flusher | None = None
_ACTIVE_LOCK = threading.Lock()


def start_flusher(role: str, redis_url: str | None = None,
                  interval_s: float | None = None) -> Flusher:
    """Start this process's flusher (daemon thread); a second call returns the running one."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        if _ACTIVE is not None and _ACTIVE._thread is not None and _ACTIVE._thread.is_alive() \
                and not _ACTIVE._stop.is_set():
            return _ACTIVE
        _ACTIVE = Flusher(role, redis_url, interval_s).start()
        return _ACTIVE
