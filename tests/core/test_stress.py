"""core.stress: every scenario against hand-computed figures on 2-3 asset books, the
validation matrix, CSV uploads, the exact Monte Carlo merge (against a brute force over the
full P&L vector), live portfolios from a real Redis + SQLite history, saved custom scenarios,
a property test over arbitrary parameters, and JSON safety of every result."""
from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from scipy import stats

from core import history, risk, risk_manager, schema, stress
from core.broker import PaperBroker
from core.limits import LimitConfig
from core.market import FactorModel
from core.safety import SafetyConfig
from core.stress import StressInputError

DB = 3
Z95 = stats.norm.ppf(0.05)                        # -1.6448536...
PHI95 = stats.norm.pdf(Z95)
K = math.sqrt(20 / 19)                             # ddof=1 over 20 days of +-1 patterns
DAYS = 20


def _returns() -> np.ndarray:
    """Two assets, 20 days, mean 0, uncorrelated by construction: asset A alternates +-1 %,
    asset B goes +2 %, +2 %, -2 %, -2 %: sd_A = 0.01 K, sd_B = 0.02 K, correlation 0."""
    a = np.tile([0.01, -0.01], DAYS // 2)
    b = np.tile([0.02, 0.02, -0.02, -0.02], DAYS // 4)
    return np.column_stack([a, b])


def _book(qty=(100.0, 50.0), price=(100.0, 100.0), betas=(1.5, 0.5), adv=(10_000.0, 1_000.0),
          spread=(10.0, 20.0), equity=100_000.0, returns=None, **kw) -> stress.Portfolio:
    return stress.Portfolio(symbols=("A", "B"), qty=qty, price=price, betas=betas, adv=adv,
                            half_spread_bps=spread, returns=_returns() if returns is None else returns,
                            equity=equity, source="upload", **kw)


def _run(book, kind, **params):
    return stress.run_scenario(book, {"kind": kind, "params": params})


# ---- scenario math, by hand --------------------------------------------------------------
def test_parametric_var_before_is_the_gaussian_formula_and_matches_core_risk():
    book = _book()                                   # values 10,000 and 5,000
    sd = K * math.hypot(10_000 * 0.01, 5_000 * 0.02)
    result = _run(book, "market_crash")
    assert result["var_before"] == pytest.approx(-Z95 * sd, rel=1e-12)
    assert result["cvar_before"] == pytest.approx(sd * PHI95 / 0.05, rel=1e-12)
    assert result["var_before"] == pytest.approx(risk.portfolio_var(book.values, book.returns)["var"])


def test_market_crash_passes_the_index_shock_through_each_beta():
    result = _run(_book(), "market_crash", index_shock=-0.20)
    # shocks 1.5 x -20 % = -30 % on 10,000 and 0.5 x -20 % = -10 % on 5,000
    assert [p["pnl"] for p in result["positions"]] == pytest.approx([-3000.0, -500.0])
    assert result["pnl"] == pytest.approx(-3500.0)
    assert result["pnl_pct"] == pytest.approx(-0.035)
    assert result["equity_after"] == pytest.approx(96_500.0)
    sd_after = K * math.hypot(7000 * 0.01, 4500 * 0.02)        # the revalued book
    assert result["var_after"] == pytest.approx(-Z95 * sd_after)
    assert [p["symbol"] for p in result["worst_positions"]] == ["A", "B"]


def test_market_crash_clips_a_high_beta_asset_at_minus_100_percent():
    result = _run(_book(betas=(3.0, 0.5)), "market_crash", index_shock=-0.5)
    assert result["extras"]["shocks"] == {"A": -1.0, "B": -0.25}
    assert result["positions"][0]["pnl"] == pytest.approx(-10_000.0)


def test_a_short_gains_in_a_crash_and_is_not_among_the_worst_positions():
    result = _run(_book(qty=(100.0, -50.0)), "market_crash", index_shock=-0.2)
    assert [p["pnl"] for p in result["positions"]] == pytest.approx([-3000.0, 500.0])
    assert [p["symbol"] for p in result["worst_positions"]] == ["A"]


def test_custom_asset_shock_overrides_the_factor_path():
    result = _run(_book(), "custom", asset_shocks={"A": -0.5}, factor_shocks={"index": -0.1})
    # A: its own -50 %; B: 0.5 x -10 %
    assert [p["pnl"] for p in result["positions"]] == pytest.approx([-5000.0, -250.0])
    only_asset = _run(_book(), "custom", asset_shocks={"B": 0.1})
    assert [p["pnl"] for p in only_asset["positions"]] == pytest.approx([0.0, 500.0])


def test_volatility_spike_scales_the_var_and_splits_the_impact_by_euler_components():
    result = _run(_book(), "volatility_spike", multiplier=3.0, n_paths=2000)
    sd = K * math.hypot(100.0, 100.0)
    assert result["var_after"] == pytest.approx(-Z95 * 3 * sd)
    assert result["cvar_after"] == pytest.approx(3 * sd * PHI95 / 0.05)
    assert result["pnl"] == pytest.approx(-result["var_after"])
    # equal risk contributions (100 and 100 currency of sd each, uncorrelated): half each
    assert [p["pnl"] for p in result["positions"]] == pytest.approx([result["pnl"] / 2] * 2)
    assert result["extras"]["sd_after"] == pytest.approx(3 * sd)


def test_volatility_spike_monte_carlo_equals_core_risk_on_returns_scaled_around_the_mean():
    book = stress.synthetic_portfolio(12, seed=5, days=120)
    m, n_paths, seed = 2.5, 20_000, 9
    result = stress.run_scenario(book, {"kind": "volatility_spike",
                                        "params": {"multiplier": m, "n_paths": n_paths}}, seed=seed)
    mc = result["extras"]["monte_carlo"]
    R = book.returns
    mu = R.mean(axis=0)
    before = risk.monte_carlo_var_cvar(R, book.values, 0.95, n_scenarios=n_paths, seed=seed)
    after = risk.monte_carlo_var_cvar(mu + m * (R - mu), book.values, 0.95, n_scenarios=n_paths, seed=seed)
    assert mc["var_before"] == pytest.approx(before["var"], rel=1e-9)
    assert mc["cvar_before"] == pytest.approx(before["cvar"], rel=1e-9)
    assert mc["var_after"] == pytest.approx(after["var"], rel=1e-4)       # float32 rounding
    assert mc["cvar_after"] == pytest.approx(after["cvar"], rel=1e-4)
    assert mc["nu"] == pytest.approx(after["nu"])


def test_correlation_breakdown_to_one_removes_diversification():
    result = _run(_book(), "correlation_breakdown", target_correlation=1.0, blend=1.0)
    a = K * 100.0                                    # v_i s_i of both assets
    assert result["var_after"] == pytest.approx(-Z95 * 2 * a)      # sd = a + a once perfectly correlated
    assert result["pnl"] == pytest.approx(-result["var_after"])
    extras = result["extras"]
    assert extras["diversification_ratio_before"] == pytest.approx(math.sqrt(2))
    assert extras["diversification_ratio_after"] == pytest.approx(1.0)
    assert extras["avg_correlation_before"] == pytest.approx(0.0, abs=1e-12)
    assert extras["avg_correlation_after"] == pytest.approx(1.0)
    assert sum(p["pnl"] for p in result["positions"]) == pytest.approx(result["pnl"])


def test_correlation_breakdown_partial_blend_matches_the_blended_covariance():
    book = stress.synthetic_portfolio(3, seed=2, days=60)
    rho, b = 0.8, 0.4
    result = stress.run_scenario(book, {"kind": "correlation_breakdown",
                                        "params": {"target_correlation": rho, "blend": b}})
    cov = np.cov(book.returns, rowvar=False)
    s = np.sqrt(np.diag(cov))
    corr = cov / np.outer(s, s)
    target = np.full((3, 3), rho)
    np.fill_diagonal(target, 1.0)
    stressed = np.outer(s, s) * ((1 - b) * corr + b * target)
    v = book.values
    expected = -(book.returns.mean(axis=0) @ v + Z95 * math.sqrt(v @ stressed @ v))
    assert result["var_after"] == pytest.approx(expected, rel=1e-10)
    assert result["extras"]["avg_correlation_after"] == pytest.approx(
        (1 - b) * corr[np.triu_indices(3, 1)].mean() + b * rho)


def test_liquidity_crisis_cost_is_spread_plus_premium_plus_square_root_impact():
    result = _run(_book(), "liquidity_crisis", premium=0.05, spread_multiplier=5.0,
                  impact_coefficient=1.0, participation=0.10)
    # A: 100 shares of 10,000 ADV; 10 bp half spread x 5; sd 0.01 K; sqrt(0.01) = 0.1
    frac_a = 0.0010 * 5 + 0.05 + 0.01 * K * 0.1
    # B: 50 shares of 1,000 ADV; 20 bp x 5; sd 0.02 K; sqrt(0.05)
    frac_b = 0.0020 * 5 + 0.05 + 0.02 * K * math.sqrt(0.05)
    cost = 10_000 * frac_a + 5_000 * frac_b
    assert result["pnl"] == pytest.approx(-cost)
    rows = {r["symbol"]: r for r in result["extras"]["liquidation"]}
    assert rows["A"]["days_to_liquidate"] == pytest.approx(100 / (0.1 * 10_000))
    assert rows["B"]["days_to_liquidate"] == pytest.approx(50 / (0.1 * 1_000))
    assert result["extras"]["max_days_to_liquidate"] == pytest.approx(0.5)
    assert sum(result["extras"]["cost_breakdown"].values()) == pytest.approx(cost)
    assert result["extras"]["cost_breakdown"]["premium"] == pytest.approx(750.0)
    assert result["var_after"] == pytest.approx(result["var_before"] + cost)


def test_liquidity_cost_of_a_long_is_capped_at_its_value():
    result = _run(_book(qty=(100.0, 50.0), adv=(1.0, 1_000.0)), "liquidity_crisis",
                  premium=0.5, impact_coefficient=10.0)
    assert result["positions"][0]["pnl"] == pytest.approx(-10_000.0)


def test_monte_carlo_scenario_reports_the_simulated_var_and_allocates_it_to_positions():
    book = stress.synthetic_portfolio(6, seed=1, days=80)
    result = stress.run_scenario(book, {"kind": "monte_carlo",
                                        "params": {"n_paths": 4000, "n_chunks": 4}}, seed=3)
    mc = result["extras"]["monte_carlo"]
    row = next(r for r in mc["by_confidence"] if r["confidence"] == 0.95)
    assert result["var_after"] == row["var"] and result["pnl"] == -row["var"]
    assert sum(p["pnl"] for p in result["positions"]) == pytest.approx(result["pnl"])
    assert mc == stress.mc_single(book, 4000, 4, 3, (0.95, 0.99))


# ---- limits and the SafetyController -----------------------------------------------------
def test_a_crash_beyond_the_daily_loss_limit_breaches_it_and_would_halt():
    book = _book(qty=(500.0, 400.0), betas=(1.0, 1.0))          # 90,000 long on 100,000
    result = _run(book, "market_crash", index_shock=-0.10)
    assert result["pnl"] == pytest.approx(-9000.0)
    breached = {b["name"]: b for b in result["breaches"]}
    assert breached["daily_loss"]["value"] == pytest.approx(9000.0)
    assert breached["daily_loss"]["limit"] == pytest.approx(5000.0)   # 5 % of 100,000
    assert result["would_halt"] is True
    assert result["halt_reason"].startswith("daily_loss 0.09 over 0.05")


def test_a_small_shock_breaches_nothing_and_would_not_halt():
    result = _run(_book(), "market_crash", index_shock=-0.01)
    assert result["breaches"] == [] and result["would_halt"] is False
    assert result["halt_reason"] is None and result["safety_state"] == "ACTIVE"


def test_an_up_shock_pushes_a_position_over_its_scaled_limit():
    # per-symbol limit 100,000 on the 1,000,000 reference = 10,000 on 100,000 of equity
    book = _book(qty=(90.0, 40.0))
    result = _run(book, "custom", asset_shocks={"A": 0.2})
    assert [b["name"] for b in result["breaches"]] == ["position:A"]
    assert result["breaches"][0]["value"] == pytest.approx(10_800.0)


def test_drawdown_from_an_earlier_peak_halts_even_under_the_daily_limit():
    book = _book(peak_equity=115_000.0)                # already 13 % below the peak
    result = _run(book, "market_crash", index_shock=-0.01)
    assert result["would_halt"] is True and result["halt_reason"].startswith("drawdown")


def test_the_day_started_lower_so_a_small_shock_crosses_the_daily_limit():
    book = _book(day_start_equity=104_000.0)           # already -3.8 % today
    result = _run(book, "market_crash", index_shock=-0.10)        # a further -1.75 %
    assert result["would_halt"] is True and "daily_loss" in result["halt_reason"]


def test_custom_limits_and_a_reducing_safety_action_are_used():
    book = _book(qty=(500.0, 400.0), betas=(1.0, 1.0))
    result = stress.run_scenario(book, {"kind": "market_crash", "params": {"index_shock": -0.10}},
                                 limits=LimitConfig(max_daily_loss_fraction=0.5),
                                 safety=SafetyConfig(daily_loss_action="REDUCING", drawdown_fraction=0.5))
    assert all(b["name"] != "daily_loss" for b in result["breaches"])
    assert result["would_halt"] is False and result["safety_state"] == "REDUCING"


# ---- validation --------------------------------------------------------------------------
BAD_SPECS = [
    ({"kind": "market_crash", "params": {"index_shock": -1.5}}, "index_shock", "within [-1, 0)"),
    ({"kind": "market_crash", "params": {"index_shock": 0}}, "index_shock", "within [-1, 0)"),
    ({"kind": "market_crash", "params": {"index_shock": 0.1}}, "index_shock", "within [-1, 0)"),
    ({"kind": "market_crash", "params": {"index_shock": float("nan")}}, "index_shock", "finite"),
    ({"kind": "market_crash", "params": {"index_shock": "inf"}}, "index_shock", "finite"),
    ({"kind": "market_crash", "params": {"index_shock": "abc"}}, "index_shock", "must be a number"),
    ({"kind": "market_crash", "params": {"index_shock": True}}, "index_shock", "must be a number"),
    ({"kind": "market_crash", "params": {"index_shock": None}}, "index_shock", "must be a number"),
    ({"kind": "volatility_spike", "params": {"multiplier": 0}}, "multiplier", "within (0, 20]"),
    ({"kind": "volatility_spike", "params": {"multiplier": -2}}, "multiplier", "within (0, 20]"),
    ({"kind": "volatility_spike", "params": {"n_paths": 999}}, "n_paths", "[1000, 1e+06]"),
    ({"kind": "volatility_spike", "params": {"n_paths": 2_000_000}}, "n_paths", "[1000, 1e+06]"),
    ({"kind": "volatility_spike", "params": {"n_paths": 1500.5}}, "n_paths", "whole number"),
    ({"kind": "liquidity_crisis", "params": {"participation": 0}}, "participation", "within (0, 1]"),
    ({"kind": "liquidity_crisis", "params": {"premium": 1}}, "premium", "within [0, 1)"),
    ({"kind": "liquidity_crisis", "params": {"spread_multiplier": 0.5}}, "spread_multiplier", "[1, 100]"),
    ({"kind": "correlation_breakdown", "params": {"target_correlation": 1.5}}, "target_correlation",
     "[0, 1]"),
    ({"kind": "correlation_breakdown", "params": {"blend": -0.1}}, "blend", "[0, 1]"),
    ({"kind": "monte_carlo", "params": {"distribution": "normal"}}, "distribution", "student_t"),
    ({"kind": "monte_carlo", "params": {"n_chunks": 300}}, "n_chunks", "[1, 256]"),
    ({"kind": "monte_carlo", "params": {"n_paths": 1000, "n_chunks": 3}}, "n_chunks", "at least 500"),
    ({"kind": "custom", "params": {"asset_shocks": {}, "factor_shocks": {}}}, "asset_shocks", "at least one"),
    ({"kind": "custom", "params": {"asset_shocks": {"A": -1.2}}}, "asset_shocks", "within [-1, 10]"),
    ({"kind": "custom", "params": {"asset_shocks": {"ZZZ": -0.1}}}, "asset_shocks", "unknown symbol 'ZZZ'"),
    ({"kind": "custom", "params": {"asset_shocks": [0.1]}}, "asset_shocks", "must be an object"),
    ({"kind": "custom", "params": {"factor_shocks": {"oil": -0.1}}}, "factor_shocks", "unknown factor"),
    ({"kind": "earthquake"}, "kind", "unknown scenario kind"),
    ({"kind": "market_crash", "params": {"shock": -0.1}}, "shock", "unknown parameter 'shock'"),
    ({"kind": "market_crash", "params": [1]}, "params", "params must be an object"),
    ({"kind": "market_crash", "name": "x" * 65}, "name", "at most 64"),
    ({"kind": "market_crash", "when": "now"}, "when", "unknown scenario key"),
    ("market_crash", None, "must be an object"),
]


@pytest.mark.parametrize("spec, field, message", BAD_SPECS)
def test_bad_scenarios_are_rejected_with_the_field_and_a_message(spec, field, message):
    with pytest.raises(StressInputError) as err:
        stress.validate_scenario(spec, ("A", "B"))
    assert err.value.field == field
    assert message in str(err.value)
    with pytest.raises(StressInputError):               # the engine refuses it the same way
        stress.run_scenario(_book(), spec)


def test_validation_fills_defaults_and_normalizes_numbers():
    spec = stress.validate_scenario({"kind": "volatility_spike", "params": {"multiplier": "2.5",
                                                                             "n_paths": 5000.0}})
    assert spec == {"kind": "volatility_spike", "name": "Volatility spike",
                    "params": {"multiplier": 2.5, "n_paths": 5000}}
    assert isinstance(spec["params"]["n_paths"], int)
    for kind in stress.KINDS:
        normalized = stress.validate_scenario({"kind": kind})
        assert set(normalized["params"]) == set(stress.DEFAULT_PARAMS[kind])


@pytest.mark.parametrize("kw, field", [({"confidence": 1.0}, "confidence"),
                                       ({"confidence": float("nan")}, "confidence"),
                                       ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed")])
def test_bad_run_options_are_rejected(kw, field):
    with pytest.raises(StressInputError) as err:
        stress.run_scenario(_book(), {"kind": "market_crash"}, **kw)
    assert err.value.field == field


@pytest.mark.parametrize("change, message", [
    ({"returns": _returns()[:10]}, "at least 20"),
    ({"price": (100.0, 0.0)}, "prices and volumes must be > 0"),
    ({"qty": (1.0, float("nan"))}, "finite"),
    ({"qty": (1.0, 2.0, 3.0)}, "one value per symbol"),
    ({"returns": [[0.1, 0.2]] * 20 + [[0.1]]}, "matrix of numbers"),
    ({"returns": np.zeros((30, 3))}, "one column per symbol"),
    ({"returns": []}, "one column per symbol"),
    ({"equity": 0.0}, "equity must be a finite number > 0"),
    ({"symbols": ("A", "A")}, "unique"),
    ({"source": "tape"}, "source"),
])
def test_a_malformed_portfolio_is_rejected(change, message):
    base = dict(symbols=("A", "B"), qty=(1.0, 2.0), price=(100.0, 100.0), betas=(1.0, 1.0),
                adv=(1e4, 1e4), half_spread_bps=(1.0, 1.0), returns=_returns(), equity=1e5, source="upload")
    with pytest.raises(StressInputError, match=message) as err:
        stress.Portfolio(**{**base, **change})
    assert err.value.field == "portfolio"


# ---- property: nothing but StressInputError, and JSON-safe results ----------------------
_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10**6, 10**6),
                    st.sampled_from([10**400, -10**400, "1e400", "-1e-400"]),
                    st.sampled_from(["", "x", "0.5", "-0.2", "nan", None, True, [], {}]))
_params = {
    "market_crash": {"index_shock": _values},
    "volatility_spike": {"multiplier": _values, "n_paths": st.sampled_from([1000, 1500, 999, 10**9, "x"])},
    "liquidity_crisis": {"premium": _values, "spread_multiplier": _values, "impact_coefficient": _values,
                         "participation": _values},
    "correlation_breakdown": {"target_correlation": _values, "blend": _values},
    "monte_carlo": {"n_paths": st.sampled_from([1000, 2000, 5]), "n_chunks": st.sampled_from([1, 2, 0, 9]),
                    "distribution": st.sampled_from(["student_t", "bootstrap", "x"])},
    "custom": {"asset_shocks": st.dictionaries(st.sampled_from(["A", "B", "Q", ""]), _values, max_size=3),
               "factor_shocks": st.dictionaries(st.sampled_from(["index", "oil"]), _values, max_size=2)},
}


@st.composite
def _specs(draw):
    kind = draw(st.sampled_from(sorted(_params)))
    names = draw(st.lists(st.sampled_from(sorted(_params[kind])), unique=True))
    return {"kind": kind, "params": {n: draw(_params[kind][n]) for n in names}}


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_any_parameters_either_run_to_a_json_safe_result_or_raise_stress_input_error(spec):
    try:
        result = stress.run_scenario(_BOOK_FOR_PROPERTIES, spec)
    except StressInputError as exc:
        assert str(exc)
        return
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert math.isfinite(result["pnl"]) and result["kind"] == spec["kind"]


_BOOK_FOR_PROPERTIES = _book(qty=(100.0, -30.0))


def test_every_kind_gives_a_strict_json_result_without_numpy_types():
    book = stress.synthetic_portfolio(8, seed=4, days=40)
    specs = [{"kind": k} for k in stress.STANDARD_KINDS] + [
        {"kind": "custom", "params": {"asset_shocks": {book.symbols[0]: -1.0}}},
        {"kind": "monte_carlo", "params": {"n_paths": 2000, "n_chunks": 2}}]
    for spec in specs:
        result = stress.run_scenario(book, spec)
        assert json.loads(json.dumps(result, allow_nan=False)) == result
        assert {"kind", "name", "params", "pnl", "pnl_pct", "var_before", "var_after", "cvar_before",
                "cvar_after", "positions", "worst_positions", "breaches", "would_halt", "halt_reason",
                "extras", "duration_ms"} <= set(result)
        assert len(result["positions"]) == 8 and len(result["worst_positions"]) <= 5


def test_run_standard_equals_the_four_scenarios_run_one_by_one():
    book = stress.synthetic_portfolio(10, seed=6, days=60)
    together = stress.run_standard(book, seed=2)
    assert [r["kind"] for r in together] == list(stress.STANDARD_KINDS)
    for result in together:
        alone = stress.run_scenario(book, {"kind": result["kind"]}, seed=2)
        for key in ("pnl", "var_before", "var_after", "cvar_after", "positions", "extras", "breaches"):
            assert alone[key] == result[key], key


def test_portfolio_json_round_trip_is_exact():
    book = stress.synthetic_portfolio(7, seed=8, days=30)
    again = stress.Portfolio.from_json(json.loads(json.dumps(book.to_json())))
    for name in ("qty", "price", "betas", "adv", "half_spread_bps", "returns"):
        assert np.array_equal(getattr(book, name), getattr(again, name))
    assert again.symbols == book.symbols and again.digest == book.digest
    assert again.equity == book.equity and again.source == "synthetic"
    with pytest.raises(StressInputError):
        stress.Portfolio.from_json({"symbols": ["A"]})


# ---- Monte Carlo fan-out: exact merge ----------------------------------------------------
def _brute_force(book, n_paths, n_chunks, seed, distribution="student_t"):
    """The whole P&L vector, each chunk generated straight from core.risk's generator with
    the chunk's own rng, then the percentile and tail mean on all of it."""
    R = book.returns
    fit = risk.fit_student_t(R) if distribution == "student_t" else None
    chol = None
    if fit:
        fit["mean32"] = fit["mean"].astype(np.float32)
        chol = np.asfortranarray(stress._factor(fit["scale"]), dtype=np.float32)
    w = book.values.astype(np.float32) if fit else book.values
    parts = []
    for i, rows in enumerate(stress.mc_plan(n_paths, n_chunks)):
        rng = np.random.default_rng([seed, i])
        for start in range(0, rows, risk.MC_CHUNK_ROWS):
            parts.append(risk._scenarios(rng, R, fit, chol, min(risk.MC_CHUNK_ROWS, rows - start)) @ w)
    return np.concatenate(parts).astype(float)


@pytest.mark.parametrize("distribution", ["student_t", "bootstrap"])
def test_merged_chunks_in_any_order_equal_the_single_process_run_and_a_brute_force(distribution):
    book = stress.synthetic_portfolio(25, seed=11, days=DAYS)   # 20 days: bootstrap P&L has many ties
    n_paths, n_chunks, seed = 30_001, 7, 5
    levels = (0.95, 0.99, 0.975)
    single = stress.mc_single(book, n_paths, n_chunks, seed, levels, distribution)
    chunks = [stress.mc_chunk(book, n_paths, i, rows, seed, levels, distribution)
              for i, rows in enumerate(stress.mc_plan(n_paths, n_chunks))]
    random.Random(1).shuffle(chunks)
    merged = stress.mc_merge(book, n_paths, json.loads(json.dumps(chunks)), levels)
    assert merged == single
    pnl = _brute_force(book, n_paths, n_chunks, seed, distribution)
    assert pnl.size == n_paths
    for row in single["by_confidence"]:
        var, cvar = risk.historical_var_cvar(pnl, row["confidence"])
        assert row["var"] == pytest.approx(var, rel=1e-12)
        assert row["cvar"] == pytest.approx(cvar, rel=1e-12)
        assert row["var_pct"] == pytest.approx(var / book.equity, rel=1e-12)
    assert single["mean"] == pytest.approx(pnl.mean(), rel=1e-12)
    assert single["sd"] == pytest.approx(pnl.std(ddof=1), rel=1e-9)
    hist = single["histogram"]
    assert len(hist["edges"]) == stress.MC_HIST_BINS + 1
    assert sum(hist["counts"]) + hist["underflow"] + hist["overflow"] == n_paths
    assert hist["counts"] == np.histogram(pnl, bins=hist["edges"])[0].tolist()


def test_ties_at_the_percentile_are_all_kept_by_the_chunks():
    # bootstrap of 40 days: one crash day (2.5 % of paths) and six identical bad days (15 %):
    # the 5 % percentile sits inside the block of ties, and so does each chunk's keep-th loss
    rng = np.random.default_rng(0)
    R = rng.normal(0.001, 0.01, (40, 2))
    R[0] = -0.10
    R[1:7] = -0.03
    book = _book(returns=R)
    single = stress.mc_single(book, 4000, 2, 1, (0.95,), "bootstrap")
    pnl = _brute_force(book, 4000, 2, 1, "bootstrap")
    q = np.percentile(pnl, 5)
    assert (pnl == q).sum() > 400 and (pnl < q).sum() > 50        # the case is as intended
    var, cvar = risk.historical_var_cvar(pnl, 0.95)
    assert single["by_confidence"][0]["var"] == pytest.approx(var, rel=1e-12)
    assert single["by_confidence"][0]["cvar"] == pytest.approx(cvar, rel=1e-12)


def test_a_chunk_depends_only_on_seed_index_and_rows_not_on_the_chunk_count():
    book = stress.synthetic_portfolio(10, seed=2, days=40)
    assert stress.mc_plan(10_000, 8) == [1250] * 8 and stress.mc_plan(5000, 4) == [1250] * 4
    big = stress.mc_chunk(book, 10_000, 3, 1250, 7)
    small = stress.mc_chunk(book, 5000, 3, 1250, 7)
    assert (big["sum"], big["sumsq"], big["counts"]) == (small["sum"], small["sumsq"], small["counts"])
    common = min(len(big["tail"]), len(small["tail"]))
    assert big["tail"][:common] == small["tail"][:common]
    assert big == stress.mc_chunk(book, 10_000, 3, 1250, 7)        # idempotent


@pytest.mark.parametrize("assets, days", [(5, 40), (60, 30), (200, 21)])
def test_the_simulation_factor_is_lower_triangular_and_reproduces_the_scale(assets, days):
    scale = risk.fit_student_t(stress.synthetic_portfolio(assets, seed=1, days=days).returns)["scale"]
    factor = stress._factor(scale)
    assert np.array_equal(factor, np.tril(factor)) and (np.diag(factor) >= 0).all()
    np.testing.assert_allclose(factor @ factor.T, scale, rtol=0, atol=1e-9 * np.abs(scale).max())
    if days > assets:                                  # regular: exactly core.risk's Cholesky
        assert np.array_equal(factor, risk._cholesky(scale))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_chunk_is_the_same_whatever_blas_threads_the_caller_runs(threads):
    book = stress.synthetic_portfolio(60, seed=4, days=30)       # singular covariance
    stress.clear_cache()
    reference = stress.mc_chunk(book, 4000, 1, 2000, 3)
    stress.clear_cache()
    with risk._blas_controller().limit(limits=threads, user_api="blas"):
        assert stress.mc_chunk(book, 4000, 1, 2000, 3) == reference


def test_mc_plan_and_tail_keep():
    assert stress.mc_plan(1003, 2) == [502, 501]
    assert sum(stress.mc_plan(100_000, 23)) == 100_000
    # numpy's linear percentile at 5 % of 100,000 reads sorted positions 4999 and 5000
    assert stress.mc_tail_keep(100_000, (0.95, 0.99)) == 5001
    assert stress.mc_tail_keep(1000, (0.5000001,)) <= 1000
    with pytest.raises(StressInputError):
        stress.mc_plan(1000, 0)


def test_merge_refuses_missing_duplicate_or_foreign_chunks():
    book = stress.synthetic_portfolio(5, seed=1, days=30)
    other = stress.synthetic_portfolio(5, seed=2, days=30)
    chunks = [stress.mc_chunk(book, 2000, i, 1000, 1) for i in range(2)]
    with pytest.raises(StressInputError, match="numbered"):
        stress.mc_merge(book, 2000, chunks[1:])
    with pytest.raises(StressInputError, match="hold 1000 paths, not 2000"):
        stress.mc_merge(book, 2000, chunks[:1])
    with pytest.raises(StressInputError, match="numbered"):
        stress.mc_merge(book, 2000, [chunks[0], chunks[0]])
    with pytest.raises(StressInputError, match="portfolios"):
        stress.mc_merge(other, 2000, chunks)
    with pytest.raises(StressInputError, match="paths"):
        stress.mc_merge(book, 3000, chunks)


def test_fan_out_result_equals_the_single_process_scenario():
    book = stress.synthetic_portfolio(6, seed=3, days=40)
    spec = {"kind": "monte_carlo", "params": {"n_paths": 3000, "n_chunks": 3}}
    alone = stress.run_scenario(book, spec, seed=4, confidence=0.975)
    levels = (0.95, 0.975, 0.99)
    chunks = [stress.mc_chunk(book, 3000, i, r, 4, levels) for i, r in enumerate(stress.mc_plan(3000, 3))]
    fanned = stress.mc_scenario_result(book, spec, stress.mc_merge(book, 3000, chunks, levels),
                                       confidence=0.975, seed=4)
    alone.pop("duration_ms"), fanned.pop("duration_ms")
    assert fanned == alone


# ---- CSV uploads -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def universe():
    return stress.Universe.synthetic(4, seed=3, days=40)


def test_csv_with_quantities_and_prices(universe):
    text = "symbol,quantity,price\nSYM00,100,50.5\nSYM02,-20,10\n"
    book, errors = stress.parse_portfolio_csv(text, universe)
    assert errors == []
    assert book.symbols == ("SYM00", "SYM02") and book.source == "upload"
    assert book.values.tolist() == [5050.0, -200.0]
    assert book.equity == pytest.approx(5250.0)                  # gross exposure by default
    assert np.array_equal(book.returns, universe.returns[:, [0, 2]])
    assert book.betas.tolist() == universe.betas[[0, 2]].tolist()


def test_csv_with_weights_bom_semicolons_percent_and_last_close_prices(universe):
    text = "\ufeffTicker;Weight;Price;note\nsym01;25%;;hello\nSYM03;-0.1;20;\n".encode("utf-8")
    book, errors = stress.parse_portfolio_csv(text, universe, equity=200_000)
    assert errors == []
    assert book.equity == 200_000
    assert book.price[0] == universe.last_price[1]               # empty price: the last close
    assert book.values.tolist() == pytest.approx([50_000.0, -20_000.0])


def test_csv_reports_every_bad_row_with_spreadsheet_row_numbers(universe):
    text = ("symbol,qty,price\n"            # row 1
            "SYM00,10,5\n"                  # row 2: fine
            "NOPE,10,5\n"                   # 3
            "SYM01,abc,5\n"                 # 4
            "\n"                            # 5: blank, skipped
            "SYM02,nan,5\n"                 # 6
            "SYM03,1,0\n"                   # 7
            "SYM00,5,5\n"                   # 8: duplicate of row 2
            ",1,1\n"                        # 9
            "SYM01\n")                      # 10
    book, errors = stress.parse_portfolio_csv(text, universe)
    assert book is None
    assert [(e["row"], e["message"].split(" ")[0]) for e in errors] == [
        (3, "unknown"), (4, "quantity"), (6, "quantity"), (7, "price"), (8, "duplicate"),
        (9, "symbol"), (10, "expected")]
    assert "first on row 2" in errors[4]["message"]
    assert "'abc' is not a number" in errors[1]["message"]


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("symbol,quantity\n", "no positions"),
    ("name,quantity\nSYM00,1\n", "missing column 'symbol'"),
    ("symbol,price\nSYM00,1\n", "missing column 'quantity'"),
    ("symbol,quantity,weight\nSYM00,1,0.1\n", "not both"),
    ("symbol,qty,quantity\nSYM00,1,1\n", "appears 2 times"),
    ("symbol,weight\nSYM00,12\n", "out of range"),
    ("symbol,quantity\nSYM00,0\n", "every position is zero"),
    ("symbol,weight\nSYM00,0%\nSYM01,0\n", "every position is zero"),
    (b"symbol,quantity\n\xff\xfe,1\n", "not UTF-8"),
    ('symbol,quantity\n"SYM00,1\n', "expected at least 2 fields"),
])
def test_malformed_csv_files_are_rejected_with_a_message(universe, text, message):
    book, errors = stress.parse_portfolio_csv(text, universe)
    assert book is None and errors
    assert any(message in e["message"] for e in errors), errors


