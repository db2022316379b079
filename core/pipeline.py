"""The reference pipeline's stages and its tick feed.

tick -> data_processing -> model_inference -> signal_generation -> order_execution
All four run synchronously in one bus handler (`Pipeline.on_tick`) on the feed thread: an
asyncio hop per stage costs more than the stages themselves (see core/events.py for the
numbers). Each stage is timed with perf_counter_ns stamps and `core.telemetry.record`;
`total_pipeline` runs from the tick's SCHEDULED time (open loop: a tick that waited behind a
slow one counts its wait, so there is no coordinated omission) to the order, or to the
decision when there is no order.

Features (per symbol, rolling window of its last WINDOW tick log returns, O(1) per tick):
  FEATURE_NAMES = (last return, rolling mean, z-score of the last return, book imbalance)
Model: linear least squares of the symbol's next log return on [1, features], fitted at start
on ticks from the same market model (its own random stream). It recovers the simulator's
embedded imbalance effect (core/market.py), and scores ticks only when the ONNX signal model
(core/model.py, settings.model_path) cannot load; otherwise model_inference is one ONNX
Runtime call per tick through an IO binding (~3 us), with the same model as Python arithmetic
as the fallback if a run fails (Pipeline.backend_failures -> an alert from the runner). The
per-tick features stay O(1) Python: the batch kernels (core/kernels) compute the same features
for training and evaluation (tests/core/test_kernels.py checks they agree). Signal: go long one lot when the expected return
beats ENTRY_COST_MULT x the half spread, short when below minus that, otherwise hold.
"""
from __future__ import annotations

import datetime as dt
from collections import deque
import math
import threading
import time
from time import perf_counter_ns

import numpy as np

from core import telemetry
from core.broker import PaperBroker
from core.events import DayClose, EventBus, Features, Fill, Order, Signal, Tick
from core.market import INDEX_SYMBOL, FactorModel, MarketSimulator, fit_stream

FEATURE_NAMES = ("ret", "ret_mean", "ret_z", "imbalance")
WINDOW = 32
ENTRY_COST_MULT = 0.3
LOT_NOTIONAL_FRACTION = 0.02      # one lot ~ 2% of the initial cash
FIT_ROUNDS = 3000
BLOCK_TICKS = 2048
LATE_NS = 1_000_000               # a tick that starts more than 1 ms after schedule is "late"
MAX_BEHIND_S = 2.0                # further behind than this, the feed skips ahead (counted)
OUTCOMES_KEEP = 20_000           # (prediction, realized) pairs held for the runner


class FeatureState:
    """Rolling per-symbol window of log returns with running sums (recomputed at every wrap
    so floating-point drift never accumulates)."""

    __slots__ = ("last_mid", "buf", "pos", "count", "s1", "s2")

    def __init__(self) -> None:
        self.last_mid = 0.0
        self.buf = [0.0] * WINDOW
        self.pos = 0
        self.count = 0
        self.s1 = 0.0
        self.s2 = 0.0

    def update(self, mid: float, imbalance: float) -> tuple | None:
        last, self.last_mid = self.last_mid, mid
        if last <= 0.0:
            return None
        r = math.log(mid / last)
        old = self.buf[self.pos]
        self.buf[self.pos] = r
        self.pos += 1
        if self.pos == WINDOW:
            self.pos = 0
            self.s1 = math.fsum(self.buf)
            self.s2 = math.fsum(x * x for x in self.buf)
        else:
            self.s1 += r - old
            self.s2 += r * r - old * old
        if self.count < WINDOW:
            self.count += 1
            if self.count < 4:
                return None
        n = self.count
        mean = self.s1 / n
        var = self.s2 / n - mean * mean
        z = (r - mean) / math.sqrt(var) if var > 1e-18 else 0.0
        return r, mean, z, imbalance


def fit_model(model: FactorModel, seed: int, rounds: int = FIT_ROUNDS,
              dt_days: float = 1.0 / 60_000) -> np.ndarray:
    """Weights [bias, *FEATURE_NAMES] of the next-return regression on simulated ticks."""
    block = fit_stream(model, seed).next_block(rounds, dt_days)
    states = [FeatureState() for _ in range(model.n)]
    rows, targets, pending = [], [], [None] * model.n
    for sym, mid, imb in zip(block.sym.tolist(), block.mid.tolist(), block.imbalance.tolist()):
        feats = states[sym].update(mid, imb)
        if pending[sym] is not None and feats is not None:
            rows.append(pending[sym])
            targets.append(feats[0])
        pending[sym] = (1.0, *feats) if feats is not None else None
    X, y = np.asarray(rows), np.asarray(targets)
    ridge = 1e-9 * len(y)
    return np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ y)


