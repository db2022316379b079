"""The pure-Python reference of every kernel: slow and obvious, the test oracle and the
benchmark baseline (as stumpy's tests/naive.py). Lists in, lists out; two-pass statistics
with math.fsum; no numpy in the arithmetic."""
from __future__ import annotations

import math

from core.kernels.config import CLIP_Z, DEGENERATE_VAR, EPS, SQUASH_DEGENERATE_REL


def squash(rows: list[list[float]], eps: float = EPS, clip: float = CLIP_Z) -> list[list[float]]:
    """tanh(clip((x - mean) / (std + eps), -clip, clip)) per column; non-finite -> 0; a
    column with std <= SQUASH_DEGENERATE_REL * |mean| (constant up to rounding) -> 0."""
    n_cols = len(rows[0])
    means, stds = [], []
    for j in range(n_cols):
        col = [r[j] for r in rows if math.isfinite(r[j])]
        if not col:
            means.append(0.0)
            stds.append(0.0)
            continue
        mean = math.fsum(col) / len(col)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in col) / len(col))
        means.append(mean)
        stds.append(math.inf if std <= SQUASH_DEGENERATE_REL * abs(mean) else std)   # -> 0
    out = []
    for r in rows:
        row = []
        for j in range(n_cols):
            v = r[j]
            if not math.isfinite(v):
                row.append(0.0)
                continue
            z = (v - means[j]) / (stds[j] + eps)
            row.append(math.tanh(min(clip, max(-clip, z))))
        out.append(row)
    return out


def log_returns(prices: list[float]) -> list[float]:
    """r[i] = log(p[i+1] / p[i]); one shorter than the input."""
    return [math.log(b / a) for a, b in zip(prices, prices[1:])]


def _windows(x: list[float], window: int):
    for i in range(len(x)):
        yield i, (x[i - window + 1:i + 1] if i >= window - 1 else None)


def rolling_mean(x: list[float], window: int) -> list[float]:
    """Mean of the last `window` values; NaN until the first full window."""
    return [math.nan if w is None else math.fsum(w) / window for _, w in _windows(x, window)]


def rolling_std(x: list[float], window: int) -> list[float]:
    """Population (ddof=0) standard deviation of the last `window` values; NaN before."""
    out = []
    for _, w in _windows(x, window):
        if w is None:
            out.append(math.nan)
            continue
        m = math.fsum(w) / window
        var = math.fsum((v - m) ** 2 for v in w) / window
        if var <= DEGENERATE_VAR * (math.fsum(v * v for v in w) / window):
            var = 0.0           # constant up to rounding (see config.DEGENERATE_VAR)
        out.append(math.sqrt(var))
    return out


def rolling_zscore(x: list[float], window: int, eps: float = EPS) -> list[float]:
    """(x[i] - rolling mean) / (rolling std + eps), the window including x[i]; NaN before."""
    means, stds = rolling_mean(x, window), rolling_std(x, window)
    return [math.nan if math.isnan(m) else 0.0 if s == 0.0 else (v - m) / (s + eps)
            for v, m, s in zip(x, means, stds)]


def ewma(x: list[float], alpha: float) -> list[float]:
    """y[0] = x[0]; y[i] = alpha * x[i] + (1 - alpha) * y[i-1]."""
    out, y = [], x[0]
    for v in x:
        y = alpha * v + (1.0 - alpha) * y
        out.append(y)
    return out
