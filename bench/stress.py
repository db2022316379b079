"""Area `stress`: the StressTestEngine on a 500-asset book (core/stress.py).

Data: `core.stress.synthetic_portfolio(500)`: the simulator's factor model, 252 days of
daily returns from its daily bars, ~80 % long / 20 % short, gross exposure = equity (1e6).

- stress.standard_ms: `run_standard` (market crash, volatility spike with its 10,000-path
  Student-t Monte Carlo, liquidity crisis, correlation breakdown) from a COLD model cache:
  every timed run fits the mean, covariance and Student-t again (goal <= 200 ms);
  stress.standard_cpu_ms: its process CPU time (the machine is shared);
- stress.standard_naive_ms: the same four scenarios written the straightforward way (pandas
  and scipy, each scenario recomputing its covariance, core.risk.monte_carlo_var_cvar on the
  scaled returns, eigen-decomposition of the blended correlation), same book, same run;
  stress.standard_speedup = naive / standard. Before timing, the engine's P&L and post-shock
  VaR are checked against the naive figures (1e-9 relative; 1e-4 for the simulated VaR,
  float32 paths), so a fast wrong answer cannot pass;
- stress.mc_single_ms (and _cpu_ms): `mc_single`, 100,000 paths x 500 assets in 20 chunks,
  one process, BLAS pinned to one thread: the fan-out's work done serially.
The fan-out figures (stress.mc_scaling_2_workers, stress.first_progress_ms) come from
bench/stress_fanout.py when it is present (its `run(quick)` or `_fanout(quick)`).
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
from scipy import stats

from bench.risk import _median_ms
from core import risk, stress
from core.limits import LimitConfig, LimitMonitor
from core.safety import ACTIVE, RuleInputs, SafetyConfig, decide, evaluate_rules

ASSETS, DAYS = 500, 252
MC_PATHS, MC_CHUNKS = 100_000, 20
GOALS_MS = {"stress.standard_ms": 200.0}


# ---- the straightforward implementation (the baseline) -----------------------------------
def _naive_var(df: pd.DataFrame, cov: pd.DataFrame, values: pd.Series, c: float = 0.95) -> float:
    z = stats.norm.ppf(1 - c)
    return -(float(df.mean() @ values) + z * math.sqrt(float(values @ cov @ values)))


def _naive_checks(pf: stress.Portfolio, values: pd.Series, pnl: float) -> tuple[list, bool]:
    equity = pf.equity + pnl
    limits = LimitMonitor(LimitConfig().scaled(pf.equity)).utilization(values.to_dict(), equity, pf.equity)
    rules = evaluate_rules(SafetyConfig(), RuleInputs(equity=equity, day_start_equity=pf.equity),
                           {"peak_equity": pf.equity}, 0.0)
    step = decide(SafetyConfig(), ACTIVE, {}, rules, {}, 0.0)
    return [r for r in limits if r["breached"]], bool(step and step["to_state"] == "HALTED")


def naive_standard(pf: stress.Portfolio) -> dict:
    """The four standard scenarios, each from scratch with pandas / scipy."""
    df = pd.DataFrame(pf.returns, columns=pf.symbols)
    values = pd.Series(pf.qty * pf.price, index=pf.symbols)
    out = {}
    # market crash
    shocks = (pd.Series(pf.betas, index=pf.symbols) * -0.20).clip(lower=-1.0)
    pnl = float((values * shocks).sum())
    post = values * (1 + shocks)
    out["market_crash"] = (pnl, _naive_var(df, df.cov(), post), _naive_checks(pf, post, pnl))
    # volatility spike: returns scaled around the mean, refitted, and a 10,000-path simulation
    scaled = df.mean() + 3.0 * (df - df.mean())
    var_after = _naive_var(scaled, scaled.cov(), values)
    mc = risk.monte_carlo_var_cvar(scaled.to_numpy(), values.to_numpy(), 0.95, n_scenarios=10_000, seed=0)
    out["volatility_spike"] = (-var_after, var_after, _naive_checks(pf, values, -var_after), mc["var"])
    # liquidity crisis
    sigma = df.std()
    size = pd.Series(np.abs(pf.qty) / pf.adv, index=pf.symbols)
    frac = pf.half_spread_bps * 1e-4 * 5.0 + 0.05 + sigma * np.sqrt(size)
    frac = frac.where(values <= 0, frac.clip(upper=1.0))
    cost = float((frac * values.abs()).sum())
    var_before = _naive_var(df, df.cov(), values)
    out["liquidity_crisis"] = (-cost, var_before + cost, _naive_checks(pf, values, -cost))
    # correlation breakdown: blend to all-ones, nearest PSD by eigenvalue clipping
    corr = df.corr().to_numpy()
    rho, blend = 1.0, 1.0
    target = np.full_like(corr, rho)
    np.fill_diagonal(target, 1.0)
    blended = (1 - blend) * corr + blend * target
    w, vecs = np.linalg.eigh(blended)
    blended = (vecs * np.clip(w, 0, None)) @ vecs.T
    cov = pd.DataFrame(blended * np.outer(sigma, sigma), index=pf.symbols, columns=pf.symbols)
    var_after = _naive_var(df, cov, values) if corr.size else math.nan
    out["correlation_breakdown"] = (-var_after, var_after, _naive_checks(pf, values, -var_after))
    return out


def _check(fast: list[dict], slow: dict) -> None:
    """Parametric figures, breaches and halts must agree exactly (1e-9). The simulated VaR
    after the spike: the naive refit factors the singular covariance (252 days < 500 assets)
    in another way (other paths, same distribution), so it must agree within the 10,000-path
    sampling error (tests/core/test_stress.py checks the exact equality on a regular one)."""
    for result in fast:
        pnl, var_after, (breaches, halt), *mc = slow[result["kind"]]
        assert math.isclose(result["pnl"], pnl, rel_tol=1e-9), (result["kind"], result["pnl"], pnl)
        assert math.isclose(result["var_after"], var_after, rel_tol=1e-9), result["kind"]
        assert [b["name"] for b in result["breaches"]] == [b["name"] for b in breaches], result["kind"]
        assert result["would_halt"] == halt, result["kind"]
        if mc:
            sim = result["extras"]["monte_carlo"]["var_after"]
            assert math.isclose(sim, mc[0], rel_tol=0.03), (sim, mc[0])


# ---- figures ---------------------------------------------------------------------------
def _cold_standard(pf: stress.Portfolio) -> list[dict]:
    stress.clear_cache()
    return stress.run_standard(pf)


def _standard(quick: bool) -> dict[str, float]:
    pf = stress.synthetic_portfolio(ASSETS, seed=0, days=DAYS)
    fast = _cold_standard(pf)
    _check(fast, naive_standard(pf))
    standard_ms, standard_cpu = _median_ms(lambda: _cold_standard(pf), 7 if quick else 21)
    naive_ms, _ = _median_ms(lambda: naive_standard(pf), 3 if quick else 7)
    mc = lambda: stress.mc_single(pf, MC_PATHS, MC_CHUNKS, seed=1)  # noqa: E731
    result = mc()
    mc_ms, mc_cpu = _median_ms(mc, 3 if quick else 5)
    print(f"   standard scenarios {standard_ms:7.1f} ms (cpu {standard_cpu:.1f}), cold model, "
          f"{ASSETS} assets x {DAYS} days (goal <= {GOALS_MS['stress.standard_ms']:.0f} ms); "
          f"naive {naive_ms:7.1f} ms, speedup {naive_ms / standard_ms:4.1f}x")
    print("   " + ", ".join(f"{r['kind']} {r['pnl_pct']:+.2%}" for r in fast))
    var95 = result["by_confidence"][0]
    print(f"   mc_single {mc_ms:7.0f} ms (cpu {mc_cpu:.0f}) for {MC_PATHS:,} x {ASSETS} in "
          f"{MC_CHUNKS} chunks; VaR95 {var95['var_pct']:.4f} CVaR95 {var95['cvar_pct']:.4f} of equity")
    return {"stress.standard_ms": standard_ms, "stress.standard_cpu_ms": standard_cpu,
            "stress.standard_naive_ms": naive_ms, "stress.standard_speedup": naive_ms / standard_ms,
            "stress.mc_single_ms": mc_ms, "stress.mc_single_cpu_ms": mc_cpu}


def _fanout(quick: bool) -> dict[str, float]:
    """The Celery fan-out figures of bench/stress_fanout.py, when that module exists."""
    try:
        module = importlib.import_module("bench.stress_fanout")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.stress_fanout":
            raise
        print("   bench/stress_fanout.py absent: fan-out figures skipped")
        return {}
    return (getattr(module, "run", None) or module._fanout)(quick)


def run(quick: bool) -> dict[str, float]:
    figures = _standard(quick)
    figures.update(_fanout(quick))
    return figures


if __name__ == "__main__":
    run(quick=True)