def test_csv_size_and_row_limits(universe):
    big = "symbol,quantity\n" + "SYM00,1\n" * (stress.CSV_MAX_BYTES // 8 + 1)
    book, errors = stress.parse_portfolio_csv(big, universe)
    assert book is None and errors[0]["row"] is None and "bytes" in errors[0]["message"]
    many = "symbol,quantity\n" + "SYM09,1\n" * (stress.CSV_MAX_ROWS + 1)
    book, errors = stress.parse_portfolio_csv(many, universe)
    assert book is None and "more than 5,000 positions" in errors[-1]["message"]
    bad = "symbol,quantity\n" + "NOPE,1\n" * 80
    book, errors = stress.parse_portfolio_csv(bad, universe)
    assert len(errors) == stress.CSV_MAX_ERRORS + 1 and "30 more errors" in errors[-1]["message"]


# ---- live portfolio (real Redis, real SQLite history) ------------------------------------
SYMBOLS = 6


@pytest.fixture
def market(tmp_path, settings):
    model = FactorModel.from_seed(SYMBOLS, 3)
    conn = history.connect(f"sqlite:///{tmp_path / 'stress.db'}")
    history.backfill(conn, model, 120, seed=3)
    yield model, conn, dataclasses.replace(settings, symbols=SYMBOLS, seed=3, risk_lookback_days=60)
    conn.close()


def test_live_portfolio_reads_the_paper_brokers_book(own_db, market):
    model, conn, cfg = market
    closes = history.last_closes(conn)
    broker = PaperBroker(model.symbols, 1_000_000.0)
    for sym, side, qty in [(0, 1, 2000), (4, -1, 500)]:
        px = closes[model.symbols[sym]]
        broker.submit(sym, side, qty, px * 0.9999, px * 1.0001)
    broker.persist(own_db)
    own_db.hset(schema.SAFETY_RULES, "peak_equity", "1100000.0")
    book = stress.live_portfolio(own_db, conn, cfg)
    assert book.source == "live" and book.symbols == (model.symbols[0], model.symbols[4])
    assert book.qty.tolist() == [2000.0, -500.0]
    assert book.equity == pytest.approx(broker.equity())
    assert book.peak_equity == 1_100_000.0
    assert book.betas.tolist() == model.betas[[0, 4]].tolist()
    assert book.adv.tolist() == model.daily_volume[[0, 4]].tolist()
    expected = risk_manager.asset_returns(conn, list(book.symbols), 60)
    assert np.array_equal(book.returns, expected) and book.returns.shape == (60, 2)
    result = stress.run_scenario(book, {"kind": "market_crash"})
    assert result["pnl"] < 0


def test_an_empty_live_book_is_a_clear_error(own_db, market):
    _, conn, cfg = market
    with pytest.raises(StressInputError, match="no equity"):
        stress.live_portfolio(own_db, conn, cfg)
    PaperBroker(FactorModel.from_seed(SYMBOLS, 3).symbols, 1_000_000.0).persist(own_db)
    with pytest.raises(StressInputError, match="no open positions") as err:
        stress.live_portfolio(own_db, conn, cfg)
    assert err.value.field == "portfolio"


def test_universe_from_a_short_history_is_refused(tmp_path, settings):
    model = FactorModel.from_seed(3, 1)
    conn = history.connect(f"sqlite:///{tmp_path / 'short.db'}")
    history.backfill(conn, model, 10, seed=1)
    cfg = dataclasses.replace(settings, symbols=3, seed=1)
    with pytest.raises(StressInputError, match="9 days of price history; at least 20") as err:
        stress.Universe.from_history(conn, cfg)
    assert err.value.field == "portfolio"
    conn.close()


# ---- saved custom scenarios --------------------------------------------------------------
def test_custom_scenarios_are_saved_listed_overwritten_and_deleted(own_db):
    spec = {"kind": "custom", "params": {"asset_shocks": {"A": -0.3}}}
    doc = stress.save_custom(own_db, " Oil shock ", spec, "alice", symbols=("A", "B"), now=10.0)
    assert doc["name"] == "Oil shock" and doc["spec"]["params"]["asset_shocks"] == {"A": -0.3}
    stress.save_custom(own_db, "Oil shock", {"params": {"factor_shocks": {"index": -0.2}}}, "bob", now=11.0)
    stress.save_custom(own_db, "a-b_c.1", spec, "alice", now=12.0)
    listed = stress.list_custom(own_db)
    assert [d["name"] for d in listed] == ["Oil shock", "a-b_c.1"]
    assert listed[0]["user"] == "bob" and listed[0]["spec"]["params"]["factor_shocks"] == {"index": -0.2}
    assert stress.run_scenario(_book(), listed[0]["spec"])["pnl"] < 0      # reusable as saved
    assert stress.delete_custom(own_db, "Oil shock") is True
    assert stress.delete_custom(own_db, "Oil shock") is False
    assert [d["name"] for d in stress.list_custom(own_db)] == ["a-b_c.1"]


@pytest.mark.parametrize("name, spec, field", [
    ("", {"params": {"asset_shocks": {"A": -0.1}}}, "name"),
    ("x" * 65, {"params": {"asset_shocks": {"A": -0.1}}}, "name"),
    ("semi;colon", {"params": {"asset_shocks": {"A": -0.1}}}, "name"),
    ("ok", {"kind": "market_crash"}, "kind"),
    ("ok", {"params": {"asset_shocks": {"A": -3}}}, "asset_shocks"),
    ("ok", {"params": {"asset_shocks": {"ZZ": -0.1}}}, "asset_shocks"),
])
def test_bad_custom_saves_are_rejected(own_db, name, spec, field):
    with pytest.raises(StressInputError) as err:
        stress.save_custom(own_db, name, spec, "alice", symbols=("A", "B"))
    assert err.value.field == field
    assert stress.list_custom(own_db) == []


def test_saved_scenarios_are_bounded(own_db, monkeypatch):
    monkeypatch.setattr(stress, "MAX_CUSTOM_SCENARIOS", 2)
    spec = {"params": {"factor_shocks": {"index": -0.1}}}
    stress.save_custom(own_db, "one", spec, "u")
    stress.save_custom(own_db, "two", spec, "u")
    stress.save_custom(own_db, "two", spec, "u")                # overwriting is always allowed
    with pytest.raises(StressInputError, match="at most 2"):
        stress.save_custom(own_db, "three", spec, "u")
