"""Vectorized numpy versions (inputs already validated by the public wrappers)."""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from core.kernels.config import CLIP_Z, DEGENERATE_VAR, EPS, SQUASH_DEGENERATE_REL


def squash(x: np.ndarray, eps: float = EPS, clip: float = CLIP_Z, out: np.ndarray | None = None) -> np.ndarray:
    finite = np.isfinite(x)
    if finite.all():
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        z = np.subtract(x, mean, out=out)
        z /= _denominator(mean, std, eps)
        np.clip(z, -clip, clip, out=z)
        return np.tanh(z, out=z)
    x0 = np.where(finite, x, 0.0)
    count = np.maximum(finite.sum(axis=0), 1)
    mean = x0.sum(axis=0) / count
    d = np.where(finite, x0 - mean, 0.0)
    std = np.sqrt((d * d).sum(axis=0) / count)
    d /= _denominator(mean, std, eps)
    np.clip(d, -clip, clip, out=d)
    return np.tanh(d, out=d if out is None else out)


def _denominator(mean: np.ndarray, std: np.ndarray, eps: float) -> np.ndarray:
    """std + eps, or inf (output 0) where the column is constant up to rounding."""
    return np.where(std <= SQUASH_DEGENERATE_REL * np.abs(mean), np.inf, std + eps)


def log_returns(p: np.ndarray) -> np.ndarray:
    return np.diff(np.log(p), axis=0)


def _sums(x: np.ndarray, window: int):
    """Windowed sums of (x - shift) and its square via cumulative sums; the shift (the
    first value) keeps the sums small, so var = E[d^2] - E[d]^2 does not cancel badly."""
    d = x - x[:1]
    zero = np.zeros((1,) + x.shape[1:])
    c1 = np.concatenate([zero, np.cumsum(d, axis=0)])
    c2 = np.concatenate([zero, np.cumsum(d * d, axis=0)])
    return (c1[window:] - c1[:-window]), (c2[window:] - c2[:-window]), d


def _pad(values: np.ndarray, n: int, window: int) -> np.ndarray:
    out = np.full((n,) + values.shape[1:], np.nan)
    out[window - 1:] = values
    return out


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    if window > len(x):
        return np.full(x.shape, np.nan)
    s1, _, _ = _sums(x, window)
    return _pad(s1 / window + x[:1], len(x), window)


def _mean_std(x: np.ndarray, window: int):
    s1, s2, d = _sums(x, window)
    m = s1 / window
    var = s2 / window - m * m
    # a (nearly) constant window: what is left of var is rounding, not spread
    var[var <= DEGENERATE_VAR * (s2 / window)] = 0.0
    return m, np.sqrt(var), d


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    if window > len(x):
        return np.full(x.shape, np.nan)
    _, std, _ = _mean_std(x, window)
    return _pad(std, len(x), window)


def rolling_zscore(x: np.ndarray, window: int, eps: float = EPS) -> np.ndarray:
    if window > len(x):
        return np.full(x.shape, np.nan)
    m, std, d = _mean_std(x, window)
    z = np.where(std > 0.0, (d[window - 1:] - m) / (std + eps), 0.0)
    return _pad(z, len(x), window)


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    # the recurrence as one C loop (scipy's IIR filter), started at y[-1] = x[0]
    zi = (1.0 - alpha) * x[:1]
    return lfilter([alpha], [1.0, -(1.0 - alpha)], x, axis=0, zi=zi)[0]
