"""Measured backend selection, batch sizing and parallelism (the spec's PerformanceOptimizer
and ThroughputOptimizer).

`apply_optimization_strategies` benchmarks every enabled backend of every kernel on the
current data shape, verifies each against the pure-Python reference (on a verification input
with edge cases: NaN, inf, a constant column), selects the fastest correct one per kernel,
measures the model's batch size, numba's thread count and ONNX Runtime's session options,
and writes the selection, the live benchmark table and a before/after history entry per
change to Redis (core.schema). The pipeline runner and `KernelSet` read the selection.
Nothing here is a formula: every choice is the best of measurements taken on this machine.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import redis

from core import kernels, schema
from core.kernels import config as kconfig

log = logging.getLogger(__name__)

SQUASH_SHAPE = (1_000_000, 16)       # the spec's data-processing step
ROLLING_SHAPE = (100_000, 16)        # ticks x symbols of the rolling feature kernels
QUICK_SQUASH_SHAPE = (250_000, 16)   # quick runs (tests): same columns, a quarter of the rows
QUICK_ROLLING_SHAPE = (20_000, 16)
PYTHON_MAX_ELEMENTS = 100_000        # the pure-Python baseline runs on a row subsample, scaled
BATCH_CANDIDATES = (1, 8, 32, 128, 512, 2048, 8192, 32768)
DEFAULT_LATENCY_BUDGET_MS = 1.0   # batch scoring shares the machine with the 1 ms tick path


# ---- timing -----------------------------------------------------------------------------
def median_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def kernel_args(kernel: str) -> tuple:
    return {"rolling_mean": (32,), "rolling_std": (32,), "rolling_zscore": (32,),
            "ewma": (0.05,)}.get(kernel, ())


def make_input(kernel: str, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kernel == "squash":
        return rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[1]) + rng.uniform(-2, 2, shape[1])
    walk = 100.0 * np.exp(np.cumsum(rng.standard_normal(shape) * 1e-3, axis=0))
    return walk if kernel == "log_returns" else np.diff(np.log(walk), axis=0, prepend=np.log(walk[:1]))


def verification_input(kernel: str, seed: int = 1) -> np.ndarray:
    """Small, with the edge cases each kernel's policy covers."""
    x = make_input(kernel, (600, 5), seed)
    if kernel == "squash":
        x[:, 2] = 3.25                    # a constant column: std 0, output 0
        x[10, 0], x[20, 1], x[30, 3] = np.nan, np.inf, -np.inf
    elif kernel != "log_returns":
        x[100:160, 4] = 0.001             # a constant stretch: degenerate windows
    return x


