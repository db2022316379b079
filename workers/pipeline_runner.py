"""The reference trading pipeline as a long-running process: `python -m workers.pipeline_runner`.

Threads: `feed` (ticks at their scheduled times; the whole tick -> order path runs inline on
it), the telemetry flusher, and the main thread's asyncio loop for the edges: every 250 ms the
broker is persisted and the trading state refreshed; every second the heartbeat, the status
JSON and the bus statistics are written and the control key is read. Redis calls go through
`asyncio.to_thread` so a dead Redis (1 s connect timeout) never stalls the loop, and nothing on
the feed thread ever talks to Redis: with Redis down the pipeline keeps ticking, orders stop
(the trading gate fails closed), and the backlogs stay bounded (broker deques, flusher backlog).

Start-up tuning, measured with gc.callbacks over 10 s at 1,000 ticks/s: a full (gen-2)
collection of the started process takes 30-35 ms, which would stall ~30 ticks by up to 35 ms;
`gc.freeze()` after start-up moves the model, history and module objects out of the
collector's reach so such a pass never sees them. Gen-0 passes are rare (the hot path's objects
die by reference counting): 6 in 10 s at ~150 us with the default threshold 700, 1 at ~370 us
with 50,000, no difference at p99, so the thresholds stay at their defaults.
`sys.setswitchinterval(SWITCH_INTERVAL_S)` bounds how long the feed thread waits for the GIL
when it wakes while the loop, persistence or flusher thread runs Python code. Runner alone at
1,000 ticks/s, total_pipeline p99 over 8,000 ticks: 5 ms (default) 880 us; 0.5 ms 205-570 us;
0.1 ms 200-280 us; 0.05 ms 230 us. 0.1 ms it is: the other threads do little, so the extra
switching costs nothing visible.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import gc
import logging
import signal
import sys
import time

import redis

from core import history, procs, runtime_config, safety, schema, shared_closes
from core.broker import PaperBroker, TradingGate
from core.emergency import Liquidator, write_audit
from core.limits import LimitConfig, LimitMonitor
from core.trading_guard import TradingGuard
from core.events import DayClose, EventBus, Fill, Tick
from core.market import INDEX_SYMBOL, FactorModel, MarketSimulator
from core.model import ModelRuntime
from core.pipeline import Feed, Pipeline, fit_model
from core.risk_manager import ship_outcomes
from core.settings import Settings, get_settings

log = logging.getLogger("pipeline")

PERSIST_EVERY_S = 0.25
STATUS_EVERY_S = 1.0
SWITCH_INTERVAL_S = 0.0001
SHUTDOWN_BUDGET_S = 4.0
REGISTER_EVERY = 5                # status rounds between process-registry refreshes


MAX_PENDING_DAYS = 256   # closed sim days kept while the history database is unreachable


class Runner:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = FactorModel.from_seed(settings.symbols, settings.seed)
        self.db = history.connect(settings.database_url)
        self._pending_days: collections.deque[DayClose] = collections.deque()
        added = history.backfill(self.db, self.model, settings.backfill_days, settings.seed)
        if added:
            log.info("history: backfilled %d rows into %s", added, settings.database_url)
        last_day, last_date = history.last_day(self.db)
        self._share_closes()
        closes = history.last_closes(self.db)
        prices = [closes.get(s) or p for s, p in zip(self.model.symbols, self.model.start_price)]
        self.sim = MarketSimulator(self.model, settings.seed + last_day, start_prices=prices,
                                   start_index=closes.get(INDEX_SYMBOL))
        self.gate = TradingGate(max_age_s=settings.guard_heartbeat_s)
        self.limits = LimitMonitor(LimitConfig().scaled(settings.initial_cash))
        self.safety_config = safety.SafetyConfig()
        self.safety_interval_s = settings.safety_interval_s
        self.config: runtime_config.LiveConfig | None = None
        self.broker = PaperBroker(self.model.symbols, settings.initial_cash, gate=self.gate,
                                  limits=self.limits)
        self.liquidator = Liquidator(self.broker)
        self.gate.on_change(self._on_state)
        self.guard: TradingGuard | None = None
        self.bus = EventBus()
        self.bus.subscribe(DayClose, self._store_day, name="history_writer", mode="async")
        self.bus.subscribe(Fill, self._on_fill, name="fill_monitor", mode="async")
        self.fills_seen, self.last_fill_ts, self.fill_notional = 0, 0.0, 0.0
        weights = fit_model(self.model, settings.seed)
        log.info("model fitted: weights %s", [f"{w:.3g}" for w in weights])
        self.pipeline = Pipeline(self.model, self.broker, self.bus, weights,
                                 first_day=last_day + 1,
                                 first_date=history.next_business_day(last_date))
        # the ONNX signal model from settings.model_path; if it cannot load, the linear fit
        # above scores ticks and an alert says why (ModelRuntime.io)
        self.model_rt = ModelRuntime(settings)
        self.model_rt.attach(self.pipeline, 1.0 / (settings.tick_rate * settings.sim_day_seconds))
        if self.model_rt.error:
            log.error("signal model: %s; using the linear fit", self.model_rt.error)
        else:
            log.info("signal model loaded from %s", settings.model_path)
        self.pipeline.liquidator = self.liquidator
        self.bus.subscribe(Tick, self.pipeline.on_tick, name="pipeline", mode="sync")
        self.feed = Feed(self.sim, self.bus, settings.tick_rate, settings.sim_day_seconds,
                         on_day_end=self.pipeline.close_day)
        self.client = schema.connect(settings.redis_url)
        self.redis_ok: bool | None = None
        self.loaded = False
        self._status_calls = 0
        self._bad_control: bytes | None = None
        self.stopping = asyncio.Event()

    # ---- edges (asyncio) -----------------------------------------------------------------
    def _store_day(self, ev: DayClose) -> None:
        """Queue the closed day and write every queued day, oldest first. A database error
        (a PostgreSQL restart, a locked SQLite file) keeps the days queued, reconnects, and
        the next close retries them: days are upserts, so a retried day is written once.
        At most MAX_PENDING_DAYS wait; beyond that the oldest is dropped, with an error."""
        if len(self._pending_days) == MAX_PENDING_DAYS:
            lost = self._pending_days.popleft()
            log.error("history unavailable for %d sim days: day %d dropped from the history",
                      MAX_PENDING_DAYS, lost.day)
        self._pending_days.append(ev)
        while self._pending_days:
            day = self._pending_days[0]
            try:
                history.append_day(self.db, day.day, dt.date.fromisoformat(day.date), day.bars, day.trades)
            except history.DB_ERRORS as exc:
                log.warning("history write of sim day %d failed (%s); %d day(s) queued, reconnecting",
                            day.day, exc, len(self._pending_days))
                self._reconnect_db()
                return
            self._pending_days.popleft()
            self._share_closes(day.day, day.bars)
            log.info("sim day %d (%s) closed: P&L %.2f, equity %.2f, %d orders", day.day, day.date,
                     day.daily_pnl, day.equity, day.trades.get("orders", 0))

    def _reconnect_db(self) -> None:
        """A fresh connection for the next write; the broken one is closed. A failed connect
        keeps the old object: the next write fails fast and tries again."""
        try:
            fresh = history.connect(self.settings.database_url)
        except history.DB_ERRORS as exc:
            log.warning("history database still unreachable: %s", exc)
            return
        try:
            self.db.close()
        except Exception:  # noqa: BLE001  (closing a dead connection may raise; it is gone either way)
            pass
        self.db = fresh
        log.info("history database reconnected")

    def _share_closes(self, day: int | None = None, bars: dict | None = None) -> None:
        """Rewrite the memory-mapped daily closes that risk and stress readers map
        (core.shared_closes) once the history holds `day`; at start, from the database. A
        failure only sends readers back to the database: logged, never raised."""
        keep = shared_closes.keep_days(self.settings)
        try:
            if bars is None:
                shared_closes.rebuild(self.db, self.settings.var_dir, keep)
            else:
                shared_closes.append_day(self.db, self.settings.var_dir, day, bars, keep)
        except Exception as exc:  # noqa: BLE001  (an optimisation: the history write stands)
            log.warning("memory-mapped closes not updated (readers use the database): %s", exc)

    def _on_fill(self, fill: Fill) -> None:
        """The orders-out edge: fills leave the hot path here (a later issue can route them
        to a real venue's drop copy or a risk check); for now it tallies them."""
        self.fills_seen += 1
        self.last_fill_ts = fill.ts
        self.fill_notional += fill.qty * fill.price

    def _redis(self, ok: bool, exc: object = None) -> None:
        """Log Redis state changes once, not once per failed call."""
        if ok and self.redis_ok is False:
            log.warning("Redis reachable again: persisting the backlog (%d orders/fills)",
                        self.broker.pending())
        elif not ok and self.redis_ok is not False:
            log.error("Redis unreachable (%s): pipeline keeps running, orders blocked, "
                      "persistence backlog bounded", exc)
        self.redis_ok = ok

    # ---- safety: halt reaction, liquidation, limits, rules ---------------------------------
    def _on_state(self, old: str, new: str) -> None:
        """Gate listener (guard thread or io thread): arm or disarm the liquidation; no I/O."""
        if new == "HALTED" and self.loaded:
            self.liquidator.start()
        elif new in ("ACTIVE", "REDUCING") and self.liquidator.active:
            self.liquidator.stop()
            log.warning("trading %s before the book was flat: liquidation stopped", new)
        if new != old:
            log.warning("trading state %s -> %s", old, new)

    def _liquidation_io(self) -> None:
        """Arm the liquidation when HALTED with an open book (a restart while halted, a
        repeated halt); audit a finished one."""
        if self.gate.state == "HALTED" and not self.liquidator.active and not self.broker.flat():
            self.liquidator.start()
        report = self.liquidator.report()
        if report is not None:
            write_audit(self.client, "liquidation", "pipeline", "pipeline",
                        f"{len(report['orders'])} positions closed in {report['duration_ms']:.0f} ms",
                        report, ts=report["done_at"])
            log.warning("liquidation done: %d orders in %.0f ms", len(report["orders"]),
                        report["duration_ms"])

    def _safety_once(self) -> None:
        """The rules, here in the trading process too: they fire with the worker down."""
        try:
            self.limits.write_status(self.client, self.broker.exposures(), self.broker.equity(),
                                     self.broker.day_start_equity)
            safety.evaluate_once(self.client, self.safety_config)
        except redis.RedisError as exc:
            self._redis(False, exc)
        except Exception:  # a rule bug must not stop the runner's other edges
            log.exception("safety evaluation failed")

    def _io_once(self) -> None:
        """Load state once, refresh the trading gate, persist the broker. Runs in a thread."""
        try:
            if not self.loaded:
                if self.broker.load(self.client):
                    log.info("broker state restored from Redis: %s", self.broker.account())
                self.client.set(schema.TRADING_STATE, "ACTIVE", nx=True)   # never over HALTED
                self.loaded = True
            if self.gate.refresh(self.client) != "UNKNOWN":
                self._liquidation_io()
                self.broker.persist(self.client)
            self._redis(self.gate.state != "UNKNOWN", self.gate.last_error)
        except redis.RedisError as exc:
            self._redis(False, exc)

    def _status(self) -> dict:
        acc = self.broker.account()
        return {"ts": time.time(), "running": not self.stopping.is_set(),
                "tick_rate": self.feed.tick_rate, "ticks_total": self.feed.ticks_total,
                "orders_total": acc["orders_total"], "fills_total": acc["fills_total"],
                "late_ticks": self.pipeline.late_ticks, "skipped_ticks": self.feed.skipped_ticks,
                "sim_day": self.pipeline.sim_day, "sim_date": self.pipeline.sim_date.isoformat(),
                "sim_time": self.feed.sim_time, "equity": acc["equity"], "cash": acc["cash"],
                "realized_pnl": acc["realized_pnl"], "unrealized_pnl": acc["unrealized_pnl"],
                "daily_pnl": acc["daily_pnl"], "trading_state": self.gate.state,
                "limit_rejects": acc["limit_rejects"], "last_reject": self.broker.last_reject,
                "liquidation_orders": acc["liquidation_orders"],
                "liquidating": self.liquidator.active,
                "redis_backlog": self.broker.pending(), "dropped": acc["dropped"],
                "last_fill_ts": self.last_fill_ts, "fill_notional": self.fill_notional,
                **self.model_rt.status(self.pipeline)}

    def _status_once(self) -> None:
        self._status_calls += 1
        if self._status_calls % REGISTER_EVERY == 1:   # so the metrics collector measures us
            procs.register_process(self.client, "pipeline")
        try:
            self._read_control()
            self.model_rt.io(self.client, self.pipeline,   # alerts, selection: off the hot path
                             live_dt_days=1.0 / (self.feed.tick_rate * self.feed.sim_day_seconds))
            pipe = self.client.pipeline(transaction=False)
            ship_outcomes(pipe, self.pipeline.outcomes)   # model-risk pairs; before the snapshot
            pipe.set(schema.heartbeat("pipeline"), f"{time.time():.3f}",
                     ex=int(self.settings.heartbeat_stale_s * 6))
            pipe.set(schema.PIPELINE_STATUS, schema.dumps(self._status()))
            pipe.execute()
            self.bus.publish_stats(self.client)
        except redis.RedisError as exc:
            self._redis(False, exc)

    def _read_control(self) -> None:
        raw = self.client.get(schema.PIPELINE_CONTROL)
        if raw is None or raw == self._bad_control:
            return
        try:
            rate = float(schema.loads(raw)["tick_rate"])
            if rate != self.feed.tick_rate:
                self.feed.set_rate(rate)
                log.info("tick rate set to %.0f ticks/s by %s", rate, schema.PIPELINE_CONTROL)
        except (ValueError, KeyError, TypeError) as exc:
            self._bad_control = raw          # logged once, not every second
            log.error("ignored bad %s value %r: %s", schema.PIPELINE_CONTROL, raw[:200], exc)

    def _on_config(self, values, changed=None) -> None:
        """Runtime settings (listener thread): risk limits, safety rules and the rules' period
        take effect here without a restart; each is one reference swap the io thread reads.
        onnx_enabled swaps the tick predictor (ONNX Runtime or the same model in Python)."""
        self.limits.config = runtime_config.limit_config(values)
        self.safety_config = runtime_config.safety_config(values)
        self.safety_interval_s = float(values["safety_interval_s"])
        if self.model_rt.set_onnx_enabled(self.pipeline, values["onnx_enabled"]):
            log.info("onnx_enabled %s: model_inference runs on %s", values["onnx_enabled"],
                     self.pipeline.model_backend)

    async def _every(self, period_s, fn) -> None:
        """Run fn in a thread every period_s seconds (a number, or a function read each round)."""
        while not self.stopping.is_set():
            await asyncio.to_thread(fn)
            try:
                await asyncio.wait_for(self.stopping.wait(), period_s() if callable(period_s) else period_s)
            except asyncio.TimeoutError:
                pass

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        from core.telemetry import start_flusher
        flusher = start_flusher("pipeline", self.settings.redis_url)
        await self.bus.start()
        self.config = await asyncio.to_thread(runtime_config.LiveConfig(self.settings.redis_url, "pipeline").start)
        self.config.on_change(self._on_config)
        self._on_config(self.config.values)       # after registering: no change falls between
        await asyncio.to_thread(self._io_once)
        # after the first load: a liquidation armed by the guard must see the restored book
        self.guard = await asyncio.to_thread(
            TradingGuard(self.settings.redis_url, self.settings.guard_heartbeat_s, gate=self.gate).start)
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.feed.start()
        log.info("pipeline running: %d symbols, %.0f ticks/s, 1 sim day = %.0f s, redis %s",
                 self.model.n, self.feed.tick_rate, self.settings.sim_day_seconds,
                 self.settings.redis_url)
        tasks = [loop.create_task(self._every(PERSIST_EVERY_S, self._io_once)),
                 loop.create_task(self._every(STATUS_EVERY_S, self._status_once)),
                 loop.create_task(self._every(lambda: self.safety_interval_s, self._safety_once))]
        await self.stopping.wait()
        started = time.monotonic()
        log.info("stopping: flushing state")
        self.feed.stop(timeout_s=1.0)
        if self.guard is not None:
            self.guard.stop(timeout_s=0.5)
        if self.config is not None:
            self.config.stop(timeout_s=0.5)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.bus.drain(timeout_s=1.0)
        await self.bus.stop()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._final_flush, flusher), SHUTDOWN_BUDGET_S - 1)
        except asyncio.TimeoutError:
            log.error("final flush did not finish within %.0f s", SHUTDOWN_BUDGET_S - 1)
        log.info("stopped cleanly in %.2f s", time.monotonic() - started)
        return 0

    def _final_flush(self, flusher) -> None:
        if self.redis_ok is False:   # each call would wait out its connect timeout: skip them
            log.error("Redis unreachable at shutdown: %d orders/fills not persisted",
                      self.broker.pending())
        else:
            self._io_once()
            self._status_once()
        flusher.stop(timeout=1.0)
        self.db.close()


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runner = Runner(settings)
    except (NotImplementedError, *history.DB_ERRORS) as exc:
        log.error("history database unavailable: %s", exc)
        return 2
    return asyncio.run(runner.run())


if __name__ == "__main__":
    sys.exit(main())