class Pipeline:
    """Tick -> order, synchronously. Subscribe `on_tick` to `Tick` on the bus (mode "sync").
    Features / Signal / Order / Fill events are published only to types that had subscribers
    when the pipeline was built (one bool test per tick instead of a dict lookup per event)."""

    def __init__(self, model: FactorModel, broker: PaperBroker, bus: EventBus, weights,
                 first_day: int = 0, first_date: dt.date | None = None, record=None,
                 predictor=None, predictor_name: str = "onnx"):
        w = [float(x) for x in weights]
        if len(w) != len(FEATURE_NAMES) + 1 or not all(map(math.isfinite, w)):
            raise ValueError(f"weights must be {len(FEATURE_NAMES) + 1} finite numbers")
        self.model, self.broker, self.bus = model, broker, bus
        self._w = w
        # model_inference: `predictor(features) -> expected return` (the ONNX signal model,
        # core.model.SignalModel.tick_predictor); when it raises, the tick is scored by the
        # fallback and the failure queued for the runner to alert on (no I/O on this thread)
        self.backend_failures: deque = deque(maxlen=100)
        self.set_predictor(predictor, predictor_name)
        self._record = telemetry.record if record is None else record
        self._states = [FeatureState() for _ in range(model.n)]
        self._lots = [0.0] * model.n          # sized from each symbol's first live price
        self.sim_day = first_day
        self.sim_date = first_date or dt.date.today()
        self.ticks_total = 0
        self.orders_total = 0
        # the emergency stop's paced reduce-only flattening (core.emergency.Liquidator), armed
        # from the trading guard's thread; it trades at live quotes, on this order path
        self.liquidator = None
        self.late_ticks = 0
        # (prediction, realized next log return) pairs for model risk; the runner drains them
        # off the hot path (a deque's append / popleft are thread-safe); bounded if it doesn't
        self.outcomes: deque = deque(maxlen=OUTCOMES_KEEP)
        self._last_pred: list = [None] * model.n
        self._emit_features = bus.has_subscribers(Features)
        self._emit_signal = bus.has_subscribers(Signal)
        self._emit_orders = bus.has_subscribers(Order) or bus.has_subscribers(Fill)
        self._new_day_bars()

    # ---- the hot path --------------------------------------------------------------------
    def on_tick(self, t: Tick) -> None:
        start = perf_counter_ns()
        rec = self._record
        if start - t.sched_ns > LATE_NS:
            self.late_ticks += 1
        self.ticks_total += 1
        feats = self._states[t.sym].update(t.mid, t.imbalance)
        self.broker.mark(t.sym, t.mid)
        liq = self.liquidator
        if liq is not None and liq.active:
            liq.on_quote(t.sym, t.bid, t.ask, self.sim_day)
        t1 = perf_counter_ns()
        rec("data_processing", t1 - start)
        if feats is not None:
            if self._emit_features:
                self.bus.publish(Features(t.sym, feats, t.sched_ns))
            try:
                expected = self._predict(feats)
            except Exception as exc:   # a failing backend: fall back, never stop the pipeline
                expected = self._model_failed(feats, exc)
            t2 = perf_counter_ns()
            rec("model_inference", t2 - t1)
            prev = self._last_pred[t.sym]    # model risk: (prediction, what happened next)
            if prev is not None:
                self.outcomes.append((prev, feats[0]))
            self._last_pred[t.sym] = expected
            delta = self._decide(t, expected)
            t3 = perf_counter_ns()
            rec("signal_generation", t3 - t2)
            if delta:
                self._execute(t, delta)
                rec("order_execution", perf_counter_ns() - t3)
        rec("total_pipeline", perf_counter_ns() - t.sched_ns)
        self._accumulate_bar(t)

    # ---- the model backend -------------------------------------------------------------
    def _linear(self, f) -> float:
        w = self._w
        return w[0] + w[1] * f[0] + w[2] * f[1] + w[3] * f[2] + w[4] * f[3]

    def set_predictor(self, predictor=None, name: str = "onnx", fallback=None,
                      fallback_name: str = "linear") -> None:
        """Swap the model backend (attribute stores are atomic: safe from another thread)."""
        self._fallback, self.fallback_name = fallback or self._linear, fallback_name
        self._predict = predictor or self._linear
        self.model_backend = name if predictor is not None else "linear"

    def _model_failed(self, feats, exc: BaseException) -> float:
        self.backend_failures.append((time.time(), "model_inference", self.model_backend, repr(exc)[:300]))
        self._predict, self.model_backend = self._fallback, self.fallback_name
        return self._predict(feats)

    def _decide(self, t: Tick, expected: float) -> float:
        """Order quantity (signed) to reach the target position; 0 when holding."""
        cost = ENTRY_COST_MULT * (t.ask - t.bid) / (t.ask + t.bid)
        held = self.broker.position_qty(t.sym)
        lot = self._lots[t.sym] or self._size_lot(t)
        if expected > cost:
            target = lot
        elif expected < -cost:
            target = -lot
        else:
            target = held
        if self._emit_signal:
            self.bus.publish(Signal(t.sym, expected, target))
        return target - held

    def _size_lot(self, t: Tick) -> float:
        lot = self._lots[t.sym] = max(1.0, round(LOT_NOTIONAL_FRACTION * self.broker.initial_cash / t.mid))
        return lot

    def _execute(self, t: Tick, delta: float) -> None:
        gate = self.broker.gate
        if gate is not None and gate.state == "REDUCING":
            held = self.broker.position_qty(t.sym)
            if held * (held + delta) < 0:   # a flip would be refused: only close the position
                delta = -held
        side = 1 if delta > 0 else -1
        done = self.broker.submit(t.sym, side, abs(delta), t.bid, t.ask, self.sim_day)
        if done is None:
            return
        self.orders_total += 1
        qty = abs(delta)
        day = self._day_trades
        day["orders"] += 1
        day["fills"] += 1
        day["buy_qty" if side > 0 else "sell_qty"] += qty
        day["notional"] += qty * done[1]
        if self._emit_orders:
            symbol, now = self.model.symbols[t.sym], time.time()
            self.bus.publish(Order(done[0], symbol, side, qty, now, self.sim_day))
            self.bus.publish(Fill(done[0], symbol, side, qty, done[1], now, self.sim_day))

    # ---- simulated days ------------------------------------------------------------------
    def _new_day_bars(self) -> None:
        self._bars = {}
        self._day_trades = {"orders": 0, "fills": 0, "buy_qty": 0.0, "sell_qty": 0.0, "notional": 0.0}

    def _accumulate_bar(self, t: Tick) -> None:
        for key, px, vol in ((t.sym, t.mid, t.volume), (-1, t.index, t.volume)):
            bar = self._bars.get(key)
            if bar is None:
                self._bars[key] = [px, px, px, px, vol]
            else:
                if px > bar[1]:
                    bar[1] = px
                elif px < bar[2]:
                    bar[2] = px
                bar[3] = px
                bar[4] += vol

    def close_day(self) -> DayClose:
        """End the current simulated day: book daily P&L, publish and return DayClose."""
        names = self.model.symbols
        bars = {(INDEX_SYMBOL if k == -1 else names[k]): tuple(v) for k, v in self._bars.items()}
        pnl = self.broker.close_day(self.sim_day, self.sim_date.isoformat())
        trades = dict(self._day_trades, realized_pnl=self.broker.realized_pnl, daily_pnl=pnl,
                      equity=self.broker.equity())
        event = DayClose(self.sim_day, self.sim_date.isoformat(), bars, pnl, trades["equity"], trades)
        self.sim_day += 1
        self.sim_date = _next_business_day(self.sim_date)
        self._new_day_bars()
        self.bus.publish(event)
        return event


