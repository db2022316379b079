"""Risk measures as short pure functions (empyrical style).

Conventions, for every function here:
- inputs are simple periodic returns (0.01 = +1 % over one period, usually a trading day);
- VaR, CVaR and maximum drawdown are POSITIVE LOSS FRACTIONS: a 3 % loss is 0.03 (a VaR can be
  negative when even the tail of the distribution is a gain);
- `confidence` is the VaR level (0.95, 0.99); alpha = 1 - confidence is the tail probability;
- NaN values in a return series are dropped; an empty series (or all NaN) gives NaN;
- bad input (strings, wrong shapes, a confidence outside (0, 1), an unknown method) raises
  ValueError with a message, never something obscure.

Methods of `value_at_risk` / `conditional_value_at_risk`:
- "historical": VaR = -percentile(r, 100 alpha) with numpy's default linear interpolation;
  CVaR = -mean(r[r <= that percentile]).
- "parametric": Gaussian with the sample standard deviation (ddof=1): VaR = -(mu + z sd),
  CVaR = -(mu - sd pdf(z) / alpha), z = Phi^-1(alpha).
- "cornish_fisher": z replaced by the Cornish-Fisher expansion
  z_cf = z + (z^2-1) S/6 + (z^3-3z) K/24 - (2z^3-5z) S^2/36 with S, K the sample skewness and
  excess kurtosis (scipy.stats skew / kurtosis, bias=False). CVaR integrates the expanded
  quantile over the tail: CVaR = -(mu + sd/alpha * integral_0^alpha z_cf(Phi^-1(u)) du). With
  x = Phi^-1(u) the integral is integral_{-inf}^{z} z_cf(x) phi(x) dx, which the truncated
  normal moments give in closed form (see `_cf_tail_mean`):
      phi(z) * (-1 - S z/6 + K (1 - z^2)/24 - S^2 (1 - 2 z^2)/36).
  The expansion is only monotone for moderate S, K (roughly |S| < 1, 0 <= K < 6); outside
  that the figure is still computed as defined but is unreliable.
- "monte_carlo": see `monte_carlo_var_cvar`: seeded scenarios of FULL asset return vectors
  (multivariate Student-t fitted to the history, or a bootstrap of historical rows), each
  position revalued; VaR / CVaR then follow the historical convention on the simulated P&L.

Annualisation constants live in PERIODS_PER_YEAR (empyrical's periods.py idea).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from scipy import special, stats
from scipy.linalg import blas

PERIODS_PER_YEAR = {"daily": 252, "weekly": 52, "monthly": 12}
METHODS = ("historical", "parametric", "cornish_fisher", "monte_carlo")
MC_DISTRIBUTIONS = ("student_t", "bootstrap")
MC_CHUNK_ROWS = 8192               # scenarios generated at once (memory ~ rows x assets x 8 B)
MC_MAX_SCENARIOS = 5_000_000
# BLAS threads during the simulation. One: 100,000 x 500 scenarios took 470 ms CPU = wall on
# one thread against 970 ms CPU with two (OpenBLAS threads spin between the chunks' calls),
# and on this shared 2-core machine two threads were also slower in wall time (3.8 s vs
# 2.1 s at load 10): they wait for each other to be scheduled.
MC_BLAS_THREADS = 1
_NU_RANGE = (3.0, 200.0)           # fitted Student-t degrees of freedom are clipped to this


# ---- validation ----------------------------------------------------------------------
def _as_float_array(values, name: str = "returns", ndim: int | None = 1) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        if ndim == 1 and arr.ndim == 0:
            arr = arr.reshape(1)
        else:
            raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _returns(returns) -> np.ndarray:
    """A 1-D float array of returns with NaN dropped."""
    arr = _as_float_array(returns)
    return arr[~np.isnan(arr)]


def _alpha(confidence) -> float:
    try:
        c = float(confidence)
    except (TypeError, ValueError):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}") from None
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return 1.0 - c


def _method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown VaR method {method!r}; expected one of {METHODS}")
    return method


# ---- one series ----------------------------------------------------------------------
def historical_var_cvar(returns, confidence: float = 0.95) -> tuple[float, float]:
    """(VaR, CVaR) of a return series by the historical convention; positive = loss."""
    r, alpha = _returns(returns), _alpha(confidence)
    if r.size == 0:
        return math.nan, math.nan
    q = float(np.percentile(r, 100.0 * alpha))
    return -q, -float(r[r <= q].mean())


def parametric_var_cvar(returns, confidence: float = 0.95) -> tuple[float, float]:
    """(VaR, CVaR) under a Gaussian fitted with ddof=1; NaN with fewer than 2 points."""
    r, alpha = _returns(returns), _alpha(confidence)
    if r.size < 2:
        return math.nan, math.nan
    mu, sd = float(r.mean()), float(r.std(ddof=1))
    z = special.ndtri(alpha)
    return -(mu + z * sd), -(mu - sd * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / alpha)


def _cf_quantile(z: float, s: float, k: float) -> float:
    return z + (z * z - 1) * s / 6 + (z ** 3 - 3 * z) * k / 24 - (2 * z ** 3 - 5 * z) * s * s / 36


def _cf_tail_mean(z: float, s: float, k: float, alpha: float) -> float:
    """(1/alpha) * integral_{-inf}^{z} z_cf(x) phi(x) dx, from the truncated normal moments
    int x phi = -phi(z), int x^2 phi = Phi(z) - z phi(z), int x^3 phi = -(z^2 + 2) phi(z)."""
    phi = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return phi * (-1 - s * z / 6 + k * (1 - z * z) / 24 - s * s * (1 - 2 * z * z) / 36) / alpha


def _skew_kurt(r: np.ndarray) -> tuple[float, float]:
    if r.size < 4 or np.ptp(r) == 0:   # bias-corrected moments need n >= 4 and spread
        return 0.0, 0.0
    return float(stats.skew(r, bias=False)), float(stats.kurtosis(r, bias=False))


def cornish_fisher_var_cvar(returns, confidence: float = 0.95) -> tuple[float, float]:
    """(VaR, CVaR) with the Cornish-Fisher quantile (see module docstring); NaN below 2 points.
    Fewer than 4 points or a constant series: S = K = 0, i.e. the parametric figures."""
    r, alpha = _returns(returns), _alpha(confidence)
    if r.size < 2:
        return math.nan, math.nan
    mu, sd = float(r.mean()), float(r.std(ddof=1))
    s, k = _skew_kurt(r)
    z = float(special.ndtri(alpha))
    return -(mu + _cf_quantile(z, s, k) * sd), -(mu + sd * _cf_tail_mean(z, s, k, alpha))


def value_at_risk(returns, confidence: float = 0.95, method: str = "historical",
                  **mc_options) -> float:
    """Value at risk of `returns` as a positive loss fraction of the capital.

    `returns` is 1-D (one asset or a portfolio's returns). For "monte_carlo" it may also be a
    2-D (periods x assets) matrix with `weights=` (fractions of capital per asset); a 1-D
    series is simulated as a one-asset portfolio. `mc_options` go to `monte_carlo_var_cvar`.
    """
    return _var_cvar(returns, confidence, method, mc_options)[0]


def conditional_value_at_risk(returns, confidence: float = 0.95, method: str = "historical",
                              **mc_options) -> float:
    """Expected shortfall (mean loss beyond the VaR) as a positive loss fraction; as
    `value_at_risk` for arguments and methods."""
    return _var_cvar(returns, confidence, method, mc_options)[1]


def _var_cvar(returns, confidence, method, mc_options) -> tuple[float, float]:
    method = _method(method)
    if method == "monte_carlo":
        arr = _as_float_array(returns, ndim=None)
        if arr.ndim == 1:
            arr = arr[~np.isnan(arr)].reshape(-1, 1)
            mc_options.setdefault("weights", [1.0])
        result = monte_carlo_var_cvar(arr, mc_options.pop("weights", None), confidence, **mc_options)
        return result["var"], result["cvar"]
    if mc_options:
        raise ValueError(f"options {sorted(mc_options)} only apply to method='monte_carlo'")
    fn = {"historical": historical_var_cvar, "parametric": parametric_var_cvar,
          "cornish_fisher": cornish_fisher_var_cvar}[method]
    return fn(returns, confidence)


def drawdown_series(returns) -> np.ndarray:
    """Drawdown after each period as a positive fraction of the running peak of compounded
    wealth (starting capital 1 counts as a peak); 0 at a new high. NaN returns are dropped."""
    r = _returns(returns)
    wealth = np.cumprod(1.0 + r)
    peak = np.maximum.accumulate(np.maximum(wealth, 1.0))
    return 1.0 - wealth / peak


def max_drawdown(returns) -> float:
    """Largest peak-to-trough fall of compounded wealth, a positive fraction (0.2 = -20 %);
    the starting capital counts as a peak, so a first-day loss is a drawdown. NaN if empty."""
    dd = drawdown_series(returns)
    return float(dd.max()) if dd.size else math.nan


def annualized_volatility(returns, period: str = "daily") -> float:
    """Sample standard deviation (ddof=1) scaled by sqrt(periods per year); NaN below 2 points."""
    if period not in PERIODS_PER_YEAR:
        raise ValueError(f"period must be one of {sorted(PERIODS_PER_YEAR)}, got {period!r}")
    r = _returns(returns)
    return float(r.std(ddof=1) * math.sqrt(PERIODS_PER_YEAR[period])) if r.size > 1 else math.nan


# ---- many assets at once (the benchmark's path; no NaN handling: clean input only) -----
def _matrix(returns) -> np.ndarray:
    arr = _as_float_array(returns, "returns", ndim=2)
    if np.isnan(arr).any():
        raise ValueError("the vectorized functions need returns without NaN; drop or fill them")
    return arr


def historical_var_cvar_columns(returns, confidences: Sequence[float] = (0.95, 0.99)) -> dict:
    """Historical VaR and CVaR of every column of a (periods x assets) matrix, for several
    confidences with ONE np.partition call: {confidence: (var[assets], cvar[assets])}.

    The sorted positions that linear interpolation needs are partitioned into place; every
    value left of the lower one is <= the percentile, so the tail sum needs no full sort.
    Values equal to the percentile right of it (ties) are added where they can exist."""
    R = _matrix(returns)
    n = R.shape[0]
    out: dict = {}
    if n == 0:
        nan = np.full(R.shape[1], np.nan)
        return {c: (nan, nan.copy()) for c in confidences}
    plan = []
    for c in confidences:
        pos = (n - 1) * _alpha(c)
        lo = int(math.floor(pos))
        plan.append((c, lo, min(lo + 1, n - 1), pos - lo))
    kth = sorted({k for _, lo, hi, _ in plan for k in (lo, hi)})
    part = np.partition(R, kth, axis=0)
    csum = None
    for c, lo, hi, frac in plan:
        q = part[lo] + frac * (part[hi] - part[lo])
        if csum is None or csum[0] != lo:
            csum = (lo, part[:lo + 1].sum(axis=0))
        tail_sum, count = csum[1].copy(), np.full(R.shape[1], lo + 1.0)
        tie_cols = np.nonzero(part[hi] <= q)[0] if hi > lo else np.arange(R.shape[1])
        for j in tie_cols:           # rare: only where a sorted neighbour equals the percentile
            rest = part[lo + 1:, j]
            ties = rest[rest <= q[j]]
            tail_sum[j] += ties.sum()
            count[j] += ties.size
        out[c] = (-q, -tail_sum / count)
    return out


def parametric_var_cvar_columns(returns, confidences: Sequence[float] = (0.95, 0.99)) -> dict:
    """Gaussian (ddof=1) VaR and CVaR of every column: {confidence: (var, cvar)}."""
    R = _matrix(returns)
    mu = R.mean(axis=0)
    sd = R.std(axis=0, ddof=1) if R.shape[0] > 1 else np.full(R.shape[1], np.nan)
    out = {}
    for c in confidences:
        alpha = _alpha(c)
        z = special.ndtri(alpha)
        pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        out[c] = (-(mu + z * sd), -(mu - sd * pdf / alpha))
    return out


def max_drawdown_columns(returns) -> np.ndarray:
    """Geometric maximum drawdown of every column (positive fractions); NaN when empty."""
    R = _matrix(returns)
    if R.shape[0] == 0:
        return np.full(R.shape[1], np.nan)
    wealth = np.cumprod(1.0 + R, axis=0)
    peak = np.maximum.accumulate(np.maximum(wealth, 1.0), axis=0)
    return (1.0 - wealth / peak).max(axis=0)


# ---- portfolios ----------------------------------------------------------------------
def _positions(values, n_assets: int, name: str = "positions") -> np.ndarray:
    v = _as_float_array(values, name)
    if v.shape != (n_assets,):
        raise ValueError(f"{name} must have one value per asset ({n_assets}), got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError(f"{name} contain NaN")
    return v


def portfolio_var(position_values, asset_returns, confidence: float = 0.95) -> dict:
    """Portfolio VaR / CVaR in CURRENCY (positive = loss) with marginal and component VaR.

    position_values: signed currency value per asset (short < 0); asset_returns: (periods x
    assets) simple returns, rows with NaN dropped. Parametric figures use the sample mean and
    covariance (ddof=1); marginal VaR_i = dVaR/dv_i = -(mu_i + z (Cov v)_i / sd_p), component
    VaR_i = v_i * marginal VaR_i, and the components sum to the parametric VaR (Euler).
    Historical VaR / CVaR come from the P&L series R @ v; component CVaR_i = -mean of v_i r_i
    over the tail periods, which sums to the historical CVaR.
    """
    R = _as_float_array(asset_returns, "asset_returns", ndim=2)
    R = R[~np.isnan(R).any(axis=1)]
    v = _positions(position_values, R.shape[1])
    alpha = _alpha(confidence)
    nan = np.full(v.shape, np.nan)
    if R.shape[0] < 2:
        return {"var": math.nan, "cvar": math.nan, "historical_var": math.nan,
                "historical_cvar": math.nan, "marginal_var": nan, "component_var": nan.copy(),
                "component_cvar": nan.copy()}
    mu = R.mean(axis=0)
    cov = np.atleast_2d(np.cov(R, rowvar=False, ddof=1))
    z = float(special.ndtri(alpha))
    sd_p = math.sqrt(max(float(v @ cov @ v), 0.0))
    var = -(float(mu @ v) + z * sd_p)
    cvar = -(float(mu @ v) - sd_p * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / alpha)
    marginal = -(mu + z * (cov @ v) / sd_p) if sd_p > 0 else -mu.copy()
    pnl = R @ v
    q = float(np.percentile(pnl, 100 * alpha))
    tail = pnl <= q
    return {"var": var, "cvar": cvar, "historical_var": -q,
            "historical_cvar": -float(pnl[tail].mean()), "marginal_var": marginal,
            "component_var": v * marginal, "component_cvar": -(R[tail] * v).mean(axis=0)}


def fit_student_t(asset_returns) -> dict:
    """Multivariate Student-t by moments: mean, covariance (ddof=1), and degrees of freedom
    nu = 4 + 6 / K from the average excess kurtosis K of the columns (a t with nu > 4 has
    excess kurtosis 6 / (nu - 4)), clipped to _NU_RANGE; K <= 0 gives the upper clip (close to
    Gaussian). The scale matrix is cov * (nu - 2) / nu so the fitted covariance is kept."""
    R = _as_float_array(asset_returns, "asset_returns", ndim=2)
    R = R[~np.isnan(R).any(axis=1)]
    if R.shape[0] < 5:
        raise ValueError(f"need at least 5 periods of returns to fit, got {R.shape[0]}")
    mu = R.mean(axis=0)
    cov = np.atleast_2d(np.cov(R, rowvar=False, ddof=1))
    with np.errstate(all="ignore"):
        kurt = stats.kurtosis(R, axis=0, bias=False)
    kurt = float(np.nanmean(kurt)) if np.isfinite(kurt).any() else 0.0
    nu = _NU_RANGE[1] if kurt <= 6 / (_NU_RANGE[1] - 4) else 4 + 6 / kurt
    nu = float(min(max(nu, _NU_RANGE[0]), _NU_RANGE[1]))
    return {"mean": mu, "cov": cov, "nu": nu, "scale": cov * (nu - 2) / nu}


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (numpy's and scipy's), built once."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def _cholesky(matrix: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = matrix. A positive semi-definite matrix (collinear
    assets, where Cholesky fails) is factored as V V^T from its eigen-decomposition with
    rounding-negative eigenvalues set to zero, then made triangular by a QR of V^T
    (V^T = Q R gives V V^T = R^T R)."""
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        w, vecs = np.linalg.eigh(matrix)
        r = np.linalg.qr((vecs * np.sqrt(np.clip(w, 0.0, None))).T, mode="r")
        return r.T


def _scenarios(rng, R: np.ndarray, fit: dict | None, chol, rows: int) -> np.ndarray:
    """`rows` full asset-return vectors: Student-t or bootstrap rows.

    Student-t: mean + s * L z with z standard normal and s = sqrt(nu / chi2(nu)) drawn per
    scenario, using antithetic variates: the first half of the rows uses L z, the second
    half -L z (each with its own s), a standard variance reduction (Glasserman, Monte Carlo
    Methods in Financial Engineering, 4.2) that halves the normal draws and the matrix
    product. The draws are float32: half the time of float64, with rounding (1e-7 relative)
    far below the sampling error."""
    if fit is None:
        return R[rng.integers(0, R.shape[0], rows)]
    half = (rows + 1) // 2
    z = rng.standard_normal((half, R.shape[1]), dtype=np.float32)
    # correlate: z @ L.T computed as L @ z.T by BLAS trmm, in place on z's memory (z.T is
    # Fortran-ordered, so no copy): a triangular product costs half a general one
    shocks = blas.strmm(1.0, chol, z.T, side=0, lower=1, trans_a=0, overwrite_b=1).T
    scale = np.sqrt(fit["nu"] / rng.chisquare(fit["nu"], 2 * half)).astype(np.float32)
    out = np.empty((2 * half, R.shape[1]), dtype=np.float32)
    np.multiply(shocks, scale[:half, None], out=out[:half])
    np.multiply(shocks, -scale[half:, None], out=out[half:])
    out += fit["mean32"]
    return out[:rows]


def monte_carlo_var_cvar(asset_returns, weights, confidence: float = 0.95,
                         n_scenarios: int = 100_000, seed: int = 0,
                         distribution: str = "student_t",
                         confidences: Sequence[float] | None = None,
                         components: bool = False) -> dict:
    """Monte Carlo VaR / CVaR of a portfolio, as loss fractions of the capital when `weights`
    are fractions of capital (currency when they are currency values).

    Each of `n_scenarios` scenarios draws a full vector of asset returns: from a multivariate
    Student-t fitted to `asset_returns` (`fit_student_t`), or a bootstrap of whole historical
    rows (cross-asset dependence kept); every position is revalued (P&L = scenario @ weights)
    and VaR / CVaR follow the historical convention on the simulated P&L. The same seed gives
    the same figures. Returns {"var", "cvar", "by_confidence": {c: (var, cvar)} for
    `confidences` and `confidence`, "nu"} and, with components=True, "component_cvar": each
    position's mean loss over the tail scenarios (summing to cvar at `confidence`).
    """
    R = _as_float_array(asset_returns, "asset_returns", ndim=2)
    R = R[~np.isnan(R).any(axis=1)]
    w = _positions(weights, R.shape[1], "weights")
    if distribution not in MC_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {MC_DISTRIBUTIONS}, got {distribution!r}")
    if isinstance(n_scenarios, bool) or not isinstance(n_scenarios, (int, np.integer)) \
            or not 100 <= n_scenarios <= MC_MAX_SCENARIOS:
        raise ValueError(f"n_scenarios must be an integer in [100, {MC_MAX_SCENARIOS}], got {n_scenarios!r}")
    levels = list(confidences or []) + [confidence]
    for c in levels:
        _alpha(c)
    if R.shape[0] < 5:
        return {"var": math.nan, "cvar": math.nan, "nu": math.nan,
                "by_confidence": {c: (math.nan, math.nan) for c in levels},
                "component_cvar": np.full(w.shape, np.nan)}
    chol = None
    # the fit and its factor under the same single BLAS thread as the simulation: with fewer
    # periods than assets the covariance is singular, and the eigen-decomposition fallback of
    # _cholesky then depends on the thread count (the same seed must give the same figures)
    with _blas_controller().limit(limits=MC_BLAS_THREADS, user_api="blas"):
        fit = fit_student_t(R) if distribution == "student_t" else None
        if fit:
            fit["mean32"] = fit["mean"].astype(np.float32)
            chol = np.asfortranarray(_cholesky(fit["scale"]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    pnl = np.empty(n_scenarios)
    w_sim = w.astype(np.float32) if fit else w
    with _blas_controller().limit(limits=MC_BLAS_THREADS, user_api="blas"):
        for start in range(0, n_scenarios, MC_CHUNK_ROWS):
            rows = min(MC_CHUNK_ROWS, n_scenarios - start)
            pnl[start:start + rows] = _scenarios(rng, R, fit, chol, rows) @ w_sim
    by_conf = {}
    for c in levels:
        q = float(np.percentile(pnl, 100 * _alpha(c)))
        by_conf[c] = (-q, -float(pnl[pnl <= q].mean()))
    var, cvar = by_conf[confidence]
    out = {"var": var, "cvar": cvar, "by_confidence": by_conf,
           "nu": fit["nu"] if fit else math.nan}
    if components:
        with _blas_controller().limit(limits=MC_BLAS_THREADS, user_api="blas"):
            out["component_cvar"] = _mc_component_cvar(R, w, fit, chol, seed, n_scenarios, -var)
    return out


def _mc_component_cvar(R, w, fit, chol, seed, n_scenarios, threshold) -> np.ndarray:
    """Per-position mean loss over the scenarios whose P&L is <= the VaR threshold. The
    scenarios are regenerated from the same seed: cheaper than keeping scenarios x assets."""
    rng = np.random.default_rng(seed)
    total, count = np.zeros(w.shape), 0
    for start in range(0, n_scenarios, MC_CHUNK_ROWS):
        rows = min(MC_CHUNK_ROWS, n_scenarios - start)
        scenarios = _scenarios(rng, R, fit, chol, rows)
        tail = scenarios @ (w.astype(scenarios.dtype)) <= threshold
        total += (scenarios[tail].astype(float) * w).sum(axis=0)
        count += int(tail.sum())
    return -total / count if count else np.full(w.shape, np.nan)


# ---- concentration -------------------------------------------------------------------
def concentration(position_values, top_n: int = 5) -> dict:
    """Weights |v_i| / sum |v| (gross exposure), Herfindahl-Hirschman index sum w^2 (1/n for
    equal weights, 1 for one position), effective number of positions 1 / HHI, and the share
    of the `top_n` largest weights. No exposure: empty weights and NaN figures."""
    v = _as_float_array(position_values, "position_values")
    if np.isnan(v).any():
        raise ValueError("position_values contain NaN")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    gross = float(np.abs(v).sum())
    if gross == 0:
        return {"weights": np.zeros(v.shape), "hhi": math.nan, "effective_n": math.nan,
                "top_n_share": math.nan, "top_n": top_n}
    w = np.abs(v) / gross
    hhi = float((w * w).sum())
    return {"weights": w, "hhi": hhi, "effective_n": 1.0 / hhi,
            "top_n_share": float(np.sort(w)[::-1][:top_n].sum()), "top_n": top_n}


# ---- model risk ----------------------------------------------------------------------
def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) without trials."""
    if trials <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be within [0, trials], got {successes}/{trials}")
    z = float(special.ndtri(1 - _alpha(confidence) / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return centre - half, centre + half


def model_risk(predictions, realized, window: int = 5000, n_bootstrap: int = 200,
               seed: int = 0, bins: int = 10) -> dict:
    """Out-of-sample quality of a return forecast against what happened next.

    predictions / realized: paired 1-D arrays (predicted and realized next-period returns),
    oldest first; the last `window` pairs are used, pairs with NaN dropped.
    - hit_rate: share of pairs with a non-zero prediction and realization whose signs agree,
      with its Wilson 95 % interval (hit_low, hit_high); hits / trials;
    - ic: Pearson correlation of prediction and realization (information coefficient);
    - calibration_slope: least-squares slope of realized on predicted (1 = calibrated);
      calibration_error: mean |mean realized - mean predicted| over `bins` prediction
      quantile bins, in return units;
    - uncertainty: bootstrap standard deviation of the slope (the spread of an ensemble of
      `n_bootstrap` resampled fits), in slope units;
    - confidence: fraction of the bootstrap ensemble with a positive slope, i.e. how sure we
      are that the forecast carries signal (0.5 = a coin flip, 1 = every refit agrees).
    Fewer than 10 usable pairs: the figures are NaN and n says how many there were.
    """
    p = _as_float_array(predictions, "predictions")
    y = _as_float_array(realized, "realized")
    if p.shape != y.shape:
        raise ValueError(f"predictions and realized must pair up, got {p.shape} and {y.shape}")
    keep = ~(np.isnan(p) | np.isnan(y))
    p, y = p[keep][-window:], y[keep][-window:]
    out = {"n": int(p.size), "hit_rate": math.nan, "hit_low": math.nan, "hit_high": math.nan,
           "hits": 0, "trials": 0, "ic": math.nan, "calibration_slope": math.nan,
           "calibration_error": math.nan, "uncertainty": math.nan, "confidence": math.nan}
    if p.size < 10:
        return out
    signed = (p != 0) & (y != 0)
    hits, trials = int((np.sign(p[signed]) == np.sign(y[signed])).sum()), int(signed.sum())
    low, high = wilson_interval(hits, trials)
    out.update(hits=hits, trials=trials, hit_rate=hits / trials if trials else math.nan,
               hit_low=low, hit_high=high)
    if np.ptp(p) == 0:                 # a constant forecast has no slope and no ranking
        return out
    out["ic"] = float(np.corrcoef(p, y)[0, 1]) if np.ptp(y) > 0 else math.nan
    out["calibration_slope"] = _slope(p, y)
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, p.size))
    out["calibration_error"] = float(np.mean([abs(y[g].mean() - p[g].mean()) for g in groups]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p.size, (n_bootstrap, p.size))
    slopes = _slope_rows(p[idx], y[idx])
    slopes = slopes[np.isfinite(slopes)]
    if slopes.size:
        out["uncertainty"] = float(slopes.std(ddof=1)) if slopes.size > 1 else 0.0
        out["confidence"] = float((slopes > 0).mean())
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def _slope_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * (y - y.mean(axis=1, keepdims=True))).sum(axis=1) / (xc * xc).sum(axis=1)