# ---- benchmark and verify one kernel ----------------------------------------------------
def benchmark_kernel(kernel: str, backends: dict[str, Callable], x: np.ndarray,
                     repeats: int = 3) -> list[dict]:
    """One row per backend: {backend, ok, max_error, ms, scaled_from, error}. `backends`
    maps name -> raw implementation (inputs validated here once)."""
    args = kernel_args(kernel)
    check = kernels.prepare(kernel, verification_input(kernel), *args)
    expected = kernels.implementation(kernel, "python")(*check)
    full = kernels.prepare(kernel, x, *args)
    out = np.empty_like(full[0]) if kernel == "squash" else None
    rows = []
    for name, impl in backends.items():
        row = {"kernel": kernel, "backend": name, "ok": False, "max_error": None, "ms": None,
               "scaled_from": None, "error": None}
        try:
            err = kernels.max_abs_error(impl(*check), expected)
            row["max_error"] = err
            row["ok"] = err <= kconfig.TOLERANCE
            if not row["ok"]:
                row["error"] = f"max abs error {err:.3g} > tolerance {kconfig.TOLERANCE:g}"
            if name == "python" and full[0].size > PYTHON_MAX_ELEMENTS:
                rows_sub = max(2 * 32, PYTHON_MAX_ELEMENTS // max(1, full[0][0].size))
                sub = (np.ascontiguousarray(full[0][:rows_sub]),) + full[1:]
                row["ms"] = median_ms(lambda: impl(*sub), repeats=1, warmup=0) * len(full[0]) / rows_sub
                row["scaled_from"] = rows_sub
            elif kernel == "squash":
                # every path writes into the same preallocated output, as the np.copyto
                # floor does: a fresh 128 MB array costs ~30 ms of page faults on its own
                row["ms"] = median_ms(lambda: impl(*full, out=out), repeats=repeats)
            else:
                row["ms"] = median_ms(lambda: impl(*full), repeats=repeats)
        except Exception as exc:   # a failing backend is a row, not a crash
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
    return rows


def select_fastest(rows: list[dict]) -> dict | None:
    """The fastest correct row; the reference ('python') only when nothing else is correct."""
    good = [r for r in rows if r["ok"] and r["ms"] is not None]
    fast = [r for r in good if r["backend"] != "python"] or good
    return min(fast, key=lambda r: r["ms"]) if fast else None


def enabled_backends(settings) -> tuple[str, ...]:
    flags = {"numpy": settings.vectorization_enabled, "numba": settings.numba_enabled,
             "onnx": settings.onnx_enabled}
    return ("python",) + tuple(b for b, on in flags.items() if on)


# ---- batching -------------------------------------------------------------------------------
def create_batches(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row slices (views) of at most batch_size rows, in order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) == 0:
        raise ValueError("create_batches: empty input")
    return [x[i:i + batch_size] for i in range(0, len(x), int(batch_size))]


def calculate_optimal_batch_size(predict: Callable[[np.ndarray], np.ndarray], n_features: int,
                                 latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS,
                                 candidates=BATCH_CANDIDATES, min_time_s: float = 0.05,
                                 seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Measure per-batch latency (p99 of repeated calls) and rows/s for each candidate size;
    pick the highest throughput whose p99 fits the budget (the smallest size if none does).
    `clock` (seconds) is injectable so tests check the decision without real timing."""
    if not (isinstance(latency_budget_ms, (int, float)) and math.isfinite(latency_budget_ms)
            and latency_budget_ms > 0):
        raise ValueError(f"latency_budget_ms must be a positive number, got {latency_budget_ms!r}")
    sizes = sorted({int(c) for c in candidates})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"candidates must be positive integers, got {candidates!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        batch = rng.standard_normal((size, n_features)).astype(np.float32)
        predict(batch)
        times = []
        deadline = clock() + min_time_s
        while len(times) < 5 or (clock() < deadline and len(times) < 2000):
            t0 = clock()
            predict(batch)
            times.append(clock() - t0)
        lat = np.array(times) * 1e3
        p99 = float(np.percentile(lat, 99))
        rows.append({"batch_size": size, "p50_ms": float(np.median(lat)), "p99_ms": p99,
                     "rows_per_s": size / (float(np.median(lat)) / 1e3), "calls": len(times),
                     "within_budget": p99 <= latency_budget_ms})
        if p99 > 4 * latency_budget_ms:    # larger sizes only get slower per batch
            break
    fits = [r for r in rows if r["within_budget"]]
    best = max(fits, key=lambda r: r["rows_per_s"]) if fits else rows[0]
    return {"batch_size": best["batch_size"], "latency_budget_ms": latency_budget_ms, "rows": rows}


def optimize_throughput(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                        batch_size: int, max_workers: int = 1) -> tuple[np.ndarray, dict]:
    """Predict every row in batches, on up to max_workers threads (ONNX Runtime releases the
    GIL); results are in input order and equal to one unbatched call."""
    batches = create_batches(x, batch_size)
    t0 = time.perf_counter()
    if max_workers > 1 and len(batches) > 1:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            parts = list(pool.map(predict, batches))
    else:
        parts = [predict(b) for b in batches]
    elapsed = time.perf_counter() - t0
    out = np.concatenate([np.asarray(p).reshape(len(b), -1) for p, b in zip(parts, batches)])
    return out.reshape((len(x),) + np.asarray(parts[0]).shape[1:]), {
        "rows": len(x), "batches": len(batches), "seconds": elapsed,
        "rows_per_s": len(x) / elapsed if elapsed > 0 else math.inf}


class ThroughputOptimizer:
    """Batch sizing and batched execution for one predictor (the spec's names)."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], n_features: int,
                 max_workers: int = 1, latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS):
        self.predict, self.n_features = predict, n_features
        self.max_workers, self.latency_budget_ms = max_workers, latency_budget_ms
        self.batch_size: int | None = None

    def calculate_optimal_batch_size(self, **kw) -> dict:
        res = calculate_optimal_batch_size(self.predict, self.n_features, self.latency_budget_ms, **kw)
        self.batch_size = res["batch_size"]
        return res

    def create_batches(self, x: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
        return create_batches(x, batch_size or self.batch_size or BATCH_CANDIDATES[-1])

    def optimize_throughput(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        if self.batch_size is None:
            self.calculate_optimal_batch_size()
        return optimize_throughput(self.predict, x, self.batch_size, self.max_workers)


# ---- parallelism ------------------------------------------------------------------------------
def choose_numba_threads(max_workers: int, x: np.ndarray, repeats: int = 3) -> dict:
    """squash on 1 thread vs max_workers threads; keep the faster (set process-wide)."""
    from core.kernels import numba_impl
    rows = []
    for n in sorted({1, kconfig.set_threads(max_workers)}):
        kconfig.set_threads(n)
        out = np.empty_like(x)
        rows.append({"threads": n, "ms": median_ms(lambda: numba_impl.squash(x, out=out), repeats)})
    best = min(rows, key=lambda r: r["ms"])
    kconfig.set_threads(best["threads"])
    return {"threads": best["threads"], "rows": rows}


# ---- the whole optimization -------------------------------------------------------------------
def apply_optimization_strategies(settings, client: redis.Redis | None = None,
                                  squash_shape=SQUASH_SHAPE, rolling_shape=ROLLING_SHAPE,
                                  repeats: int = 3, backends_override: dict | None = None,
                                  model=None, now: float | None = None) -> dict:
    """Benchmark, verify and select; write selection, table and history to Redis when a
    client is given. `backends_override` {kernel: {name: impl}} replaces the implementations
    (tests use it to inject a failing or wrong backend). Returns the selection document."""
    now = time.time() if now is None else now
    enabled = enabled_backends(settings)
    threads = kconfig.set_threads(settings.max_workers)
    rows_all, selection, timings = [], {}, {}
    for kernel in kernels.KERNELS:
        shape = squash_shape if kernel == "squash" else rolling_shape
        impls = (backends_override or {}).get(kernel) or {
            b: kernels.implementation(kernel, b) for b in kernels.available(kernel) if b in enabled}
        rows = benchmark_kernel(kernel, impls, make_input(kernel, shape), repeats)
        best = select_fastest(rows)
        py = next((r["ms"] for r in rows if r["backend"] == "python" and r["ms"]), None)
        for r in rows:
            r["shape"] = list(shape)
            r["speedup"] = (py / r["ms"]) if py and r["ms"] else None
            r["selected"] = best is not None and r["backend"] == best["backend"]
        if best is not None:
            selection[kernel] = best["backend"]
            timings[kernel] = {r["backend"]: r["ms"] for r in rows}
        rows_all.extend(rows)
        for r in rows:
            if r["error"] and r["backend"] != "python":
                log.warning("kernel %s backend %s rejected: %s", kernel, r["backend"], r["error"])
    doc = {"ts": now, "kernels": selection, "max_workers": settings.max_workers,
           "enabled": list(enabled), "numba_threads": threads}
    if "numba" in enabled and selection.get("squash") == "numba":
        doc["numba_threads"] = choose_numba_threads(settings.max_workers,
                                                    make_input("squash", squash_shape))["threads"]
    if model is not None:
        from core.model import N_FEATURES
        doc["batch"] = calculate_optimal_batch_size(model.predict, N_FEATURES)
        doc["batch_size"] = doc["batch"]["batch_size"]
    if client is not None:
        _store(client, doc, rows_all, timings, now)
    return {**doc, "rows": rows_all}


def read_selection(client: redis.Redis) -> dict:
    """The stored selection document, or {} (the pipeline then keeps its defaults)."""
    return schema.loads(client.get(schema.KERNELS_SELECTION)) or {}


def _store(client: redis.Redis, doc: dict, rows: list[dict], timings: dict, now: float) -> None:
    before = read_selection(client)
    changes = []
    for kernel, after in doc["kernels"].items():
        prev = (before.get("kernels") or {}).get(kernel)
        if prev != after:
            t = timings.get(kernel, {})
            changes.append({"ts": now, "what": f"kernel:{kernel}", "before": prev or "",
                            "after": after, "before_ms": t.get(prev), "after_ms": t.get(after)})
    for key in ("numba_threads", "batch_size"):
        if key in doc and before.get(key) != doc[key]:
            changes.append({"ts": now, "what": key, "before": before.get(key), "after": doc[key],
                            "before_ms": None, "after_ms": None})
    pipe = client.pipeline(transaction=True)
    pipe.set(schema.KERNELS_SELECTION, schema.dumps(doc))
    pipe.set(schema.KERNELS_BENCH, schema.dumps({"ts": now, "rows": rows}))
    for c in changes:
        log.info("optimization: %s %s -> %s (%s ms -> %s ms)", c["what"], c["before"], c["after"],
                 c["before_ms"], c["after_ms"])
        pipe.xadd(schema.KERNELS_HISTORY, {k: schema.dumps(v) for k, v in c.items()},
                  maxlen=schema.KERNELS_HISTORY_MAXLEN, approximate=True)
    pipe.execute()


class PerformanceOptimizer:
    """The spec's name for the measured selection: holds settings and a Redis client."""

    def __init__(self, settings, client: redis.Redis | None = None):
        self.settings, self.client = settings, client

    def optimize_throughput(self, model, x: np.ndarray) -> tuple[np.ndarray, dict]:
        opt = ThroughputOptimizer(model.predict, x.shape[1], self.settings.max_workers)
        return opt.optimize_throughput(x)

    def apply_optimization_strategies(self, **kw) -> dict:
        return apply_optimization_strategies(self.settings, self.client, **kw)


# ---- the model: tick path latency, session options, out-of-sample hit rate --------------------
def measure_tick_path(predict: Callable, n_symbols: int = 20, ticks: int = 20_000,
                      seed: int = 0) -> dict:
    """Per-tick features (core.pipeline.FeatureState) plus one model call, as the pipeline's
    data_processing + model_inference stages run them; percentiles in microseconds."""
    from core.market import FactorModel, MarketSimulator
    from core.model import DT_DAYS
    from core.pipeline import FeatureState
    model = FactorModel.from_seed(n_symbols, seed)
    block = MarketSimulator(model, seed, stream=13).next_block(max(2, ticks // n_symbols), DT_DAYS)
    states = [FeatureState() for _ in range(n_symbols)]
    syms, mids, imbs = block.sym.tolist(), block.mid.tolist(), block.imbalance.tolist()
    clock = time.perf_counter_ns
    lat = []
    for sym, mid, imb in zip(syms, mids, imbs):
        t0 = clock()
        feats = states[sym].update(mid, imb)
        if feats is not None:
            predict(feats)
            lat.append(clock() - t0)
    us = np.array(lat) / 1e3
    return {"ticks": len(us), "p50_us": float(np.percentile(us, 50)),
            "p99_us": float(np.percentile(us, 99)), "max_us": float(us.max())}


def optimize_model(settings, client: redis.Redis | None = None, quick: bool = False) -> dict:
    """Session options by measurement, the tick path's latency and the out-of-sample hit
    rate of settings.model_path; stored as schema.MODEL_METRICS. ModelError if no model."""
    from core.model import SessionConfig, SignalModel, evaluate_oos, tune_session_options
    sessions = tune_session_options(settings.model_path, settings.max_workers,
                                    calls=1000 if quick else 3000)
    best = SessionConfig.from_dict(sessions[0])
    model = SignalModel(settings.model_path, best)
    oos = evaluate_oos(model, settings.symbols, settings.seed, rounds=5000 if quick else 10_000)
    tick = measure_tick_path(model.tick_predictor(), settings.symbols, 5000 if quick else 20_000)
    doc = {"ts": time.time(), "path": str(settings.model_path), **oos, "session": best.to_dict(),
           "sessions": sessions, "tick": tick}
    if client is not None:
        client.set(schema.MODEL_METRICS, schema.dumps(doc))
    return doc


def run_kernels_optimization(settings, client: redis.Redis, quick: bool = False) -> dict:
    """What `kernels.optimize` does: backends, batch size and threads, then the model. A
    missing or broken model still leaves a kernel selection (and an alert)."""
    from core.alerts import raise_alert
    from core.model import ModelError, SignalModel
    model, model_doc = None, None
    try:
        model_doc = optimize_model(settings, client, quick)
        model = SignalModel(settings.model_path)
    except ModelError as exc:
        raise_alert(client, "degraded", "kernels", f"model not measured: {exc}",
                    dedupe_key="model:optimize", dedupe_s=600)
    shapes = ({"squash_shape": QUICK_SQUASH_SHAPE, "rolling_shape": QUICK_ROLLING_SHAPE} if quick else {})
    doc = apply_optimization_strategies(settings, client, model=model, repeats=2 if quick else 3, **shapes)
    if model_doc is not None:
        doc["session"] = model_doc["session"]
        client.set(schema.KERNELS_SELECTION, schema.dumps({k: v for k, v in doc.items() if k != "rows"}))
    rejected = [r for r in doc["rows"] if not r["ok"] and r["backend"] != "python"]
    for r in rejected:
        raise_alert(client, "warning", "kernels", f"backend {r['backend']} rejected for "
                    f"{r['kernel']}: {r['error']}", dedupe_key=f"kernels:reject:{r['kernel']}:{r['backend']}",
                    dedupe_s=3600)
    return {"selection": doc["kernels"], "batch_size": doc.get("batch_size"),
            "rejected": len(rejected), "hit_rate": (model_doc or {}).get("hit_rate")}
