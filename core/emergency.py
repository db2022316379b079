"""The emergency stop: halt at once, flatten, alert, audit.

`emergency_stop(client, reason, user, source)` is what the button, the HTTP API and the CLI
call. It persists HALTED and publishes it in one Lua script (core.safety.transition), then
raises a critical alert and appends an audit record (schema.AUDIT: who, when, why, and the
positions that are to be liquidated). Every trading process reacts through its trading guard
(core.trading_guard): its pub/sub listener flips the gate to HALTED within milliseconds, the
order path stops strategy orders, and the process's `Liquidator` flattens its book with
reduce-only orders, paced, then writes a second audit record with what it liquidated.

`resume_trading` returns to ACTIVE; when not halted (or reducing) it is a no-op with a message.
"""
from __future__ import annotations

import time

import redis

from core import alerts, safety, schema
from core.audit import recent_audit, write_audit  # noqa: F401  (re-exported)

LIQUIDATION_MIN_INTERVAL_S = 0.002   # at most 500 liquidation orders/s: under any broker rate limit


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _open_positions(client) -> dict[str, float]:
    out = {}
    for sym, raw in client.hgetall(schema.BROKER_POSITIONS).items():
        try:
            qty = float((schema.loads(raw) or {}).get("qty") or 0.0)
        except (ValueError, TypeError, AttributeError):
            continue
        if qty:
            out[_text(sym)] = qty
    return out


def emergency_stop(client, reason: str, user: str, source: str, clock=time.time) -> dict:
    """Halt all trading now. Returns the transition (plus `audit_id`). Raises ValueError for a
    bad reason/user/source and redis errors when the halt could not be stored."""
    result = safety.transition(client, safety.HALTED, reason, source, user=user, clock=clock,
                               force=True)
    try:
        positions = _open_positions(client)
    except redis.RedisError:
        positions = {}
    result["audit_id"] = write_audit(client, "halt", result["user"], result["source"],
                                     result["reason"],
                                     {"from_state": result["from_state"],
                                      "positions_to_liquidate": positions}, ts=result["ts"])
    alerts.raise_alert(client, "critical", "emergency_stop",
                       f"Trading HALTED by {result['user']} via {result['source']}: {result['reason']}",
                       ts=result["ts"])
    return result


def resume_trading(client, user: str, source: str, reason: str = "operator resume",
                   clock=time.time) -> dict:
    """Return to ACTIVE from HALTED or REDUCING. When already ACTIVE: a no-op whose result has
    changed=False and a message."""
    result = safety.transition(client, safety.ACTIVE, reason, source, user=user, clock=clock,
                               require_from=(safety.HALTED, safety.REDUCING))
    if not result["changed"]:
        result["message"] = f"trading is {result['from_state']}, not halted: nothing to resume"
        return result
    result["message"] = f"trading resumed from {result['from_state']}"
    write_audit(client, "resume", result["user"], result["source"], result["reason"],
                {"from_state": result["from_state"]}, ts=result["ts"])
    alerts.raise_alert(client, "info", "emergency_stop",
                       f"Trading resumed by {result['user']} via {result['source']}", ts=result["ts"])
    return result


class Liquidator:
    """Reduce-only, paced flattening of a PaperBroker, driven from the order thread.

    `start()` arms it (any thread; cheap). The order thread calls `on_quote(sym, bid, ask)`
    with each live quote: while armed, a position in `sym` is closed with one reduce-only
    order at that quote, at most one order per `min_interval_s` across symbols (paced so a
    venue's order-rate limit never rejects the exit). When the book is flat it disarms and
    sets `done_at`; `report()` hands the record over once (for the audit trail).
    """

    def __init__(self, broker, min_interval_s: float = LIQUIDATION_MIN_INTERVAL_S,
                 clock=time.time):
        self.broker = broker
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self.active = False
        self.started_at = 0.0
        self.done_at = 0.0
        self.cancelled = 0
        self.orders: list[dict] = []
        self._last = float("-inf")
        self._reported = True

    def start(self) -> None:
        if self.active:
            return
        self.orders = []
        self.started_at = self._clock()
        self.done_at = 0.0
        self.cancelled = self.broker.cancel_open_orders()
        self._reported = False
        self.active = True            # last: the order thread acts only once all is set

    def stop(self) -> None:
        """Disarm without finishing (trading resumed before the book was flat)."""
        self.active = False

    def on_quote(self, sym: int, bid: float, ask: float, sim_day: int = 0) -> bool:
        """Close `sym` at this quote if armed and paced; True when an order was filled."""
        held = self.broker.position_qty(sym)
        if held:
            now = self._clock()
            if now - self._last < self.min_interval_s:
                return False
            side = -1 if held > 0 else 1
            done = self.broker.submit(sym, side, abs(held), bid, ask, sim_day, liquidation=True)
            if done is None:
                return False
            self._last = now
            self.orders.append({"symbol": self.broker.symbols[sym], "side": side, "qty": abs(held),
                                "price": done[1], "order_id": done[0], "ts": now})
        if self.broker.flat():
            self.done_at = self._clock()
            self.active = False
        return bool(held)

    def report(self) -> dict | None:
        """The finished liquidation's record, once; None while running or already reported."""
        if self.active or self._reported or not self.done_at:
            return None
        self._reported = True
        return {"started_at": self.started_at, "done_at": self.done_at,
                "duration_ms": (self.done_at - self.started_at) * 1000.0,
                "cancelled_orders": self.cancelled, "orders": list(self.orders)}
