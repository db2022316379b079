"""Paper broker: market orders filled at the simulated quote (buy at the ask, sell at the bid),
positions with average cost, cash, realized / unrealized / daily P&L.

State lives in memory for the hot path; `persist(client)` ships it to Redis in one pipeline
(called off the hot path, every ~250 ms) and `load(client)` restores it on restart:
  schema.BROKER_ACCOUNT   hash   cash, realized_pnl, unrealized_pnl, equity, initial_cash,
                                 orders_total, fills_total, day_start_equity, daily_pnl, sim_day, ts
  schema.BROKER_POSITIONS hash   symbol -> JSON {symbol, qty, avg_price, realized_pnl, last_price}
  schema.BROKER_ORDERS / _FILLS  streams capped at ~schema.ORDERS_MAXLEN
  schema.PIPELINE_DAILY   zset   JSON {day, date, pnl, equity, realized_pnl}, score = day
Orders and fills waiting for Redis sit in bounded deques: while Redis is down the oldest are
dropped (counted in `dropped`), so memory stays bounded and the order path never blocks.

`TradingGate.permits(reducing, liquidation)` is the hook the order path consults before every
order (ACTIVE / REDUCING / HALTED); it reads a cached state refreshed off the hot path from
schema.TRADING_STATE (core.trading_guard keeps it fresh and reacts to published transitions)
and fails closed. An optional core.limits.LimitMonitor runs the pre-trade limit check; orders
carry kind "strategy" or "liquidation" (the emergency stop's reduce-only orders).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from core import schema

log = logging.getLogger(__name__)

PENDING_MAX = 20_000         # orders/fills kept for Redis while it is unreachable
DAILY_KEEP = 5_000           # simulated days of P&L kept in PIPELINE_DAILY


STATES = ("ACTIVE", "REDUCING", "HALTED")


class TradingGate:
    """Cached trading state, consulted by the order path before every order.

    ACTIVE (or key absent: nobody halted trading) lets every order through; REDUCING only
    risk-reducing ones; HALTED only the emergency stop's reduce-only liquidation orders.
    A failed read ("UNKNOWN"), an unknown stored value (read as HALTED) or a cache older than
    `max_age_s` (the heartbeat: nobody refreshed it, Redis unreachable) blocks strategy orders.
    Listeners (`on_change(fn)`, fn(old, new)) run on the thread that saw the change: keep them
    to setting flags.
    """

    def __init__(self, max_age_s: float = 2.0, clock=time.monotonic):
        self.max_age_s = max_age_s
        self._clock = clock
        self._active = False
        self._reducing = False
        self._checked = float("-inf")
        self.state = "UNKNOWN"
        self.last_error = ""
        self._listeners: list = []
        self._lock = threading.Lock()

    def allowed(self) -> bool:
        """Any strategy order may pass (ACTIVE and fresh)."""
        return self._active and self._clock() - self._checked <= self.max_age_s

    def permits(self, reducing: bool, liquidation: bool = False) -> bool:
        """May this order pass? Liquidation orders (reduce-only, the emergency stop's) always
        may: flattening is the safe direction even when the state is unknown."""
        if liquidation:
            return reducing
        if self._clock() - self._checked > self.max_age_s:
            return False
        return self._active or (self._reducing and reducing)

    def on_change(self, fn) -> None:
        self._listeners.append(fn)

    def apply(self, state: str) -> str:
        """Set the state from a trusted fresh source (a read, a published transition)."""
        value = state if state in STATES else "HALTED"
        with self._lock:
            old = self.state
            self.state = value
            self._active = value == "ACTIVE"
            self._reducing = value == "REDUCING"
            self._checked = self._clock()
        if old != value:
            self._notify(old, value)
        return value

    def fail(self, exc: object) -> str:
        """Redis unreachable: block at once (fail closed)."""
        with self._lock:
            old = self.state
            self._active = self._reducing = False
            self.state, self.last_error = "UNKNOWN", str(exc)
        if old != "UNKNOWN":           # log the transition, not every retry
            log.warning("trading state unreadable (%s): orders blocked", exc)
            self._notify(old, "UNKNOWN")
        return self.state

    def _notify(self, old: str, new: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(old, new)
            except Exception:  # a listener must never break the gate
                log.exception("trading gate listener %r failed", fn)

    def refresh(self, client) -> str:
        """Read the state from Redis; returns ACTIVE, REDUCING, HALTED or UNKNOWN (read failed)."""
        try:
            raw = client.get(schema.TRADING_STATE)
        except Exception as exc:  # any client failure means "unknown": fail closed
            return self.fail(exc)
        value = "ACTIVE" if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)
        return self.apply(value)


@dataclass
class Position:
    symbol: str
    qty: float = 0.0
    avg_price: float = 0.0
    realized_pnl: float = 0.0
    last_price: float = 0.0

    def apply(self, side: int, qty: float, price: float) -> float:
        """Book a fill; returns the P&L it realized (average-cost method)."""
        signed = side * qty
        realized = 0.0
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            total = self.qty + signed
            self.avg_price = (self.avg_price * abs(self.qty) + price * qty) / abs(total)
            self.qty = total
        else:
            closing = min(qty, abs(self.qty))
            realized = (price - self.avg_price) * closing * (1 if self.qty > 0 else -1)
            self.qty += signed
            if abs(self.qty) < 1e-12:
                self.qty, self.avg_price = 0.0, 0.0
            elif (self.qty > 0) == (signed > 0):   # crossed through zero: the rest opens at price
                self.avg_price = price
        self.realized_pnl += realized
        return realized


class PaperBroker:
    """In-memory paper account; thread-safe between the hot path and the persister."""

    def __init__(self, symbols, initial_cash: float, gate: TradingGate | None = None,
                 clock=time.time, limits=None):
        if not initial_cash > 0:
            raise ValueError(f"initial_cash must be > 0, got {initial_cash!r}")
        self.symbols = list(symbols)
        self.initial_cash = float(initial_cash)
        self.gate = gate
        self.limits = limits          # a core.limits.LimitMonitor, or None: no pre-trade limits
        self._clock = clock
        self._lock = threading.Lock()
        self.cash = self.initial_cash
        self.realized_pnl = 0.0
        self.positions = {s: Position(s) for s in self.symbols}
        self._pos_by_idx = [self.positions[s] for s in self.symbols]
        self._mid = [0.0] * len(self.symbols)
        self.orders_total = 0
        self.fills_total = 0
        self.rejected_total = 0
        self.limit_rejects = 0
        self.last_reject = ""
        self.liquidation_orders = 0
        self.day_start_equity = self.initial_cash
        self.sim_day = 0
        self.last_daily_pnl = 0.0
        self._seq = 0
        self._sent_seq = 0
        self._orders: deque = deque(maxlen=PENDING_MAX)
        self._fills: deque = deque(maxlen=PENDING_MAX)
        self._daily: list[tuple[int, str]] = []
        self.dropped = 0

    # ---- hot path ------------------------------------------------------------------------
    def mark(self, sym: int, mid: float) -> None:
        self._mid[sym] = mid

    def position_qty(self, sym: int) -> float:
        return self._pos_by_idx[sym].qty

    def submit(self, sym: int, side: int, qty: float, bid: float, ask: float,
               sim_day: int = 0, liquidation: bool = False) -> tuple | None:
        """Market order for symbol index `sym`; fills now at ask (buy) / bid (sell).
        Returns (order_id, fill_price) or None when the gate or a limit blocks it or the input
        is bad. `liquidation=True` marks the emergency stop's reduce-only orders: they pass a
        HALTED gate, and are refused unless they reduce the position without crossing zero."""
        if side not in (1, -1) or not qty > 0 or not (0 < bid <= ask):
            self.rejected_total += 1
            return None
        pos = self._pos_by_idx[sym]
        held = pos.qty
        reducing = held != 0 and (held > 0) != (side > 0) and qty <= abs(held) * (1 + 1e-12)
        if self.gate is not None and not self.gate.permits(reducing, liquidation):
            self.rejected_total += 1
            self.last_reject = "TRADING_STATE"
            return None
        if liquidation and not reducing:
            self.rejected_total += 1
            self.last_reject = "NOT_REDUCE_ONLY"
            return None
        price = ask if side == 1 else bid
        if self.limits is not None and not reducing:
            gross, net = self.exposure()
            ok, reason = self.limits.check_order(held, side * qty, price, gross, net,
                                                 self.cash + net, self.day_start_equity)
            if not ok:
                self.rejected_total += 1
                self.limit_rejects += 1
                self.last_reject = reason
                return None
        now = self._clock()
        with self._lock:
            self.orders_total += 1
            if liquidation:
                self.liquidation_orders += 1
            oid = self.orders_total
            self.realized_pnl += pos.apply(side, qty, price)
            pos.last_price = (bid + ask) * 0.5
            self._mid[sym] = pos.last_price
            self.cash -= side * qty * price
            self.fills_total += 1
            self._queue(self._orders, {"id": oid, "symbol": pos.symbol, "side": side, "qty": qty,
                                       "type": "market", "ts": now, "day": sim_day,
                                       "kind": "liquidation" if liquidation else "strategy"})
            self._queue(self._fills, {"order_id": oid, "symbol": pos.symbol, "side": side,
                                      "qty": qty, "price": price, "ts": now, "day": sim_day})
        return oid, price

    def _queue(self, q: deque, fields: dict) -> None:
        if len(q) == q.maxlen:
            self.dropped += 1
        self._seq += 1
        q.append((self._seq, fields))

    def cancel_open_orders(self) -> int:
        """Cancel resting orders. The paper broker fills market orders at once, so none ever
        rest: returns 0 (the call is in the halt sequence for brokers that do keep orders)."""
        return 0

    def flat(self) -> bool:
        return not any(p.qty for p in self._pos_by_idx)

    def open_positions(self) -> dict[str, float]:
        """symbol -> qty of every non-zero position."""
        return {p.symbol: p.qty for p in self._pos_by_idx if p.qty}

    # ---- valuation -----------------------------------------------------------------------
    def exposure(self) -> tuple[float, float]:
        """(gross, net) exposure at the marks: sum |qty x price|, sum qty x price."""
        gross = net = 0.0
        for i, p in enumerate(self._pos_by_idx):
            if p.qty:
                v = p.qty * self._price(i)
                net += v
                gross += abs(v)
        return gross, net

    def exposures(self) -> dict[str, float]:
        """symbol -> qty x mark price, every symbol (zero when flat)."""
        return {p.symbol: p.qty * self._price(i) if p.qty else 0.0
                for i, p in enumerate(self._pos_by_idx)}

    def _price(self, i: int) -> float:
        return self._mid[i] or self._pos_by_idx[i].last_price or self._pos_by_idx[i].avg_price

    def positions_value(self) -> float:
        return sum(p.qty * self._price(i) for i, p in enumerate(self._pos_by_idx) if p.qty)

    def unrealized_pnl(self) -> float:
        return sum(p.qty * (self._price(i) - p.avg_price)
                   for i, p in enumerate(self._pos_by_idx) if p.qty)

    def equity(self) -> float:
        return self.cash + self.positions_value()

    def account(self) -> dict:
        equity = self.equity()
        return {"cash": self.cash, "realized_pnl": self.realized_pnl,
                "unrealized_pnl": self.unrealized_pnl(), "equity": equity,
                "initial_cash": self.initial_cash, "orders_total": self.orders_total,
                "fills_total": self.fills_total, "rejected_total": self.rejected_total,
                "limit_rejects": self.limit_rejects, "liquidation_orders": self.liquidation_orders,
                "day_start_equity": self.day_start_equity,
                "daily_pnl": equity - self.day_start_equity, "sim_day": self.sim_day,
                "dropped": self.dropped, "ts": self._clock()}

    def close_day(self, day: int, date: str) -> float:
        """End simulated day `day`: returns its P&L and queues it for PIPELINE_DAILY."""
        with self._lock:
            equity = self.equity()
            pnl = equity - self.day_start_equity
            self._daily.append((day, schema.dumps({"day": day, "date": date, "pnl": pnl,
                                                   "equity": equity,
                                                   "realized_pnl": self.realized_pnl})))
            del self._daily[:-DAILY_KEEP]
            self.day_start_equity = equity
            self.sim_day = day + 1
            self.last_daily_pnl = pnl
        return pnl

    # ---- persistence ---------------------------------------------------------------------
    def persist(self, client) -> int:
        """Ship account, changed positions, new orders/fills and daily P&L in one round trip.
        Returns how many orders+fills were sent. Raises redis errors; nothing is lost then."""
        with self._lock:   # copy only: the order path waits on this lock, so no JSON in here
            for i, p in enumerate(self._pos_by_idx):
                if p.qty:
                    p.last_price = self._price(i)
            account = self.account()
            # every position each time (a few hundred short values at most): a change made
            # between snapshot and write can then never be left stale in Redis
            rows = [(p.symbol, p.qty, p.avg_price, p.realized_pnl, p.last_price)
                    for p in self._pos_by_idx]
            orders, fills, daily = list(self._orders), list(self._fills), list(self._daily)
        positions = {r[0]: schema.dumps(asdict(Position(*r))) for r in rows}
        # MULTI/EXEC: readers (risk, liquidation snapshots) never see the account of one
        # snapshot beside the positions of another
        pipe = client.pipeline(transaction=True)
        pipe.hset(schema.BROKER_ACCOUNT, mapping={k: str(v) for k, v in account.items()})
        if positions:
            pipe.hset(schema.BROKER_POSITIONS, mapping=positions)
        for key, items in ((schema.BROKER_ORDERS, orders), (schema.BROKER_FILLS, fills)):
            for _, fields in items:
                pipe.xadd(key, {k: str(v) for k, v in fields.items()},
                          maxlen=schema.ORDERS_MAXLEN, approximate=True)
        if daily:
            pipe.zadd(schema.PIPELINE_DAILY, {member: day for day, member in daily})
            pipe.zremrangebyrank(schema.PIPELINE_DAILY, 0, -DAILY_KEEP - 1)
        pipe.execute()
        last = max([s for s, _ in orders[-1:] + fills[-1:]], default=0)
        with self._lock:
            for q in (self._orders, self._fills):
                while q and q[0][0] <= last:
                    q.popleft()
            del self._daily[:len(daily)]
        return len(orders) + len(fills)

    def pending(self) -> int:
        return len(self._orders) + len(self._fills)

    def load(self, client) -> bool:
        """Restore account and positions written by `persist`. Returns False when none exist."""
        account = client.hgetall(schema.BROKER_ACCOUNT)
        if not account:
            return False
        acc = {k.decode(): v.decode() for k, v in account.items()}
        with self._lock:
            self.cash = float(acc.get("cash", self.initial_cash))
            self.realized_pnl = float(acc.get("realized_pnl", 0.0))
            self.orders_total = int(float(acc.get("orders_total", 0)))
            self.fills_total = int(float(acc.get("fills_total", 0)))
            self.day_start_equity = float(acc.get("day_start_equity", self.cash))
            self.sim_day = int(float(acc.get("sim_day", 0)))
            for sym, raw in client.hgetall(schema.BROKER_POSITIONS).items():
                data = schema.loads(raw)
                pos = self.positions.get(sym.decode())
                if pos is None:
                    log.warning("stored position %s is not in the universe: ignored", sym)
                    continue
                pos.qty, pos.avg_price = float(data["qty"]), float(data["avg_price"])
                pos.realized_pnl = float(data.get("realized_pnl", 0.0))
                pos.last_price = float(data.get("last_price") or pos.avg_price)
        return True
