"""core.risk and core.risk_kernels: textbook cases, an independent scipy/pandas reference,
edge cases, Monte Carlo reproducibility and convergence, decompositions, concentration."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from core import risk
from core.risk_kernels import column_risk

RNG = np.random.default_rng(20240611)
FAT = RNG.standard_t(4, 1500) * 0.01 + 0.0003           # fat tails, slight drift
SKEWED = RNG.lognormal(0, 0.5, 800) * 0.01 - 0.012      # right-skewed


# ---- independent references (scipy / pandas, written from the definitions) --------------
def ref_historical(r, c):
    s = pd.Series(r)
    q = s.quantile(1 - c)                               # pandas' default is linear too
    return -q, -s[s <= q].mean()


def ref_parametric(r, c):
    mu, sd = np.mean(r), np.std(r, ddof=1)
    dist = stats.norm(mu, sd)
    var = -dist.ppf(1 - c)
    # CVaR: the conditional mean below the quantile, by numerical integration
    tail, _ = integrate.quad(lambda x: x * dist.pdf(x), -np.inf, -var)
    return var, -tail / (1 - c)


def ref_cornish_fisher(r, c):
    mu, sd = np.mean(r), np.std(r, ddof=1)
    s, k = stats.skew(r, bias=False), stats.kurtosis(r, bias=False)
    cf = lambda z: z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    alpha = 1 - c
    var = -(mu + cf(stats.norm.ppf(alpha)) * sd)
    tail, _ = integrate.quad(lambda u: cf(stats.norm.ppf(u)), 0, alpha, limit=200)
    return var, -(mu + sd * tail / alpha)


def ref_max_drawdown(r):
    wealth = pd.Series(np.concatenate([[1.0], np.cumprod(1 + np.asarray(r))]))
    return float((1 - wealth / wealth.cummax()).max())


# ---- textbook cases ----------------------------------------------------------------------
def test_historical_var_of_one_to_hundred_percent_losses_is_the_interpolated_fifth_percentile():
    r = -np.arange(1, 101) / 100.0                       # losses of 1 % .. 100 %
    var, cvar = risk.historical_var_cvar(r, 0.95)
    assert var == pytest.approx(0.9505)                  # linear: between 0.95 and 0.96
    assert cvar == pytest.approx(np.mean(np.arange(96, 101)) / 100)


def test_parametric_var_of_standard_normal_is_1_645_and_cvar_2_063():
    r = stats.norm.ppf(np.linspace(0.0005, 0.9995, 2000))
    r = (r - r.mean()) / r.std(ddof=1)                   # exactly mean 0, sd 1
    var, cvar = risk.parametric_var_cvar(r, 0.95)
    assert var == pytest.approx(1.6448536, abs=1e-6)
    assert cvar == pytest.approx(2.0627128, abs=1e-6)
    assert risk.value_at_risk(r, 0.99, "parametric") == pytest.approx(2.3263479, abs=1e-6)


def test_cornish_fisher_equals_parametric_for_symmetric_mesokurtic_data():
    r = np.array([-2.0, -1.0, 0.0, 1.0, 2.0] * 3 + [-1.0, 1.0] * 6) / 100
    s, k = stats.skew(r, bias=False), stats.kurtosis(r, bias=False)
    assert abs(s) < 1e-12 and k != 0
    # with S = 0 only the kurtosis term acts: check against the formula by hand
    z = stats.norm.ppf(0.05)
    expected = -(r.mean() + (z + (z**3 - 3 * z) * k / 24) * r.std(ddof=1))
    assert risk.value_at_risk(r, 0.95, "cornish_fisher") == pytest.approx(expected)


def test_max_drawdown_is_geometric_and_counts_the_start_as_a_peak():
    assert risk.max_drawdown([-0.1]) == pytest.approx(0.1)            # first day loss
    assert risk.max_drawdown([0.1, -0.5, 0.2]) == pytest.approx(0.5)
    assert risk.max_drawdown([-0.5, 1.0, -0.5]) == pytest.approx(0.5)  # not 1.0 arithmetic
    assert risk.max_drawdown([0.01, 0.02]) == 0.0


# ---- against the independent references ------------------------------------------------------
@pytest.mark.parametrize("data", [FAT, SKEWED], ids=["fat_tails", "skewed"])
@pytest.mark.parametrize("c", [0.95, 0.99])
def test_every_closed_form_method_matches_the_scipy_reference(data, c):
    for method, ref in (("historical", ref_historical), ("parametric", ref_parametric),
                        ("cornish_fisher", ref_cornish_fisher)):
        var, cvar = ref(data, c)
        assert risk.value_at_risk(data, c, method) == pytest.approx(var, rel=1e-9), method
        assert risk.conditional_value_at_risk(data, c, method) == pytest.approx(cvar, rel=1e-6), method


def test_max_drawdown_matches_pandas_reference():
    assert risk.max_drawdown(FAT) == pytest.approx(ref_max_drawdown(FAT))


def test_cvar_is_at_least_var_for_every_method():
    for method in ("historical", "parametric", "cornish_fisher"):
        for c in (0.95, 0.99):
            assert risk.conditional_value_at_risk(FAT, c, method) >= risk.value_at_risk(FAT, c, method)


# ---- edge cases --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["historical", "parametric", "cornish_fisher", "monte_carlo"])
def test_empty_and_all_nan_input_give_nan(method):
    assert math.isnan(risk.value_at_risk([], 0.95, method))
    assert math.isnan(risk.conditional_value_at_risk([np.nan, np.nan], 0.95, method))
    assert math.isnan(risk.max_drawdown([]))


def test_single_value_historical_is_that_loss_and_parametric_is_nan():
    assert risk.value_at_risk([-0.02], 0.95) == pytest.approx(0.02)
    assert risk.conditional_value_at_risk([-0.02], 0.99) == pytest.approx(0.02)
    assert math.isnan(risk.value_at_risk([-0.02], 0.95, "parametric"))
    assert math.isnan(risk.value_at_risk([-0.02], 0.95, "cornish_fisher"))


def test_constant_returns_give_minus_that_return_for_every_closed_form_method():
    r = np.full(50, 0.001)
    for method in ("historical", "parametric", "cornish_fisher"):
        assert risk.value_at_risk(r, 0.99, method) == pytest.approx(-0.001), method
        assert risk.conditional_value_at_risk(r, 0.99, method) == pytest.approx(-0.001), method
    assert risk.max_drawdown(r) == 0.0


def test_nan_values_are_dropped_not_propagated():
    with_nan = np.concatenate([FAT[:300], [np.nan], FAT[300:600]])
    clean = np.concatenate([FAT[:300], FAT[300:600]])
    for method in ("historical", "parametric", "cornish_fisher"):
        assert risk.value_at_risk(with_nan, 0.95, method) == risk.value_at_risk(clean, 0.95, method)
    assert risk.max_drawdown(with_nan) == risk.max_drawdown(clean)


@pytest.mark.parametrize("bad, message", [
    (dict(returns=["a", "b"]), "numbers"), (dict(returns=[[0.1, 0.2]]), "1-dimensional"),
    (dict(returns=[0.1, np.inf]), "infinite"), (dict(confidence=1.0), "confidence"),
    (dict(confidence="x"), "confidence"), (dict(method="garch"), "unknown VaR method"),
    (dict(n_scenarios=1000), "only apply"),
])
def test_bad_input_raises_value_error_with_a_message(bad, message):
    args = dict(returns=FAT[:100], confidence=0.95, method="historical") | bad
    with pytest.raises(ValueError, match=message):
        risk.value_at_risk(**args)


# ---- vectorized versions and the numba kernel -------------------------------------------------
def test_column_functions_and_kernel_equal_the_one_series_functions_per_column():
    R = np.column_stack([FAT[:700], SKEWED[:700], RNG.normal(0, 0.02, 700),
                         np.round(RNG.normal(0, 2, 700)) / 100])   # last: many ties
    hist = risk.historical_var_cvar_columns(R)
    para = risk.parametric_var_cvar_columns(R)
    mdd = risk.max_drawdown_columns(R)
    fast = column_risk(R)
    for j in range(R.shape[1]):
        for c in (0.95, 0.99):
            h = risk.historical_var_cvar(R[:, j], c)
            p = risk.parametric_var_cvar(R[:, j], c)
            np.testing.assert_allclose([hist[c][0][j], hist[c][1][j]], h, rtol=1e-12)
            np.testing.assert_allclose([fast["historical"][c][0][j], fast["historical"][c][1][j]], h,
                                       rtol=1e-12)
            np.testing.assert_allclose([para[c][0][j], para[c][1][j]], p, rtol=1e-12)
            np.testing.assert_allclose([fast["parametric"][c][0][j], fast["parametric"][c][1][j]],
                                       p, rtol=1e-9)
        assert mdd[j] == pytest.approx(risk.max_drawdown(R[:, j]), rel=1e-12)
        assert fast["max_drawdown"][j] == pytest.approx(risk.max_drawdown(R[:, j]), rel=1e-12)


def test_kernel_falls_back_to_whole_columns_when_the_cutoff_misses_the_tail():
    # a column whose early rows are calm and whose losses come late: the sampled cut-off
    # is far too tight, and a column of exact ties at the percentile
    late_crash = np.concatenate([RNG.normal(0, 1e-4, 900), RNG.normal(-0.05, 0.01, 100)])
    ties = np.concatenate([np.full(950, -0.01), np.full(50, 0.02)])
    R = np.column_stack([late_crash, ties])
    fast = column_risk(R)
    for j in range(2):
        for c in (0.95, 0.99):
            np.testing.assert_allclose([fast["historical"][c][0][j], fast["historical"][c][1][j]],
                                       risk.historical_var_cvar(R[:, j], c), rtol=1e-12)


def test_kernel_rejects_nan_and_too_few_periods():
    with pytest.raises(ValueError, match="finite"):
        column_risk(np.array([[0.1, np.nan], [0.2, 0.1]]))
    with pytest.raises(ValueError, match="periods >= 2"):
        column_risk(np.zeros((1, 3)))


# ---- Monte Carlo -----------------------------------------------------------------------------
def _gaussian_assets(n=3000, seed=5):
    rng = np.random.default_rng(seed)
    cov = np.array([[4, 1.2, 0.5], [1.2, 2.25, 0.3], [0.5, 0.3, 1.0]]) * 1e-4
    return rng.multivariate_normal([0.0005, 0.0002, 0.0001], cov, n), cov


def test_monte_carlo_is_reproducible_with_its_seed_and_changes_without_it():
    R, _ = _gaussian_assets()
    w = np.array([0.5, 0.3, 0.2])
    a = risk.monte_carlo_var_cvar(R, w, 0.99, n_scenarios=20_000, seed=11)
    b = risk.monte_carlo_var_cvar(R, w, 0.99, n_scenarios=20_000, seed=11)
    c = risk.monte_carlo_var_cvar(R, w, 0.99, n_scenarios=20_000, seed=12)
    assert (a["var"], a["cvar"]) == (b["var"], b["cvar"])
    assert a["var"] != c["var"]


@pytest.mark.parametrize("distribution", ["student_t", "bootstrap"])
def test_monte_carlo_converges_to_parametric_for_gaussian_data(distribution):
    R, _ = _gaussian_assets(n=6000)
    w = np.array([0.5, 0.3, 0.2])
    param = risk.parametric_var_cvar(R @ w, 0.99)
    mc = risk.monte_carlo_var_cvar(R, w, 0.99, n_scenarios=200_000, seed=3,
                                   distribution=distribution)
    assert mc["var"] == pytest.approx(param[0], rel=0.03)
    assert mc["cvar"] == pytest.approx(param[1], rel=0.03)
    if distribution == "student_t":
        assert mc["nu"] > 30                            # Gaussian data: a near-normal t


def test_monte_carlo_fitted_t_has_fat_tails_for_t_data():
    R = np.random.default_rng(2).standard_t(4, (4000, 4)) * 0.01
    fit = risk.fit_student_t(R)
    assert 3 <= fit["nu"] <= 8
    np.testing.assert_allclose(fit["cov"], np.cov(R, rowvar=False), rtol=1e-12)


def test_monte_carlo_component_cvar_sums_to_cvar_and_one_dimensional_input_works():
    R, _ = _gaussian_assets()
    w = np.array([0.5, -0.3, 0.2])
    mc = risk.monte_carlo_var_cvar(R, w, 0.95, n_scenarios=10_000, seed=1, components=True)
    # float32 scenarios: the P&L is summed in float32, the components in float64
    assert mc["component_cvar"].sum() == pytest.approx(mc["cvar"], rel=1e-5)
    one = risk.value_at_risk(R[:, 0], 0.95, "monte_carlo", n_scenarios=50_000, seed=4)
    assert one == pytest.approx(risk.value_at_risk(R[:, 0], 0.95, "parametric"), rel=0.05)


def test_monte_carlo_rejects_bad_arguments():
    R, _ = _gaussian_assets(200)
    with pytest.raises(ValueError, match="one value per asset"):
        risk.monte_carlo_var_cvar(R, [1.0, 0.0], 0.95)
    with pytest.raises(ValueError, match="n_scenarios"):
        risk.monte_carlo_var_cvar(R, [1.0, 0.0, 0.0], 0.95, n_scenarios=10)
    with pytest.raises(ValueError, match="distribution"):
        risk.monte_carlo_var_cvar(R, [1.0, 0.0, 0.0], 0.95, distribution="copula")


# ---- portfolio decomposition and concentration ---------------------------------------------------
def test_component_var_sums_to_portfolio_var_and_marginal_is_the_gradient():
    R, _ = _gaussian_assets()
    v = np.array([300_000.0, -150_000.0, 200_000.0])
    out = risk.portfolio_var(v, R, 0.95)
    assert out["component_var"].sum() == pytest.approx(out["var"], rel=1e-10)
    assert out["component_cvar"].sum() == pytest.approx(out["historical_cvar"], rel=1e-10)
    assert out["var"] == pytest.approx(risk.value_at_risk(R @ v, 0.95, "parametric"), rel=1e-10)
    assert out["historical_var"] == pytest.approx(risk.value_at_risk(R @ v, 0.95), rel=1e-12)
    h = 1.0                                             # finite-difference gradient check
    for i in range(3):
        bumped = v.copy()
        bumped[i] += h
        fd = (risk.portfolio_var(bumped, R, 0.95)["var"] - out["var"]) / h
        assert out["marginal_var"][i] == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_portfolio_var_rejects_mismatched_positions():
    R, _ = _gaussian_assets(100)
    with pytest.raises(ValueError, match="one value per asset"):
        risk.portfolio_var([1.0, 2.0], R)
    with pytest.raises(ValueError, match="NaN"):
        risk.portfolio_var([1.0, np.nan, 2.0], R)


def test_concentration_of_equal_and_single_positions():
    eq = risk.concentration([100.0] * 4, top_n=2)
    assert eq["hhi"] == pytest.approx(0.25) and eq["effective_n"] == pytest.approx(4)
    assert eq["top_n_share"] == pytest.approx(0.5)
    one = risk.concentration([0.0, -500.0, 0.0])        # a short counts by its size
    assert one["hhi"] == 1.0 and one["effective_n"] == 1.0
    np.testing.assert_allclose(one["weights"], [0, 1, 0])
    flat = risk.concentration([0.0, 0.0])
    assert math.isnan(flat["hhi"])
    with pytest.raises(ValueError, match="top_n"):
        risk.concentration([1.0], top_n=0)


def test_concentration_matches_hand_computed_hhi():
    out = risk.concentration([50.0, 30.0, 20.0], top_n=1)
    assert out["hhi"] == pytest.approx(0.25 + 0.09 + 0.04)
    assert out["effective_n"] == pytest.approx(1 / 0.38)
    assert out["top_n_share"] == pytest.approx(0.5)


# ---- model risk --------------------------------------------------------------------------------
def test_wilson_interval_matches_the_textbook_value():
    low, high = risk.wilson_interval(60, 100)
    assert (low, high) == (pytest.approx(0.5020, abs=1e-4), pytest.approx(0.6906, abs=1e-4))
    assert all(map(math.isnan, risk.wilson_interval(0, 0)))


def test_model_risk_of_a_skilled_forecast_is_confident_and_of_noise_is_not():
    rng = np.random.default_rng(9)
    pred = rng.normal(0, 1e-4, 5000)
    skilled = risk.model_risk(pred, pred + rng.normal(0, 2e-4, 5000))
    noise = risk.model_risk(pred, rng.normal(0, 2e-4, 5000))
    assert skilled["confidence"] == 1.0 and skilled["hit_low"] > 0.5
    assert skilled["calibration_slope"] == pytest.approx(1.0, abs=0.15)
    assert skilled["ic"] > 0.3
    assert noise["hit_low"] < 0.5 < noise["hit_high"]
    assert abs(noise["calibration_slope"]) < 3 * noise["uncertainty"]
    assert noise["uncertainty"] > 0


def test_model_risk_with_too_few_pairs_or_constant_forecast_degrades_gracefully():
    few = risk.model_risk([0.1, 0.2], [0.1, -0.1])
    assert few["n"] == 2 and math.isnan(few["confidence"])
    const = risk.model_risk(np.full(100, 1e-4), np.random.default_rng(1).normal(0, 1, 100))
    assert const["trials"] == 100 and math.isnan(const["confidence"])
    with pytest.raises(ValueError, match="pair up"):
        risk.model_risk([0.1, 0.2], [0.1])


def test_monte_carlo_handles_perfectly_collinear_assets():
    """Cholesky fails on a singular covariance; the triangular factor from eigen + QR is used,
    and a long-short pair of identical assets has (almost) no risk."""
    base = np.random.default_rng(8).normal(0, 0.01, 500)
    R = np.column_stack([base, base, np.random.default_rng(9).normal(0, 0.01, 500)])
    L = risk._cholesky(np.cov(R, rowvar=False))
    np.testing.assert_allclose(L @ L.T, np.cov(R, rowvar=False), atol=1e-12)
    assert np.allclose(L, np.tril(L))
    hedged = risk.monte_carlo_var_cvar(R, [1.0, -1.0, 0.0], 0.99, n_scenarios=5000, seed=1)
    alone = risk.monte_carlo_var_cvar(R, [1.0, 0.0, 0.0], 0.99, n_scenarios=5000, seed=1)
    assert abs(hedged["var"]) < 1e-3 * alone["var"]


def test_annualized_volatility_scales_by_root_periods_per_year():
    r = np.array([0.01, -0.01] * 50)
    assert risk.annualized_volatility(r) == pytest.approx(np.std(r, ddof=1) * math.sqrt(252))
    assert risk.annualized_volatility(r, "monthly") == pytest.approx(np.std(r, ddof=1) * math.sqrt(12))
    assert math.isnan(risk.annualized_volatility([0.01]))
    with pytest.raises(ValueError, match="period"):
        risk.annualized_volatility(r, "hourly")


def test_monte_carlo_does_not_depend_on_the_blas_thread_count_for_a_singular_covariance():
    """Fewer periods than assets: the covariance is singular and factored by eigen-decomposition,
    whose bits depend on the BLAS thread count unless the fit runs pinned like the simulation."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(11)
    R = rng.standard_normal((120, 400)) * 0.01 + 0.002 * rng.standard_normal((120, 1))
    w = rng.uniform(-1, 1, 400) / 400
    with threadpool_limits(1):
        one = risk.monte_carlo_var_cvar(R, w, n_scenarios=20_000, seed=5)
    with threadpool_limits(2):
        two = risk.monte_carlo_var_cvar(R, w, n_scenarios=20_000, seed=5)
    assert one["var"] == two["var"] and one["cvar"] == two["cvar"]
