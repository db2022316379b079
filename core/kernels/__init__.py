"""Compute kernels of the pipeline's data processing, with interchangeable backends.

Kernels (time along axis 0; `squash` is per column):
  squash(x)                 tanh(clip((x - mean) / (std + EPS), +-CLIP_Z)) per column
  log_returns(p)            log(p[i+1] / p[i])
  rolling_mean / rolling_std / rolling_zscore(x, window)   NaN until the first full window
  ewma(x, alpha)            y[i] = alpha x[i] + (1 - alpha) y[i-1], y[-1] = x[0]
Backends: "python" (core.kernels.reference: the oracle), "numpy", "numba", "onnx" (squash
only; rolling kernels report N/A). Every backend agrees with the reference within
config.TOLERANCE (max abs error); the input policies (dtype, layout, empty, NaN) are in
core.kernels.validate. `KernelSet` runs the backend selected per kernel (by
core.optimizer, stored in Redis) and falls back to the next one when it fails.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import numpy as np

from core.kernels import config, reference, validate
from core.kernels.config import BACKENDS, CLIP_Z, EPS, TOLERANCE

log = logging.getLogger(__name__)

KERNELS = ("squash", "log_returns", "rolling_mean", "rolling_std", "rolling_zscore", "ewma")
# fallback order after the selected backend fails: fastest usual first, the oracle last
FALLBACK_ORDER = ("numba", "numpy", "onnx", "python")


class BackendUnavailable(RuntimeError):
    """The backend has no implementation of this kernel, or is switched off."""


# ---- the python backend: lists through the reference, column by column -------------------
def _py_columns(fn, x: np.ndarray, *args) -> np.ndarray:
    cols = x.reshape(len(x), -1).T.tolist()
    res = [fn(c, *args) for c in cols]
    out = np.array(res, dtype=np.float64).T
    return out.reshape((out.shape[0],) + x.shape[1:])


def _python(kernel: str) -> Callable:
    if kernel == "squash":
        return lambda x, **kw: np.array(reference.squash(x.tolist(), **kw), dtype=np.float64)
    fn = getattr(reference, kernel)
    return lambda x, *args: _py_columns(fn, x, *args)


def implementation(kernel: str, backend: str) -> Callable:
    """The raw implementation (inputs must already be validated); BackendUnavailable if none."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if backend == "python":
        return _python(kernel)
    if backend == "numpy":
        from core.kernels import numpy_impl
        return getattr(numpy_impl, kernel)
    if backend == "numba":
        from core.kernels import numba_impl
        return getattr(numba_impl, kernel)
    if backend == "onnx":
        if kernel != "squash":
            raise BackendUnavailable(f"{kernel}: no ONNX path (rolling kernels are N/A)")
        from core.kernels import onnx_impl
        return onnx_impl.squash
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def available(kernel: str) -> tuple[str, ...]:
    return BACKENDS if kernel == "squash" else tuple(b for b in BACKENDS if b != "onnx")


def prepare(kernel: str, x, *args) -> tuple:
    """Validate and convert the arguments of `kernel` (the public-wrapper half)."""
    if kernel == "squash":
        return (validate.as_matrix(x, kernel),)
    arr = validate.as_series(x, kernel)
    if kernel == "log_returns":
        if len(arr) < 2:
            raise ValueError("log_returns: need at least 2 prices")
        if np.any(arr <= 0):
            raise ValueError("log_returns: prices must be positive")
        return (arr,)
    if kernel == "ewma":
        return (arr, validate.check_alpha(args[0] if args else None))
    return (arr, validate.check_window(args[0] if args else None, len(arr), kernel))


def run(kernel: str, x, *args, backend: str = "numpy"):
    """Validate, then run one backend (no fallback)."""
    return implementation(kernel, backend)(*prepare(kernel, x, *args))


def squash(x, backend: str = "numpy"):
    return run("squash", x, backend=backend)


def log_returns(p, backend: str = "numpy"):
    return run("log_returns", p, backend=backend)


def rolling_mean(x, window: int, backend: str = "numpy"):
    return run("rolling_mean", x, window, backend=backend)


def rolling_std(x, window: int, backend: str = "numpy"):
    return run("rolling_std", x, window, backend=backend)


def rolling_zscore(x, window: int, backend: str = "numpy"):
    return run("rolling_zscore", x, window, backend=backend)


def ewma(x, alpha: float, backend: str = "numpy"):
    return run("ewma", x, alpha, backend=backend)


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| where both are finite; inf when shapes or NaN positions differ."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    both = ~np.isnan(a)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


class KernelSet:
    """Runs each kernel on its selected backend; on an exception falls back along
    FALLBACK_ORDER and reports the failure through `on_failure(kernel, backend, exc)`
    (the caller turns it into an alert). Never raises for a backend failure unless every
    backend failed; bad input still raises ValueError/TypeError (that is the caller's bug)."""

    def __init__(self, selection: dict[str, str] | None = None, enabled: tuple[str, ...] = BACKENDS,
                 on_failure: Callable[[str, str, BaseException], None] | None = None):
        self.enabled = tuple(enabled)
        self.selection = {k: "numpy" for k in KERNELS}
        self.update(selection or {})
        self.on_failure = on_failure
        self.failures: deque = deque(maxlen=100)

    def update(self, selection: dict[str, str]) -> dict[str, tuple[str, str]]:
        """Apply a new selection; return {kernel: (before, after)} for what changed."""
        changed = {}
        for kernel, backend in selection.items():
            if kernel in KERNELS and backend in available(kernel) and self.selection.get(kernel) != backend:
                changed[kernel] = (self.selection.get(kernel), backend)
                self.selection[kernel] = backend
        return changed

    def order(self, kernel: str) -> list[str]:
        first = self.selection.get(kernel, "numpy")
        rest = [b for b in FALLBACK_ORDER if b != first and b in available(kernel)
                and (b in self.enabled or b == "python")]
        return [first] + rest

    def __call__(self, kernel: str, x, *args, out: np.ndarray | None = None):
        """Run `kernel`; `out` (squash only) is a preallocated result buffer the fast
        backends write into (the python reference returns a new array)."""
        prepared = prepare(kernel, x, *args)
        if out is not None and (kernel != "squash" or out.shape != prepared[0].shape
                                or out.dtype != np.float64 or not out.flags.c_contiguous):
            raise ValueError(f"{kernel}: out must be a C-contiguous float64 array of the input's shape")
        last: BaseException | None = None
        for backend in self.order(kernel):
            try:
                impl = implementation(kernel, backend)
                if out is not None and backend != "python":
                    return impl(*prepared, out=out)
                return impl(*prepared)
            except Exception as exc:   # any backend failure: fall back, never stop the caller
                last = exc
                self.failures.append((time.time(), kernel, backend, repr(exc)))
                log.error("kernel %s: backend %s failed (%r); falling back", kernel, backend, exc)
                if self.on_failure is not None:
                    self.on_failure(kernel, backend, exc)
        raise RuntimeError(f"kernel {kernel}: every backend failed; last error {last!r}")


__all__ = ["KERNELS", "BACKENDS", "TOLERANCE", "EPS", "CLIP_Z", "KernelSet", "BackendUnavailable",
           "squash", "log_returns", "rolling_mean", "rolling_std", "rolling_zscore", "ewma",
           "run", "prepare", "implementation", "available", "max_abs_error", "config", "reference"]
