"""numba kernels: private `@njit` `_name` plus the public entry the dispatcher calls
(stumpy's `_sliding_dot_product` / `sliding_dot_product` pattern). Inputs arrive validated.

Why these shapes (measured on the 2-core VM, 1,000,000 x 16 float64, see bench/kernels.py):
- `squash` is two passes, each parallel over row chunks: column sums of (x - first row) and
  their squares (one read), then normalize + clip + tanh fused into one read and one write. A
  column where those sums cannot give the spread to 1e-10 (the first row far from the mean,
  or a column constant up to rounding: hypothesis found both) gets a middle pass of squared
  deviations from the mean; the usual input never needs it. numpy needs ~6 passes and 2
  temporaries (~160 ms); this runs close to the np.copyto floor (~10 ms).
- numba has no SVML here, so `math.tanh` in a loop is a scalar libm call (~4x slower than
  np.tanh). `_tanh` is instead a 13/6 rational approximation (Eigen's `generic_fast_tanh_float`
  coefficients evaluated in float64) on the clipped range |z| <= CLIP_Z < 7.9: max abs error
  2.6e-8 against math.tanh, inside TOLERANCE (1e-6), and it vectorizes.
- rolling kernels are sequential in time: one pass per column with running sums shifted by the
  column's first value; columns run in parallel when there are several.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from core.kernels.config import (CLIP_Z, DEGENERATE_VAR, EPS, JIT, JIT_PARALLEL, PARALLEL_MIN_ELEMENTS,
                                 SQUASH_DEGENERATE_REL)

_A1, _A3, _A5, _A7 = 4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08
_A9, _A11, _A13 = -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16
_B0, _B2, _B4, _B6 = 4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06


@njit(inline="always", **JIT)
def _tanh(z):
    """tanh on |z| <= 7.9 (callers clip first)."""
    z2 = z * z
    p = ((((((_A13 * z2 + _A11) * z2 + _A9) * z2 + _A7) * z2 + _A5) * z2 + _A3) * z2 + _A1) * z
    q = ((_B6 * z2 + _B4) * z2 + _B2) * z2 + _B0
    return p / q


def _squash_stats_py(x, n_chunks, masked, shift):
    """Per column: count of finite values, and sums of (x - shift) and its square over them.

    The unmasked pass is branch-free so it vectorizes; it also sums (d - d), which is 0 for
    finite values and NaN otherwise, and the caller re-runs masked when that sum is not 0."""
    n, m = x.shape
    cnt = np.zeros((n_chunks, m))
    s1 = np.zeros((n_chunks, m))
    s2 = np.zeros((n_chunks, m))
    chk = np.zeros((n_chunks, m))
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        a1 = np.zeros(m)
        a2 = np.zeros(m)
        ac = np.zeros(m)
        an = np.zeros(m)
        lo, hi = c * step, min(n, (c + 1) * step)
        if masked:
            for i in range(lo, hi):
                for j in range(m):
                    d = x[i, j] - shift[j]
                    if d - d == 0.0:          # finite (NaN and inf fail this)
                        an[j] += 1.0
                        a1[j] += d
                        a2[j] += d * d
        else:
            for i in range(lo, hi):
                for j in range(m):
                    d = x[i, j] - shift[j]
                    a1[j] += d
                    a2[j] += d * d
                    ac[j] += d - d
            an[:] = hi - lo if hi > lo else 0
        cnt[c] = an
        s1[c] = a1
        s2[c] = a2
        chk[c] = ac
    return cnt.sum(axis=0), s1.sum(axis=0), s2.sum(axis=0), chk.sum(axis=0)


def _squash_apply_py(x, mean, inv, clip, out):
    n, m = x.shape
    for i in prange(n):
        for j in range(m):
            v = x[i, j]
            z = (v - mean[j]) * inv[j]
            z = min(max(z, -clip), clip)
            out[i, j] = _tanh(z) if v - v == 0.0 else 0.0


ILL_CONDITIONED = 1e-6     # var below this fraction of E[d^2]: recompute around the mean


_squash_stats_par = njit(**JIT_PARALLEL)(_squash_stats_py)
_squash_stats = njit(**JIT)(_squash_stats_py)
_squash_apply_par = njit(**JIT_PARALLEL)(_squash_apply_py)
_squash_apply = njit(**JIT)(_squash_apply_py)


def squash(x: np.ndarray, eps: float = EPS, clip: float = CLIP_Z, out: np.ndarray | None = None,
           parallel: bool | None = None) -> np.ndarray:
    if not 0.0 < clip <= 7.9:
        raise ValueError(f"squash (numba): clip must be in (0, 7.9] for the fast tanh, got {clip}")
    import numba
    par = x.size >= PARALLEL_MIN_ELEMENTS if parallel is None else parallel
    threads = numba.get_num_threads() if par else 1
    stats = _squash_stats_par if par else _squash_stats
    chunks = max(1, threads)
    # pass 1: the mean (sums shifted by a sample value, in case they are huge)
    first = x[0]
    shift = np.where(np.isfinite(first), first, 0.0)
    cnt, s1, s2, chk = stats(x, chunks, False, shift)
    masked = not np.all(chk == 0.0)           # some non-finite input: masked passes
    if masked:
        cnt, s1, s2, _ = stats(x, chunks, True, shift)
    cnt = np.maximum(cnt, 1.0)
    d_mean = s1 / cnt
    mean = shift + d_mean
    var = s2 / cnt - d_mean * d_mean
    # var = E[d^2] - E[d]^2 loses ~1e-16 * E[d^2] to rounding: fine unless the shift (the
    # first row) sits far from the column's mean relative to its spread, or the column is
    # constant up to rounding. Only then, pass 2: squared deviations from the mean, with the
    # rounding of pass 1 corrected (the "corrected two-pass" variance).
    if np.any(var <= ILL_CONDITIONED * (s2 / cnt)):
        _, c1, c2, _ = stats(x, chunks, masked, mean)
        c1 /= cnt
        var = c2 / cnt - c1 * c1
        mean = mean + c1
    std = np.sqrt(np.maximum(var, 0.0))
    inv = np.where(std <= SQUASH_DEGENERATE_REL * np.abs(mean), 0.0, 1.0 / (std + eps))
    out = np.empty_like(x) if out is None else out
    (_squash_apply_par if par else _squash_apply)(x, mean, inv, clip, out)
    return out


@njit(parallel=True, **{k: v for k, v in JIT.items()})
def _log_returns(p):
    n, m = p.shape
    out = np.empty((n - 1, m))
    for i in prange(n - 1):
        for j in range(m):
            out[i, j] = math.log(p[i + 1, j] / p[i, j])
    return out


def log_returns(p: np.ndarray) -> np.ndarray:
    p2 = p.reshape(len(p), -1)
    return _log_returns(p2).reshape((len(p) - 1,) + p.shape[1:])


@njit(parallel=True, **{k: v for k, v in JIT.items()})
def _rolling(x, window, eps, what):
    """what: 0 mean, 1 std, 2 z-score; column-parallel running sums shifted by x[0]."""
    n, m = x.shape
    out = np.full((n, m), np.nan)
    for j in prange(m):
        shift = x[0, j]
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            d = x[i, j] - shift
            s1 += d
            s2 += d * d
            if i >= window:
                old = x[i - window, j] - shift
                s1 -= old
                s2 -= old * old
            if i >= window - 1:
                mean = s1 / window
                if what == 0:
                    out[i, j] = mean + shift
                    continue
                var = s2 / window - mean * mean
                if var <= DEGENERATE_VAR * (s2 / window):
                    var = 0.0
                std = math.sqrt(var)
                if what == 1:
                    out[i, j] = std
                else:
                    out[i, j] = (d - mean) / (std + eps) if std > 0.0 else 0.0
    return out


def _call_rolling(x: np.ndarray, window: int, what: int, eps: float = EPS) -> np.ndarray:
    if window > len(x):
        return np.full(x.shape, np.nan)
    return _rolling(x.reshape(len(x), -1), window, eps, what).reshape(x.shape)


def rolling_mean(x, window):
    return _call_rolling(x, window, 0)


def rolling_std(x, window):
    return _call_rolling(x, window, 1)


def rolling_zscore(x, window, eps: float = EPS):
    return _call_rolling(x, window, 2, eps)


@njit(parallel=True, **{k: v for k, v in JIT.items()})
def _ewma(x, alpha):
    n, m = x.shape
    out = np.empty((n, m))
    for j in prange(m):
        y = x[0, j]
        for i in range(n):
            y = alpha * x[i, j] + (1.0 - alpha) * y
            out[i, j] = y
    return out


def ewma(x, alpha):
    return _ewma(x.reshape(len(x), -1), alpha).reshape(x.shape)
