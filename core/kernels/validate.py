"""Input checks shared by every backend: a clear ValueError/TypeError, never a crash.

Policies (documented once, applied by every backend):
- dtype: float64 only (float32 and integer input are converted by `as_matrix`/`as_series`
  with a copy; anything non-numeric is a TypeError);
- layout: non-contiguous input is copied to C order (numba and ONNX want contiguous rows);
- empty input: ValueError; a single row is fine (its std is 0, so its output is 0);
- NaN / inf in the stateless transform (`squash`): treated as missing, excluded from the
  column's mean and std, and mapped to 0.0 (a neutral feature); an all-missing column is 0;
- NaN / inf in rolling kernels: ValueError naming the count and the first position (a gap in
  a price series is the caller's to fill; silently propagating it would poison a window).
"""
from __future__ import annotations

import numpy as np


def _as_float64(x, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        arr = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{what}: expected numeric input, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{what}: complex input is not supported")
        arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"{what}: empty input (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def as_matrix(x, what: str = "squash") -> np.ndarray:
    """A C-contiguous float64 (rows, columns) matrix; a 1-D input is one column."""
    arr = _as_float64(x, what)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 1-D or 2-D array, got {arr.ndim}-D shape {arr.shape}")
    return arr


def as_series(x, what: str) -> np.ndarray:
    """A C-contiguous float64 1-D or 2-D (time along axis 0) array of finite values."""
    arr = _as_float64(x, what)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{what}: expected a 1-D or 2-D array, got {arr.ndim}-D shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(f"{what}: {int(bad.sum())} non-finite value(s), first at index "
                         f"{tuple(int(i) for i in first)}; fill gaps before calling")
    return arr


def check_window(window, n: int, what: str) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"{what}: window must be a positive integer, got {window!r}")
    return int(window)


def check_alpha(alpha, what: str = "ewma") -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: alpha must be a number in (0, 1], got {alpha!r}") from None
    if not 0.0 < a <= 1.0:
        raise ValueError(f"{what}: alpha must be in (0, 1], got {alpha!r}")
    return a
