"""The trading guard: the public API a trading process uses to obey the console's trading state.

    from core.trading_guard import TradingGuard

    guard = TradingGuard(redis_url, heartbeat_s=2.0).start()
    guard.on_change(lambda old, new: ...)           # e.g. flatten your book on "HALTED"
    if guard.may_submit(reducing=False):            # before every order
        send_order(...)
    guard.stop()

A daemon thread subscribes to schema.TRADING_EVENTS (a transition reaches the gate within a
few milliseconds, off the caller's hot path) and re-reads schema.TRADING_STATE every
heartbeat / 8 (a missed message is caught within that period). `may_submit` is a few
attribute reads: no I/O. Fail closed:
- until the first successful read the state is UNKNOWN and nothing passes, so a process
  that starts while HALTED starts halted;
- a failed read blocks at once, and a state not refreshed for `heartbeat_s` (Redis hung or
  unreachable) blocks by itself even if the thread is stuck;
- an unknown stored value counts as HALTED.
Liquidation orders (`may_submit(reducing=True, liquidation=True)`) always pass: flattening is
the safe direction. The guard wraps a core.broker.TradingGate (pass `gate=` to share one with
a PaperBroker).
"""
from __future__ import annotations

import logging
import threading
import time

from core import schema
from core.broker import TradingGate

log = logging.getLogger(__name__)


class TradingGuard:
    def __init__(self, redis_url: str, heartbeat_s: float = 2.0, gate: TradingGate | None = None,
                 clock=time.monotonic):
        if not isinstance(heartbeat_s, (int, float)) or not 0.05 <= heartbeat_s <= 3600:
            raise ValueError(f"heartbeat_s must be within [0.05, 3600] seconds, got {heartbeat_s!r}")
        self.redis_url = redis_url
        self.heartbeat_s = float(heartbeat_s)
        self.poll_s = self.heartbeat_s / 8
        self.gate = gate or TradingGate(max_age_s=self.heartbeat_s, clock=clock)
        self.gate.max_age_s = self.heartbeat_s
        timeout = max(0.05, min(0.5, self.heartbeat_s / 4))
        self._client = schema.connect(redis_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout, health_check_interval=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages = 0

    # ---- what trading code calls ---------------------------------------------------------
    @property
    def state(self) -> str:
        """ACTIVE, REDUCING, HALTED, or UNKNOWN (never read / Redis unreachable)."""
        return self.gate.state if self._fresh() else "UNKNOWN"

    def _fresh(self) -> bool:
        return self.gate._clock() - self.gate._checked <= self.gate.max_age_s

    def may_submit(self, reducing: bool = False, liquidation: bool = False) -> bool:
        """May an order be sent now? `reducing`: it shrinks a position without crossing zero."""
        return self.gate.permits(reducing, liquidation)

    def on_change(self, fn) -> None:
        """fn(old_state, new_state), called on the guard's thread: keep it short."""
        self.gate.on_change(fn)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float = 1.0) -> "TradingGuard":
        """Start the listener thread; wait up to `wait_s` for the first state read."""
        self._thread = threading.Thread(target=self._run, name="trading-guard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while self.gate.state == "UNKNOWN" and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._client.close()

    def refresh(self) -> str:
        return self.gate.refresh(self._client)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(schema.TRADING_EVENTS)
                self.refresh()         # after subscribing: no transition can fall in between
                next_read = time.monotonic() + self.poll_s
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=max(0.0, next_read - time.monotonic()))
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(msg["data"])
                    if time.monotonic() >= next_read:
                        if self.refresh() == "UNKNOWN":
                            break
                        next_read = time.monotonic() + self.poll_s
            except Exception as exc:  # connection lost, server gone: fail closed and retry
                self.gate.fail(exc)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._stop.wait(min(self.poll_s, 0.25))

    def _on_message(self, data) -> None:
        self.messages += 1
        try:
            state = (schema.loads(data) or {}).get("to_state")
        except (ValueError, AttributeError):
            state = None
        if state is None:
            self.refresh()             # unreadable message: read the key itself
        else:
            self.gate.apply(state)
