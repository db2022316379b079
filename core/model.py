"""The signal model: an ONNX graph loaded from settings.model_path, validated on load, run
by ONNX Runtime in batches or one tick at a time; plus the feature dataset it is trained and
evaluated on, and its out-of-sample hit rate with a confidence interval.

Contract of a model file (checked on load, every violation a ModelError naming it):
  input  "features"  float32  [batch, 4]   (core.pipeline.FEATURE_NAMES, in that order)
  output "expected_return" float32 [batch, 1]   the next log return of the symbol
  output "prob_up" (optional) float32 [batch, 1] P(next return > 0)
scripts/train_model.py writes such a model (standardize -> a MatMul per head: linear + logistic
heads) and `reference_predict` evaluates the same graph from its initializers in numpy: the
test oracle for ONNX Runtime. `python_tick_predictor` folds the same weights into Python
arithmetic: the hot path's backend while the runtime flag onnx_enabled is off (ModelRuntime
swaps it live) and its fallback when an ONNX Runtime run fails.

Session options (measured by `tune_session_options`, 2-core VM, batch of 1, run with an IO
binding): ~4 us a call whatever the options on a quiet machine (ORT runs a graph this small on
the calling thread); under load, 1 intra-op thread and sequential execution had the best p99.
The run call itself is most of it: the same model as Python arithmetic costs ~0.2 us. `SessionConfig` holds the
choice; the optimizer task re-measures it and stores the table in Redis.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import schema
from core.kernels import numpy_impl
from core.market import FactorModel, MarketSimulator

INPUT_NAME = "features"
OUTPUT_NAME = "expected_return"
PROB_NAME = "prob_up"
N_FEATURES = 4
WINDOW = 32                      # must equal core.pipeline.WINDOW (checked by a test)
DT_DAYS = 1.0 / 60_000           # 1,000 ticks/s with 60 s per simulated day, as the runner
TRAIN_STREAM, OOS_STREAM = 11, 12   # simulator random streams: training vs never-seen data


class ModelError(ValueError):
    """A model file is missing, unreadable, or does not match the contract above."""


@dataclass(frozen=True)
class SessionConfig:
    intra_op_threads: int = 1
    graph_optimization: str = "all"      # "disable", "basic", "extended", "all"
    execution_mode: str = "sequential"   # or "parallel"

    def options(self):
        import onnxruntime as ort
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if self.graph_optimization not in levels:
            raise ValueError(f"graph_optimization must be one of {sorted(levels)}, got {self.graph_optimization!r}")
        if self.execution_mode not in ("sequential", "parallel"):
            raise ValueError(f"execution_mode must be sequential or parallel, got {self.execution_mode!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(self.intra_op_threads))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = levels[self.graph_optimization]
        opts.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if self.execution_mode == "sequential"
                               else ort.ExecutionMode.ORT_PARALLEL)
        opts.log_severity_level = 3
        return opts

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SessionConfig":
        d = d or {}
        return cls(int(d.get("intra_op_threads", 1)), str(d.get("graph_optimization", "all")),
                   str(d.get("execution_mode", "sequential")))


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def load_onnx(path) -> "object":
    """Parse and check the file; ModelError naming the problem otherwise."""
    import onnx
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path} (run `make setup` or scripts/train_model.py)")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:   # onnx raises DecodeError, ValidationError, ...: all mean corrupt
        raise ModelError(f"model file {path} is not a valid ONNX model: {type(exc).__name__}: {exc}") from None
    validate_contract(proto, path)
    return proto


def validate_contract(proto, path="<model>") -> None:
    from onnx import TensorProto
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelError(f"model {path}: expected one input named {INPUT_NAME!r}, "
                         f"found {[i.name for i in inputs]}")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise ModelError(f"model {path}: input {INPUT_NAME!r} must be float32, found "
                         f"{TensorProto.DataType.Name(elem)}")
    dims = _dims(inputs[0])
    if len(dims) != 2 or dims[1] != N_FEATURES:
        raise ModelError(f"model {path}: input {INPUT_NAME!r} must have shape [batch, {N_FEATURES}], "
                         f"found {['?' if d is None else d for d in dims]}")
    outputs = [o.name for o in proto.graph.output]
    if OUTPUT_NAME not in outputs:
        raise ModelError(f"model {path}: no output named {OUTPUT_NAME!r} (outputs: {outputs})")


class SignalModel:
    """An ONNX signal model with an ONNX Runtime session (validated on load)."""

    def __init__(self, path, config: SessionConfig | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        self.proto = load_onnx(self.path)
        self.config = config or SessionConfig()
        try:
            self.session = ort.InferenceSession(self.proto.SerializeToString(), self.config.options(),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"model {self.path}: ONNX Runtime cannot load it: {exc}") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._weights = _linear_weights(self.proto)
        meta = {p.key: p.value for p in self.proto.metadata_props}
        try:
            self.dt_days = float(meta.get("dt_days", DT_DAYS))   # the time step it was trained at
        except ValueError:
            raise ModelError(f"model {self.path}: metadata dt_days={meta['dt_days']!r} is not a number") from None

    def return_scale(self, live_dt_days: float) -> float:
        """Factor that maps returns at the live time step to the training one: returns scale
        with sqrt(dt), so a model trained at 60 s per simulated day still reads a feed run at
        1 s per day correctly (ret, ret_mean in; expected return out, divided back)."""
        if not (live_dt_days > 0 and math.isfinite(live_dt_days)):
            raise ValueError(f"live_dt_days must be a positive number, got {live_dt_days!r}")
        return math.sqrt(self.dt_days / live_dt_days)

    # ---- batches -------------------------------------------------------------------------
    def predict(self, features) -> np.ndarray:
        """Expected next return per row of `features` ([n, 4]); ValueError on bad input."""
        return self.run(features)[OUTPUT_NAME]

    def run(self, features) -> dict[str, np.ndarray]:
        x = check_features(features)
        res = self.session.run(self.outputs, {INPUT_NAME: x})
        return {name: r.reshape(-1) for name, r in zip(self.outputs, res)}

    def reference_predict(self, features) -> dict[str, np.ndarray]:
        """The same graph evaluated in numpy from its initializers (models written by
        scripts/train_model.py); ModelError for other graphs."""
        if self._weights is None:
            raise ModelError(f"model {self.path}: not a standardize + linear graph; no numpy reference")
        mu, sd, w, b = self._weights
        h = ((check_features(features).astype(np.float64) - mu) / sd) @ w + b
        out = {OUTPUT_NAME: h[:, 0]}
        if w.shape[1] > 1:
            out[PROB_NAME] = 1.0 / (1.0 + np.exp(-h[:, 1]))
        return out

    # ---- one tick --------------------------------------------------------------------------
    def tick_predictor(self, scale: float = 1.0):
        """f(features_tuple) -> float through an IO binding on preallocated buffers: ~4 us a
        call here against ~7 us for session.run with a fresh dict and output list."""
        x = np.zeros((1, N_FEATURES), np.float32)
        y = np.zeros((1, 1), np.float32)
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, [1, 1], y.ctypes.data)
        others = []
        for out in self.session.get_outputs():
            if out.name != OUTPUT_NAME:   # other outputs into buffers too: no allocation per call
                buf = np.zeros([d if isinstance(d, int) else 1 for d in out.shape] or [1], np.float32)
                others.append(buf)
                binding.bind_output(out.name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        run = self.session.run_with_iobinding
        opts = None   # passing an ort.RunOptions cost ~30 us a call here (measured): none
        row = x[0]

        if scale == 1.0:
            def predict(feats) -> float:
                row[:] = feats
                run(binding, opts)
                return float(y[0, 0])
        else:
            inv = 1.0 / scale

            def predict(feats) -> float:
                row[0] = feats[0] * scale
                row[1] = feats[1] * scale
                row[2] = feats[2]
                row[3] = feats[3]
                run(binding, opts)
                return float(y[0, 0]) * inv
        predict.buffers = (x, y, others)   # keep the bound memory alive with the closure
        return predict

    def python_tick_predictor(self, scale: float = 1.0):
        """The same model as plain Python arithmetic (the fallback when ORT fails)."""
        if self._weights is None:
            raise ModelError(f"model {self.path}: no python fallback for this graph")
        mu, sd, w, _b = self._weights
        coef = [float(w[i, 0] / sd[i]) for i in range(N_FEATURES)]
        bias = float(self._weights[3][0] - sum(w[i, 0] * mu[i] / sd[i] for i in range(N_FEATURES)))
        # (bias + c0 k r + c1 k m + c2 z + c3 i) / k, folded into the coefficients
        c0, c1, c2, c3 = coef[0], coef[1], coef[2] / scale, coef[3] / scale
        bias /= scale

        def predict(f) -> float:
            return bias + c0 * f[0] + c1 * f[1] + c2 * f[2] + c3 * f[3]
        return predict


def check_features(features) -> np.ndarray:
    x = np.asarray(features)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"features must be numeric, got dtype {x.dtype}")
    if x.ndim == 1 and x.shape[0] == N_FEATURES:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"features must have shape [n, {N_FEATURES}], got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("features: empty batch")
    return np.ascontiguousarray(x, dtype=np.float32)


def _linear_weights(proto):
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    if not {"mu", "sd", "W_lin", "b_lin", "W_log", "b_log"} <= set(inits):
        return None
    return (inits["mu"], inits["sd"], np.hstack([inits["W_lin"], inits["W_log"]]),
            np.concatenate([inits["b_lin"], inits["b_log"]]))


# ---- session options by measurement -------------------------------------------------------
def tune_session_options(path, max_workers: int, calls: int = 3000) -> list[dict]:
    """Per-call latency of a one-row prediction for each candidate SessionConfig, best first."""
    candidates = {SessionConfig(t, lvl, mode)
                  for t in sorted({1, max(1, max_workers)}) for lvl in ("basic", "all")
                  for mode in ("sequential",)} | {SessionConfig(1, "all", "parallel")}
    rows = []
    feats = (1e-4, 2e-5, 0.5, 0.1)
    for cfg in sorted(candidates, key=lambda c: (c.intra_op_threads, c.graph_optimization, c.execution_mode)):
        predict = SignalModel(path, cfg).tick_predictor()
        for _ in range(200):
            predict(feats)
        ts = np.empty(calls)
        clock = time.perf_counter_ns
        for i in range(calls):
            t0 = clock()
            predict(feats)
            ts[i] = clock() - t0
        rows.append({**cfg.to_dict(), "p50_us": float(np.percentile(ts, 50)) / 1e3,
                     "p99_us": float(np.percentile(ts, 99)) / 1e3})
    rows.sort(key=lambda r: (r["p99_us"] + r["p50_us"]))
    return rows


# ---- the dataset: features of simulated ticks and the next return ------------------------
def feature_dataset(model: FactorModel, seed: int, rounds: int, stream: int = TRAIN_STREAM,
                    dt_days: float = DT_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """(X [n, 4] float64, y [n] next log return) from `rounds` rounds of simulated ticks.

    The batch twin of core.pipeline.FeatureState (full windows only): per symbol, the log
    return, its rolling mean over WINDOW, its rolling z-score, the book imbalance."""
    if rounds < WINDOW + 2:
        raise ValueError(f"rounds must be >= {WINDOW + 2}, got {rounds}")
    block = MarketSimulator(model, seed, stream=stream).next_block(rounds, dt_days)
    n = model.n
    mid = block.mid.reshape(rounds, n)
    imb = block.imbalance.reshape(rounds, n)
    r = numpy_impl.log_returns(mid)                       # row t: return into round t+1
    mean = numpy_impl.rolling_mean(r, WINDOW)
    z = numpy_impl.rolling_zscore(r, WINDOW)
    feats = np.stack([r, mean, z, imb[1:]], axis=-1)      # [rounds-1, n, 4]
    X = feats[WINDOW - 1:-1].reshape(-1, N_FEATURES)      # needs a full window and a next return
    y = r[WINDOW:].reshape(-1)
    return X, y


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (hits out of n)."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def hit_rate(pred: np.ndarray, actual: np.ndarray) -> dict:
    """Share of ticks where sign(pred) == sign(actual), ties (either 0) excluded, with CI."""
    keep = (pred != 0) & (actual != 0)
    hits = int(np.sum(np.sign(pred[keep]) == np.sign(actual[keep])))
    n = int(keep.sum())
    lo, hi = wilson_interval(hits, n)
    return {"hit_rate": hits / n if n else math.nan, "ci_low": lo, "ci_high": hi, "n": n}


def evaluate_oos(signal_model: SignalModel, n_symbols: int, seed: int, rounds: int = 10_000) -> dict:
    """Hit rate of the model on ticks from a random stream it was never trained on."""
    X, y = feature_dataset(FactorModel.from_seed(n_symbols, seed), seed, rounds, stream=OOS_STREAM)
    out = hit_rate(signal_model.predict(X).astype(np.float64), y)
    out.update({"seed": seed, "stream": OOS_STREAM, "rounds": rounds, "model_path": str(signal_model.path),
                "model_mtime": os.path.getmtime(signal_model.path)})
    return out


# ---- the runner's side: load, follow the flag and the selection, alert on failures ----------
class ModelRuntime:
    """Owns the pipeline's model backend in a long-running process.

    `attach` installs the tick predictor: ONNX Runtime through an IO binding (with the same
    model as Python arithmetic as the fallback) while the onnx_enabled flag is on; the Python
    arithmetic itself while it is off: the same weights, ~0.2 us a call (ONNX Runtime ~4.6 us,
    a one-row numpy dot ~1.1 us, measured here), equal to ONNX Runtime within float32 tolerance
    (tests/core/test_model.py).
    `set_onnx_enabled` follows the Settings page's flag live (the runner's config listener).
    `io` runs off the hot path (the runner's status loop): it raises an alert for every backend
    failure the pipeline queued, records every change of the live backend in
    schema.KERNELS_HISTORY (what "model_inference", before, after, reason), and follows the
    optimizer's selection in Redis (ONNX Runtime session options, the kernel backends of
    `self.kernels`)."""

    SELECTION_EVERY_S = 5.0

    def __init__(self, settings):
        from core.kernels import KernelSet
        self.settings = settings
        self.signal: SignalModel | None = None
        self.error: str | None = None
        self._error_alerted = False
        self._next_selection = 0.0
        self.selection_ts = None
        self.kernels = KernelSet(enabled=_enabled(settings))
        self.live_dt_days: float | None = None
        self.onnx_enabled = bool(settings.onnx_enabled)
        self.installed: str | None = None        # the backend `attach` put in place last
        self.last_switch: dict | None = None
        self._recorded: str | None = None        # the backend KERNELS_HISTORY last saw
        self._reason = "start"
        self._lock = threading.RLock()           # the config listener and the io thread attach
        try:
            self.signal = SignalModel(settings.model_path)
        except ModelError as exc:
            self.error = str(exc)

    def attach(self, pipeline, live_dt_days: float | None = None) -> None:
        """Install the model; `live_dt_days` is the feed's time step (None: the last one given,
        else the training one)."""
        with self._lock:
            if self.signal is None:
                return
            if live_dt_days is not None:
                self.live_dt_days = live_dt_days
            k = self.signal.return_scale(self.live_dt_days or self.signal.dt_days)
            python = self.signal.python_tick_predictor(k)
            if self.onnx_enabled:
                pipeline.set_predictor(self.signal.tick_predictor(k), "onnx", fallback=python, fallback_name="python")
            else:
                pipeline.set_predictor(python, "python")
            self.installed = pipeline.model_backend
            if self._recorded is None:
                self._recorded = self.installed

    def set_onnx_enabled(self, pipeline, enabled: bool) -> bool:
        """Follow the onnx_enabled flag: swap the live tick predictor to ONNX Runtime or to the
        same model in Python arithmetic. True when the flag changed (io records the switch)."""
        with self._lock:
            enabled = bool(enabled)
            if enabled == self.onnx_enabled:
                return False
            self.onnx_enabled = enabled
            self._reason = f"onnx_enabled set {'on' if enabled else 'off'}"
            self.attach(pipeline)
            return True

    def io(self, client, pipeline, now: float | None = None, live_dt_days: float | None = None) -> None:
        from core.alerts import raise_alert
        now = time.time() if now is None else now
        if (live_dt_days is not None and self.signal is not None and live_dt_days != self.live_dt_days
                and pipeline.model_backend == self.installed):
            self.attach(pipeline, live_dt_days)            # the tick rate changed
        if self.error and not self._error_alerted:
            self._error_alerted = raise_alert(
                client, "degraded", "kernels", f"signal model not loaded, pipeline uses the "
                f"start-up linear fit: {self.error}", dedupe_key="model:load", dedupe_s=300) is not None
        while pipeline.backend_failures:
            _ts, stage, backend, err = pipeline.backend_failures.popleft()
            self._reason = f"{backend} failed: {err}"[:300]
            raise_alert(client, "degraded", "kernels", f"{stage}: backend {backend} failed ({err}); "
                        f"fell back to {pipeline.model_backend}", dedupe_key=f"backend:{stage}:{backend}")
        self._record_switch(client, pipeline.model_backend, now)
        if now >= self._next_selection:
            self._next_selection = now + self.SELECTION_EVERY_S
            self._follow_selection(client, pipeline)

    def _record_switch(self, client, backend: str, now: float) -> None:
        """A model_inference backend change since the last record, into KERNELS_HISTORY."""
        before = self._recorded
        if before is None or backend == before:
            return
        switch = {"ts": now, "what": "model_inference", "before": before, "after": backend,
                  "before_ms": None, "after_ms": None, "reason": self._reason}
        client.xadd(schema.KERNELS_HISTORY, {k: schema.dumps(v) for k, v in switch.items()},
                    maxlen=schema.KERNELS_HISTORY_MAXLEN, approximate=True)
        self._recorded, self.last_switch = backend, switch

    def _follow_selection(self, client, pipeline) -> None:
        from core.optimizer import read_selection
        sel = read_selection(client)
        if not sel or sel.get("ts") == self.selection_ts:
            return
        self.selection_ts = sel.get("ts")
        # numba's thread count applies where numba kernels run (the worker, batch jobs); not
        # here: importing numba in this process would stall the feed thread for ~0.4 s
        self.kernels.update(sel.get("kernels") or {})
        session = sel.get("session")
        if self.signal is not None and session:
            cfg = SessionConfig.from_dict(session)
            if cfg != self.signal.config:       # kept while ONNX is off, for when it is back
                with self._lock:
                    self.signal = SignalModel(self.signal.path, cfg)   # built here, swapped atomically
                    if pipeline.model_backend == self.installed == "onnx":
                        self.attach(pipeline)

    def status(self, pipeline) -> dict:
        return {"model_backend": pipeline.model_backend, "model_path": str(self.settings.model_path),
                "model_error": self.error, "onnx_enabled": self.onnx_enabled,
                "model_switch": self.last_switch, "kernels": dict(self.kernels.selection)}


def _enabled(settings) -> tuple[str, ...]:
    flags = {"numpy": settings.vectorization_enabled, "numba": settings.numba_enabled,
             "onnx": settings.onnx_enabled}
    return ("python",) + tuple(b for b, on in flags.items() if on)