def _next_business_day(d: dt.date) -> dt.date:
    d += dt.timedelta(days=1)
    while d.weekday() >= 5:
        d += dt.timedelta(days=1)
    return d


class Feed:
    """The market-data edge: a thread that emits ticks at their scheduled perf_counter times.

    A thread, not an asyncio timer: asyncio's epoll waits are rounded to 1 ms, which alone
    would use up the 1 ms p99 budget (core/events.py has the measurements). Each tick carries
    `sched_ns`, its scheduled time; when processing falls behind, the next ticks are emitted
    at once (open loop) so their wait is measured. Simulated days advance with scheduled time:
    one day per `sim_day_seconds`; the day rolls over between ticks (`on_day_end`).
    """

    def __init__(self, sim: MarketSimulator, bus: EventBus, tick_rate: float,
                 sim_day_seconds: float, on_day_end=None):
        self.sim, self.bus = sim, bus
        self.sim_day_seconds = float(sim_day_seconds)
        self.on_day_end = on_day_end
        self.skipped_ticks = 0
        self.ticks_total = 0
        self.sim_time = 0.0
        self._rate = self._check_rate(tick_rate)
        self._rate_changed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._block: tuple = ([],) * 7
        self._next_block: tuple | None = None
        self._gen_ns = 300_000
        self._bpos = 0

    @staticmethod
    def _check_rate(rate) -> float:
        rate = float(rate)
        if not (math.isfinite(rate) and 1.0 <= rate <= 1_000_000.0):
            raise ValueError(f"tick_rate must be within [1, 1e6] ticks/s, got {rate!r}")
        return rate

    @property
    def tick_rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        self._rate = self._check_rate(rate)
        self._rate_changed = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _generate(self) -> tuple:
        """The next block of ticks as 7 columns of Python numbers (fast to index per tick)."""
        started = perf_counter_ns()
        n = self.sim.model.n
        dt_days = 1.0 / (self._rate * self.sim_day_seconds)
        b = self.sim.next_block(max(1, BLOCK_TICKS // n), dt_days)
        # columns, not a list of tuples: building 2,048 tuples cost more than the simulation
        block = (b.sym.tolist(), b.mid.tolist(), b.bid.tolist(), b.ask.tolist(),
                 b.volume.tolist(), b.imbalance.tolist(), b.index.tolist())
        self._gen_ns = perf_counter_ns() - started
        return block

    def _prefetch_if_idle(self, idle_ns: int) -> None:
        """Make the next block while waiting for a tick, if it fits in the wait: a block
        costs ~0.3 ms, which inline would delay the ticks behind it."""
        if self._next_block is None and idle_ns > 1.5 * self._gen_ns + 50_000:
            self._next_block = self._generate()

    def _refill(self) -> None:
        self._block = self._next_block if self._next_block is not None else self._generate()
        self._next_block = None
        self._bpos = 0

    def run(self, max_ticks: int | None = None) -> None:
        """Emit ticks until stop() (or max_ticks); runs in the calling thread."""
        clock, sleep, publish = perf_counter_ns, time.sleep, self.bus.publish
        start = next_ns = clock()
        period = int(1e9 / self._rate)
        day_ns = int(self.sim_day_seconds * 1e9)
        day_end = start + day_ns
        seq = 0
        while not self._stop.is_set() and (max_ticks is None or seq < max_ticks):
            if self._rate_changed:   # a new rate starts a new schedule from now
                self._rate_changed = False
                period = int(1e9 / self._rate)
                next_ns = clock()
            wait = next_ns - clock()
            if wait > 0:
                self._prefetch_if_idle(wait)
                wait = next_ns - clock()
                if wait > 0:
                    sleep(wait * 1e-9)
            elif -wait > MAX_BEHIND_S * 1e9:
                # overloaded far past any useful latency: drop the backlog. Simulated time
                # pauses over the gap, so no empty trading days appear.
                behind = -wait // period
                self.skipped_ticks += behind
                next_ns += behind * period
                start += behind * period
                day_end += behind * period
            if next_ns >= day_end and self.on_day_end is not None:
                day_end += day_ns
                self.on_day_end()
            if self._bpos >= len(self._block[0]):
                self._refill()
            i = self._bpos
            sym, mid, bid, ask, vol, imb, idx = self._block
            self._bpos = i + 1
            self.sim_time = (next_ns - start) / day_ns
            publish(Tick(seq, sym[i], mid[i], bid[i], ask[i], vol[i], imb[i], idx[i], next_ns,
                         self.sim_time))
            seq += 1
            self.ticks_total = seq
            next_ns += period
