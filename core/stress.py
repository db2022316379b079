"""StressTestEngine: scenarios applied to a portfolio, and the Monte Carlo fan-out blocks.

Units and signs. Shocks are SIGNED FRACTIONS (-0.20 = a 20 % fall; the UI shows percent).
Position values v_i = qty_i x price_i are signed currency (short < 0). A P&L is signed
currency (a loss < 0); VaR and CVaR are POSITIVE currency losses at `confidence`
(alpha = 1 - confidence), one trading day, as in core/risk.py. `pnl_pct` = pnl / equity.

Risk model, shared by every scenario of a run (computed once, cached per process by a digest
of the returns): mu and Sigma, the sample mean and covariance (ddof=1) of the portfolio's
daily simple returns; s_i = sqrt(Sigma_ii); z = Phi^-1(alpha). The portfolio figures are
parametric (Gaussian), as core.risk.portfolio_var:
    VaR(v, Sigma)  = -(mu.v + z sd),  CVaR = -(mu.v - sd phi(z) / alpha),  sd = sqrt(v' Sigma v)
    component_i    = -v_i (mu_i + z (Sigma v)_i / sd)      (Euler: the components sum to VaR)
`var_before` / `cvar_before` are VaR(v, Sigma) in every result; `var_after` / `cvar_after`
the same measure after the shock, unless the kind says otherwise below.

Scenarios (defaults in DEFAULT_PARAMS, ranges in PARAM_RANGES):
- market_crash: shock_i = max(beta_i x index_shock, -1); pnl_i = v_i shock_i; the book is
  revalued v'_i = v_i (1 + shock_i) and var_after = VaR(v', Sigma).
- custom: shock_i = asset_shocks[symbol_i] where given, else max(beta_i x factor_shocks
  ["index"], -1) (0 without an index shock); then as market_crash.
- volatility_spike (multiplier m): Sigma' = m^2 Sigma (every volatility x m, correlations and
  means kept). var_after = VaR(v, Sigma'). P&L impact := -var_after, "the loss at the
  confidence level under the stressed volatility"; pnl_i = -component_i under Sigma' (sums to
  the impact). extras.monte_carlo: n_paths full-revaluation Student-t paths (core.risk's
  generator, fit_student_t + Cholesky) of returns scaled around the mean, r' = mu + m (r - mu):
  such a path is the base path mapped by P&L' = mu.v + m (P&L - mu.v), so ONE simulation
  gives the simulated VaR / CVaR before and after (equal, to float32 rounding, to
  core.risk.monte_carlo_var_cvar on the scaled returns with the same seed when the covariance
  is positive definite; with fewer days than assets it is singular, core.risk factors it by
  eigen-decomposition and the engine by a ridge Cholesky (`_factor`): the same distribution,
  other paths).
- correlation_breakdown (target rho, blend b): correlations C -> (1 - b) C + b T with T = rho
  off the diagonal, 1 on it; volatilities kept: Sigma' = diag(s) C' diag(s). C' is a convex
  blend of two PSD matrices, so PSD by construction. var_after, P&L impact and pnl_i as
  volatility_spike. extras: diversification ratio DR = sum_i |v_i| s_i / sd (1 = none left)
  and the average pairwise correlation, before and after. Computed in O(n) from Sigma v:
  with a_i = v_i s_i, v' Sigma' v = (1-b) v' Sigma v + b (rho (sum a)^2 + (1-rho) sum a^2).
- liquidity_crisis (premium p, spread multiplier k_s, impact coefficient Y, participation q):
  liquidation cost of position i, a fraction of |v_i|:
      c_i = half_spread_i x k_s + p + Y s_i sqrt(|qty_i| / ADV_i)     (square-root impact law)
  capped at 1 for longs (a sale cannot fetch less than nothing); cost_i = c_i |v_i|,
  pnl_i = -cost_i; days to liquidate_i = |qty_i| / (q ADV_i). var_after / cvar_after are the
  liquidity-adjusted figures VaR + total cost (Bangia et al. 1999: the exit cost is added to
  the market risk).
- monte_carlo (n_paths, n_chunks, distribution): the fan-out simulation below, in one
  process; var_after / cvar_after are the SIMULATED figures, P&L impact := -var_after, and
  pnl_i = the Euler components of the parametric VaR rescaled to sum to the impact
  (proportional allocation: the paths themselves keep no per-position tail).

Every result also carries the limit rows that would breach after the shock (the book's
post-shock exposures and equity E + pnl against `limits.scaled(E)`; the day's loss counts
from the portfolio's start-of-day equity) and whether the SafetyController's daily-loss and
drawdown rules (core.safety.evaluate_rules + decide, from ACTIVE) would halt trading.

Monte Carlo fan-out (exact merge). `mc_plan` splits n_paths into chunks; chunk i draws from
np.random.default_rng([seed, i]) with core.risk._scenarios (the Student-t fit, factored by
`_factor` under one BLAS thread, so every process builds the same bits) and returns every P&L <= its keep-th smallest (keep from
`mc_tail_keep`: the sorted positions numpy's linear percentile reads at the largest alpha,
ties included), its histogram counts, sum and sum of squares. Any chunk's keep-th smallest is
>= the whole run's, so the union of the tails holds the run's `keep` smallest values and
every value <= its percentile: VaR (position alpha (N - 1) of the virtual sorted array,
linear interpolation) and CVaR (-mean of P&L <= the percentile, core.risk's definition) come
out as from the full vector. Sums merge with math.fsum, so the chunks' order is irrelevant.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import special

from core import risk, risk_manager, schema
from core.limits import REFERENCE_CAPITAL, LimitConfig, LimitMonitor
from core.market import FactorModel, daily_bars
from core.safety import ACTIVE, HALTED, LOSS_RULES, RuleInputs, SafetyConfig, decide, evaluate_rules

STANDARD_KINDS = ("market_crash", "volatility_spike", "liquidity_crisis", "correlation_breakdown")
KINDS = STANDARD_KINDS + ("custom", "monte_carlo")
LABELS = {"market_crash": "Market crash", "volatility_spike": "Volatility spike",
          "liquidity_crisis": "Liquidity crisis", "correlation_breakdown": "Correlation breakdown",
          "custom": "Custom scenario", "monte_carlo": "Monte Carlo"}
SOURCES = ("live", "upload", "synthetic")
MC_DISTRIBUTIONS = risk.MC_DISTRIBUTIONS
FACTORS = ("index",)

MIN_HISTORY_DAYS = 20          # daily returns needed for a covariance worth the name
MAX_NAME = 64
MAX_CUSTOM_SCENARIOS = 200
MC_MIN_CHUNK_PATHS = 500       # a chunk smaller than this costs more in overhead than it computes
MC_HIST_BINS = 60
MC_HIST_SDS = 6.0              # histogram range: parametric mean +- 6 sd of the P&L
TOP_WORST = 5
CSV_MAX_BYTES = 1024 * 1024
CSV_MAX_ROWS = 5000
CSV_MAX_ERRORS = 50
MAX_ABS_WEIGHT = 10.0          # one CSV position at most 10x the equity
MAX_ABS_QTY = 1e12
MAX_PRICE = 1e9


class StressInputError(ValueError):
    """A bad scenario parameter or portfolio; `field` names the form field (or None)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# ---- scenario parameters -------------------------------------------------------------
@dataclass(frozen=True)
class _Range:
    """One numeric parameter: default, bounds (closed unless *_open), integer or not."""
    default: float
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    hint: str = ""

    def text(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def contains(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below


_SHOCK_HINT = "a signed fraction: -0.20 is a 20 % fall, -1 is -100 %"
_SHOCK = _Range(0.0, -1.0, 10.0, hint=_SHOCK_HINT)
PARAM_RANGES: dict[str, dict[str, _Range]] = {
    "market_crash": {"index_shock": _Range(-0.20, -1.0, 0.0, high_open=True, hint=_SHOCK_HINT)},
    "volatility_spike": {
        "multiplier": _Range(3.0, 0.0, 20.0, low_open=True, hint="every volatility is multiplied by it"),
        "n_paths": _Range(10_000, 1000, 1_000_000, integer=True, hint="Monte Carlo paths")},
    "liquidity_crisis": {
        "premium": _Range(0.05, 0.0, 1.0, high_open=True, hint="fraction of each position's value"),
        "spread_multiplier": _Range(5.0, 1.0, 100.0, hint="quoted spreads are widened by it"),
        "impact_coefficient": _Range(1.0, 0.0, 10.0, hint="Y of the square-root impact law"),
        "participation": _Range(0.10, 0.0, 1.0, low_open=True,
                                hint="largest fraction of the daily volume sold per day")},
    "correlation_breakdown": {
        "target_correlation": _Range(1.0, 0.0, 1.0, hint="correlation every pair is pushed to"),
        "blend": _Range(1.0, 0.0, 1.0, hint="0 keeps today's correlations, 1 replaces them")},
    "monte_carlo": {
        "n_paths": _Range(100_000, 1000, 1_000_000, integer=True, hint="Monte Carlo paths"),
        "n_chunks": _Range(20, 1, 256, integer=True, hint="independent chunks (fan-out units)")},
    "custom": {},
}
DEFAULT_PARAMS: dict[str, dict] = {
    kind: {name: (int(r.default) if r.integer else float(r.default)) for name, r in ranges.items()}
    for kind, ranges in PARAM_RANGES.items()}
DEFAULT_PARAMS["monte_carlo"]["distribution"] = "student_t"
DEFAULT_PARAMS["custom"] = {"asset_shocks": {}, "factor_shocks": {"index": -0.10}}


def _number(name: str, value, rng: _Range, field: str | None = None):
    """`value` as a float (int for integer parameters) inside `rng`, or StressInputError."""
    field = field or name
    if isinstance(value, bool) or value is None:
        raise StressInputError(f"{name} must be a number, got {value!r}", field)
    try:
        x = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise StressInputError(f"{name} must be a number, got {value!r}", field) from None
    if not math.isfinite(x):
        raise StressInputError(f"{name} must be a finite number, got {value!r}", field)
    if rng.integer and x != int(x):
        raise StressInputError(f"{name} must be a whole number, got {value!r}", field)
    if not rng.contains(x):
        hint = f" ({rng.hint})" if rng.hint else ""
        raise StressInputError(f"{name} must be within {rng.text()}{hint}, got {x:g}", field)
    return int(x) if rng.integer else x


def _shock_map(name: str, raw, allowed: Sequence[str] | None, what: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StressInputError(f"{name} must be an object {{{what}: shock}}, got {type(raw).__name__}", name)
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip():
            raise StressInputError(f"{name}: every {what} must be a non-empty name, got {key!r}", name)
        key = key.strip()
        if allowed is not None and key not in allowed:
            known = ", ".join(allowed) if len(allowed) <= 8 else f"{allowed[0]} .. {allowed[-1]}"
            raise StressInputError(f"{name}: unknown {what} {key!r} (known: {known})", name)
        out[key] = _number(f"{name}[{key}]", value, _SHOCK, name)
    return out


def _validate_params(kind: str, params: dict, symbols: Sequence[str] | None) -> dict:
    ranges = PARAM_RANGES[kind]
    known = set(DEFAULT_PARAMS[kind])
    for key in params:
        if key not in known:
            raise StressInputError(f"unknown parameter {key!r} for {kind} (expected {sorted(known)})",
                                   key if isinstance(key, str) else None)
    out = {name: _number(name, params.get(name, r.default), r) for name, r in ranges.items()}
    if kind == "monte_carlo":
        dist = params.get("distribution", "student_t")
        if dist not in MC_DISTRIBUTIONS:
            raise StressInputError(f"distribution must be one of {MC_DISTRIBUTIONS}, got {dist!r}",
                                   "distribution")
        out["distribution"] = dist
        if out["n_paths"] // out["n_chunks"] < MC_MIN_CHUNK_PATHS:
            raise StressInputError(f"n_chunks {out['n_chunks']} is too many for {out['n_paths']} paths: "
                                   f"each chunk needs at least {MC_MIN_CHUNK_PATHS}", "n_chunks")
    if kind == "custom":
        if "asset_shocks" not in params and "factor_shocks" not in params:
            params = DEFAULT_PARAMS["custom"]          # neither given: the default index shock
        out["asset_shocks"] = _shock_map("asset_shocks", params.get("asset_shocks"),
                                         None if symbols is None else tuple(symbols), "symbol")
        out["factor_shocks"] = _shock_map("factor_shocks", params.get("factor_shocks"), FACTORS,
                                          "factor")
        if not out["asset_shocks"] and not out["factor_shocks"]:
            raise StressInputError("a custom scenario needs at least one asset or factor shock",
                                   "asset_shocks")
    return out


def validate_scenario(spec, symbols: Sequence[str] | None = None) -> dict:
    """The normalized scenario {"kind", "name", "params"} with every parameter present (floats,
    ints for path and chunk counts), or StressInputError naming the field. `symbols`, when
    given, are the portfolio's: custom asset shocks must name one of them."""
    if not isinstance(spec, dict):
        raise StressInputError(f"a scenario must be an object {{kind, params, name}}, got {type(spec).__name__}")
    extra = sorted(set(spec) - {"kind", "params", "name"}, key=str)
    if extra:
        raise StressInputError(f"unknown scenario key(s) {extra}: expected kind, params, name",
                               str(extra[0]))
    kind = spec.get("kind")
    if kind not in KINDS:
        raise StressInputError(f"unknown scenario kind {kind!r}; expected one of {KINDS}", "kind")
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise StressInputError(f"params must be an object, got {type(params).__name__}", "params")
    name = spec.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        name = LABELS[kind]
    if not isinstance(name, str) or len(name.strip()) > MAX_NAME:
        raise StressInputError(f"name must be text of at most {MAX_NAME} characters", "name")
    return {"kind": kind, "name": name.strip(), "params": _validate_params(kind, params, symbols)}


def _confidence(confidence) -> float:
    c = _number("confidence", confidence, _Range(0.95, 0.5, 1.0, low_open=True, high_open=True))
    return float(c)


# ---- portfolios ----------------------------------------------------------------------
def _frozen(values, name: str, n: int, ndim: int = 1) -> np.ndarray:
    """A read-only float64 copy with `n` entries (columns when ndim=2), or StressInputError."""
    try:
        arr = np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise StressInputError(f"portfolio {name} must be a {'matrix' if ndim == 2 else 'list'} of numbers",
                               "portfolio") from None
    if arr.ndim != ndim or arr.shape[-1] != n:
        per = "one value" if ndim == 1 else "one column"
        raise StressInputError(f"portfolio {name} must have {per} per symbol ({n}), got shape {arr.shape}",
                               "portfolio")
    if not np.isfinite(arr).all():
        raise StressInputError(f"portfolio {name} must be finite numbers", "portfolio")
    arr.setflags(write=False)
    return arr


def _positive(value, name: str, optional: bool = False) -> float | None:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value <= 0:
        raise StressInputError(f"portfolio {name} must be a finite number > 0, got {value!r}", "portfolio")
    return float(value)


@dataclass(frozen=True, eq=False)
class Portfolio:
    """The book a scenario is applied to. Arrays are float64 and read-only, one entry per
    symbol; `returns` is (days x assets) simple daily returns, the history the risk model is
    fitted on; `equity` the account's capital that percentages refer to. `day_start_equity`
    (the daily-loss rule's base) and `peak_equity` (the drawdown rule's) default to equity."""

    symbols: tuple[str, ...]
    qty: np.ndarray
    price: np.ndarray
    betas: np.ndarray
    adv: np.ndarray                  # average daily volume, shares
    half_spread_bps: np.ndarray
    returns: np.ndarray
    equity: float
    source: str = "synthetic"
    day_start_equity: float | None = None
    peak_equity: float | None = None

    def __post_init__(self):
        symbols = tuple(self.symbols) if isinstance(self.symbols, (list, tuple)) else None
        if not symbols or not all(isinstance(s, str) and s for s in symbols):
            raise StressInputError("portfolio symbols must be a non-empty list of names", "portfolio")
        if len(set(symbols)) != len(symbols):
            raise StressInputError("portfolio symbols must be unique", "portfolio")
        n = len(symbols)
        set_ = functools.partial(object.__setattr__, self)
        set_("symbols", symbols)
        for name in ("qty", "price", "betas", "adv", "half_spread_bps"):
            set_(name, _frozen(getattr(self, name), name, n))
        set_("returns", _frozen(self.returns, "returns", n, ndim=2))
        days = self.returns.shape[0]
        if days < MIN_HISTORY_DAYS:
            raise StressInputError(f"the portfolio has {days} days of returns; at least "
                                   f"{MIN_HISTORY_DAYS} are needed to estimate its risk", "portfolio")
        if (self.price <= 0).any() or (self.adv <= 0).any() or (self.half_spread_bps < 0).any():
            raise StressInputError("portfolio prices and volumes must be > 0, spreads >= 0", "portfolio")
        if self.source not in SOURCES:
            raise StressInputError(f"portfolio source must be one of {SOURCES}", "portfolio")
        set_("equity", _positive(self.equity, "equity"))
        set_("day_start_equity", _positive(self.day_start_equity, "day_start_equity", True))
        set_("peak_equity", _positive(self.peak_equity, "peak_equity", True))

    @property
    def values(self) -> np.ndarray:
        """Signed position values qty x price, currency."""
        return self.qty * self.price

    @functools.cached_property
    def digest(self) -> str:
        """Content hash of the returns: the key of the per-process risk model cache."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.returns.shape).encode())
        h.update(np.ascontiguousarray(self.returns).tobytes())
        return h.hexdigest()

    def to_json(self) -> dict:
        """Plain lists and floats; `from_json` rebuilds it bit for bit (floats print by repr)."""
        return {"symbols": list(self.symbols), "qty": self.qty.tolist(), "price": self.price.tolist(),
                "betas": self.betas.tolist(), "adv": self.adv.tolist(),
                "half_spread_bps": self.half_spread_bps.tolist(), "returns": self.returns.tolist(),
                "equity": self.equity, "source": self.source,
                "day_start_equity": self.day_start_equity, "peak_equity": self.peak_equity}

    @classmethod
    def from_json(cls, d: dict) -> "Portfolio":
        if not isinstance(d, dict):
            raise StressInputError("a portfolio must be an object", "portfolio")
        try:
            return cls(symbols=tuple(d["symbols"]), qty=d["qty"], price=d["price"], betas=d["betas"],
                       adv=d["adv"], half_spread_bps=d["half_spread_bps"], returns=d["returns"],
                       equity=d["equity"], source=d.get("source", "upload"),
                       day_start_equity=d.get("day_start_equity"), peak_equity=d.get("peak_equity"))
        except (KeyError, TypeError) as exc:
            raise StressInputError(f"malformed portfolio: {exc!r}", "portfolio") from None


@dataclass(frozen=True, eq=False)
class Universe:
    """The symbols a portfolio may hold, with what the engine needs of each: factor model
    betas, average daily volume and half spread, the last close and the daily returns."""

    symbols: tuple[str, ...]
    betas: np.ndarray
    adv: np.ndarray
    half_spread_bps: np.ndarray
    last_price: np.ndarray
    returns: np.ndarray              # days x symbols

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_model(cls, model: FactorModel, closes: np.ndarray, lookback: int | None = None) -> "Universe":
        """From the factor model's parameters and a (days x symbols) matrix of closes."""
        closes = np.asarray(closes, dtype=float)
        if closes.ndim != 2 or closes.shape[1] != model.n:
            raise StressInputError(f"closes must be (days x {model.n}), got {closes.shape}", "portfolio")
        if lookback is not None:
            closes = closes[-(lookback + 1):]
        if closes.shape[0] <= MIN_HISTORY_DAYS:
            raise StressInputError(f"only {max(closes.shape[0] - 1, 0)} days of price history; at least "
                                   f"{MIN_HISTORY_DAYS} are needed to estimate risk", "portfolio")
        return cls(symbols=model.symbols, betas=model.betas, adv=model.daily_volume,
                   half_spread_bps=model.half_spread_bps, last_price=closes[-1],
                   returns=closes[1:] / closes[:-1] - 1.0)

    @classmethod
    def from_history(cls, conn, settings) -> "Universe":
        """The simulator's universe: FactorModel.from_seed(settings.symbols, settings.seed) and
        the last settings.risk_lookback_days daily returns of the history (its memory-mapped
        closes under settings.var_dir when current: core.shared_closes)."""
        model = FactorModel.from_seed(settings.symbols, settings.seed)
        lookback = settings.risk_lookback_days
        closes = risk_manager.read_closes(conn, list(model.symbols), last_rows=lookback + 1,
                                          var_dir=settings.var_dir)
        return cls.from_model(model, closes, lookback)

    @classmethod
    def synthetic(cls, n_assets: int, seed: int = 0, days: int = 252) -> "Universe":
        return _synthetic_universe(int(n_assets), int(seed), int(days))

    def portfolio(self, symbols: Sequence[str], qty, price, equity: float, source: str,
                  **kw) -> Portfolio:
        """A Portfolio of `symbols` (all in the universe) with their model parameters."""
        idx = [self.index[s] for s in symbols]
        return Portfolio(symbols=tuple(symbols), qty=qty, price=price, betas=self.betas[idx],
                         adv=self.adv[idx], half_spread_bps=self.half_spread_bps[idx],
                         returns=self.returns[:, idx], equity=equity, source=source, **kw)


@functools.lru_cache(maxsize=4)
def _synthetic_universe(n_assets: int, seed: int, days: int) -> Universe:
    model = FactorModel.from_seed(n_assets, seed)
    closes = daily_bars(model, days + 1, seed)["close"][:, :n_assets]
    return Universe.from_model(model, closes)


def synthetic_portfolio(n_assets: int, seed: int = 0, days: int = 252,
                        equity: float = 1e6) -> Portfolio:
    """A seeded book on the simulator's model: `days` of returns from `daily_bars`, about 80 %
    of the positions long and 20 % short, gross exposure ~= equity, whole shares."""
    universe = Universe.synthetic(n_assets, seed, days)
    rng = np.random.default_rng([seed, 0x5EED])
    side = np.where(rng.random(n_assets) < 0.8, 1.0, -1.0)
    weights = side * rng.uniform(0.5, 1.5, n_assets)
    weights /= np.abs(weights).sum()
    qty = np.round(weights * equity / universe.last_price)
    qty = np.where(qty == 0, side, qty)
    return universe.portfolio(universe.symbols, qty, universe.last_price, equity, "synthetic")


def live_portfolio(client, conn, settings) -> Portfolio:
    """The paper broker's open positions (risk_manager.read_portfolio), the last
    settings.risk_lookback_days of daily returns from the history, and the simulator's factor
    model for betas, volumes and spreads. Start-of-day equity comes from the account, the peak
    from the SafetyController's memory (schema.SAFETY_RULES). An EMPTY BOOK IS AN ERROR:
    StressInputError (field "portfolio") saying there is nothing to stress, as is an account
    without equity or a symbol outside the universe."""
    account, positions = risk_manager.read_portfolio(client)
    equity = account.get("equity", math.nan)
    if not (math.isfinite(equity) and equity > 0):
        raise StressInputError("the paper account has no equity yet: is the pipeline running?", "portfolio")
    if not positions:
        raise StressInputError("the live portfolio has no open positions: nothing to stress "
                               "(upload a portfolio instead)", "portfolio")
    universe = Universe.from_history(conn, settings)
    unknown = [p["symbol"] for p in positions if p["symbol"] not in universe.index]
    if unknown:
        raise StressInputError(f"positions in symbols outside the universe: {unknown[:5]}", "portfolio")
    sod = account.get("day_start_equity", math.nan)
    peak = _finite_float(client.hget(schema.SAFETY_RULES, "peak_equity"))
    return universe.portfolio([p["symbol"] for p in positions], [p["qty"] for p in positions],
                              [p["price"] for p in positions], equity, "live",
                              day_start_equity=sod if math.isfinite(sod) and sod > 0 else None,
                              peak_equity=max(peak, equity) if math.isfinite(peak) else None)


def _finite_float(raw) -> float:
    try:
        x = float(raw)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


# ---- CSV upload ----------------------------------------------------------------------
_COLUMNS = {"symbol": ("symbol", "ticker"), "quantity": ("quantity", "qty", "shares"),
            "weight": ("weight",), "price": ("price",)}


def _header(cells: list[str]) -> tuple[dict[str, int], str | None]:
    """Column index per canonical name, or an error message."""
    names = [c.strip().lower() for c in cells]
    cols: dict[str, int] = {}
    for canon, aliases in _COLUMNS.items():
        found = [i for i, n in enumerate(names) if n in aliases]
        if len(found) > 1:
            return {}, f"column {canon!r} appears {len(found)} times"
        if found:
            cols[canon] = found[0]
    if "symbol" not in cols:
        return {}, "missing column 'symbol' (the header needs symbol, quantity or weight, and price)"
    if ("quantity" in cols) == ("weight" in cols):
        return {}, ("give a 'quantity' column or a 'weight' column, not both" if "quantity" in cols
                    else "missing column 'quantity' (shares) or 'weight' (fraction of equity)")
    return cols, None


def _cell_number(label: str, raw: str, percent_ok: bool = False) -> float:
    text = raw.strip()
    scale = 1.0
    if percent_ok and text.endswith("%"):
        text, scale = text[:-1].strip(), 0.01
    if not text:
        raise ValueError(f"{label} is empty")
    try:
        x = float(text) * scale
    except ValueError:
        raise ValueError(f"{label} {raw.strip()!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{label} must be a finite number, got {raw.strip()!r}")
    return x


def _csv_row(cells: list[str], cols: dict[str, int], universe: Universe) -> tuple[str, float, float]:
    """(symbol, amount (quantity or weight), price) of one data row; ValueError with the message."""
    width = max(cols.values()) + 1
    if len(cells) < width:
        raise ValueError(f"expected at least {width} fields, got {len(cells)}")
    symbol = cells[cols["symbol"]].strip().upper()
    if not symbol:
        raise ValueError("symbol is empty")
    if symbol not in universe.index:
        raise ValueError(f"unknown symbol {symbol!r}: no price history to compute its risk from")
    if "weight" in cols:
        amount = _cell_number("weight", cells[cols["weight"]], percent_ok=True)
        if abs(amount) > MAX_ABS_WEIGHT:
            raise ValueError(f"weight {amount:g} is out of range [-{MAX_ABS_WEIGHT:g}, {MAX_ABS_WEIGHT:g}] "
                             "(a fraction of equity: 0.05 or 5% is five percent)")
    else:
        amount = _cell_number("quantity", cells[cols["quantity"]])
        if abs(amount) > MAX_ABS_QTY:
            raise ValueError(f"quantity {amount:g} is out of range (|quantity| <= {MAX_ABS_QTY:g})")
    raw_price = cells[cols["price"]].strip() if "price" in cols and cols["price"] < len(cells) else ""
    price = float(universe.last_price[universe.index[symbol]]) if not raw_price \
        else _cell_number("price", raw_price)
    if not 0 < price <= MAX_PRICE:
        raise ValueError(f"price must be > 0 and <= {MAX_PRICE:g}, got {price:g}")
    return symbol, amount, price


def _decode(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    return text[1:] if text.startswith("\ufeff") else text


def parse_portfolio_csv(text: str | bytes, universe: Universe,
                        equity: float | None = None) -> tuple[Portfolio | None, list[dict]]:
    """Parse an uploaded portfolio, validating row by row.

    Header (case-insensitive, any order, extra columns ignored): symbol, and quantity (shares)
    OR weight (fraction of equity; "5%" is accepted), and optionally price (an empty or absent
    price takes the universe's last close). Comma, semicolon or tab separated; UTF-8 with or
    without BOM. Rows are numbered as a spreadsheet shows them (the header is row 1); blank
    lines are skipped. Returns (portfolio, []) or (None, [{"row", "message"}]) (row None for
    the whole file): any error and nothing runs. `equity`: the capital percentages refer to;
    default 1,000,000 for weights and the gross exposure for quantities.
    """
    raw_size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "replace"))
    if raw_size > CSV_MAX_BYTES:
        return None, [{"row": None, "message": f"the file is {raw_size:,} bytes; at most {CSV_MAX_BYTES:,}"}]
    try:
        content = _decode(text)
    except UnicodeDecodeError:
        return None, [{"row": None, "message": "the file is not UTF-8 text"}]
    if equity is not None:
        try:
            equity = _positive(equity, "equity")
        except StressInputError as exc:
            return None, [{"row": None, "message": str(exc)}]
    first = content.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    reader = csv.reader(io.StringIO(content), delimiter=delimiter)
    errors: list[dict] = []
    cols: dict[str, int] | None = None
    rows: list[tuple[str, float, float]] = []
    seen: dict[str, int] = {}
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if cols is None:
                cols, message = _header(cells)
                if message:
                    return None, [{"row": line, "message": message}]
                continue
            if len(rows) + len(errors) >= CSV_MAX_ROWS:
                return None, [{"row": line, "message": f"more than {CSV_MAX_ROWS:,} positions"}]
            try:
                symbol, amount, price = _csv_row(cells, cols, universe)
                if symbol in seen:
                    raise ValueError(f"duplicate symbol {symbol!r} (first on row {seen[symbol]})")
            except ValueError as exc:
                errors.append({"row": line, "message": str(exc)})
                continue
            seen[symbol] = line
            rows.append((symbol, amount, price))
    except csv.Error as exc:
        errors.append({"row": reader.line_num, "message": f"malformed CSV: {exc}"})
    if cols is None:
        return None, [{"row": None, "message": "the file is empty: expected a header and positions"}]
    if not rows and not errors:
        return None, [{"row": None, "message": "no positions below the header"}]
    if errors:
        extra = len(errors) - CSV_MAX_ERRORS
        return None, errors[:CSV_MAX_ERRORS] + ([{"row": None, "message": f"... and {extra} more errors"}]
                                                if extra > 0 else [])
    return _upload_portfolio(rows, "weight" in cols, universe, equity)


def _upload_portfolio(rows, weighted: bool, universe: Universe,
                      equity: float | None) -> tuple[Portfolio | None, list[dict]]:
    symbols = [r[0] for r in rows]
    amount = np.array([r[1] for r in rows])
    price = np.array([r[2] for r in rows])
    if not amount.any():
        return None, [{"row": None, "message": "every position is zero: nothing to stress"}]
    if weighted:
        equity = equity or REFERENCE_CAPITAL
        qty = amount * equity / price
    else:
        qty = amount
        equity = equity or float(np.abs(qty * price).sum())
    try:
        return universe.portfolio(symbols, qty, price, equity, "upload"), []
    except StressInputError as exc:
        return None, [{"row": None, "message": str(exc)}]


# ---- the risk model shared by the scenarios ----------------------------------------------
@dataclass(frozen=True)
class _Model:
    """mean, covariance and Student-t fit of one returns matrix (core.risk.fit_student_t, with
    fit["mean32"] added) and the float32 Cholesky factor of its scale matrix, the
    simulation's inputs (core.risk._scenarios)."""
    returns: np.ndarray
    fit: dict
    chol: np.ndarray

    @classmethod
    def fitted(cls, returns: np.ndarray) -> "_Model":
        fit = risk.fit_student_t(returns)
        fit["mean32"] = fit["mean"].astype(np.float32)
        return cls(returns, fit, np.asfortranarray(_factor(fit["scale"]), dtype=np.float32))

    @property
    def mean(self) -> np.ndarray:
        return self.fit["mean"]

    @property
    def cov(self) -> np.ndarray:
        return self.fit["cov"]

    @functools.cached_property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def _factor(scale: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = scale, unique and cheap even when scale is singular.

    With fewer days than assets (252 x 500) the sample covariance is singular: Cholesky fails
    and core.risk._cholesky's fallback (eigen-decomposition + QR, ~25 ms at 500 assets) gives
    a factor whose column signs follow the eigenvectors', which change with the BLAS thread
    count. Instead: Cholesky of scale + RIDGE x mean variance x I (the simulated covariance
    moves by 1e-10 relative, far below float32 paths' rounding; ~2 ms), and the fallback only
    if that fails too, with columns signed to a positive diagonal. A regular scale matrix gets
    exactly core.risk's factor."""
    try:
        return np.linalg.cholesky(scale)
    except np.linalg.LinAlgError:
        pass
    ridge = _RIDGE * float(np.trace(scale)) / len(scale)
    try:
        return np.linalg.cholesky(scale + ridge * np.eye(len(scale)))
    except np.linalg.LinAlgError:
        chol = risk._cholesky(scale)
        return chol * np.where(np.diag(chol) < 0, -1.0, 1.0)


_RIDGE = 1e-10
_MODEL_CACHE: OrderedDict[str, _Model] = OrderedDict()
_MODEL_CACHE_SIZE = 8


def _model(portfolio: Portfolio) -> _Model:
    """The portfolio's risk model, fitted once per process per returns digest (a worker
    running 20 chunks of one job fits once)."""
    key = portfolio.digest
    model = _MODEL_CACHE.get(key)
    if model is None:
        # one BLAS thread, as the simulation: the same inputs give the same bits in every
        # process, so chunks fitted in different workers share one Cholesky factor
        with risk._blas_controller().limit(limits=risk.MC_BLAS_THREADS, user_api="blas"):
            model = _Model.fitted(portfolio.returns)
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    else:
        _MODEL_CACHE.move_to_end(key)
    return model


def clear_cache() -> None:
    """Forget the fitted models (benchmarks time a cold run with it)."""
    _MODEL_CACHE.clear()


_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _gaussian(mu_p: float, sd_p: float, alpha: float) -> tuple[float, float]:
    """(VaR, CVaR), positive = loss, of a Gaussian P&L with mean mu_p and sd sd_p."""
    z = float(special.ndtri(alpha))
    return -(mu_p + z * sd_p), -(mu_p - sd_p * math.exp(-0.5 * z * z) / _SQRT_2PI / alpha)


def _euler(mean: np.ndarray, v: np.ndarray, cov_v: np.ndarray, sd_p: float, alpha: float) -> np.ndarray:
    """Component VaR_i = -v_i (mu_i + z (Sigma v)_i / sd): the parts of the parametric VaR."""
    z = float(special.ndtri(alpha))
    if sd_p <= 0:
        return -v * mean
    return -v * (mean + z * cov_v / sd_p)


@dataclass
class _Context:
    """Everything one run shares: the portfolio, its model, the pre-shock figures, config."""
    portfolio: Portfolio
    model: _Model
    confidence: float
    alpha: float
    limits: LimitConfig
    safety: SafetyConfig
    seed: int
    values: np.ndarray
    cov_v: np.ndarray                  # Sigma v
    mu_p: float
    sd_p: float
    var_before: float
    cvar_before: float


def _context(portfolio: Portfolio, confidence, limits, safety, seed) -> _Context:
    if not isinstance(portfolio, Portfolio):
        raise StressInputError("portfolio must be a Portfolio", "portfolio")
    c = _confidence(confidence)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise StressInputError(f"seed must be a non-negative integer, got {seed!r}", "seed")
    model = _model(portfolio)
    v = portfolio.values
    cov_v = model.cov @ v
    mu_p, sd_p = float(model.mean @ v), math.sqrt(max(float(v @ cov_v), 0.0))
    var, cvar = _gaussian(mu_p, sd_p, 1.0 - c)
    return _Context(portfolio, model, c, 1.0 - c, limits or LimitConfig(), safety or SafetyConfig(),
                    int(seed), v, cov_v, mu_p, sd_p, var, cvar)


# ---- scenarios: each returns the kind-specific part of a result --------------------------
def _shock_outcome(ctx: _Context, shocks: np.ndarray) -> dict:
    """Revalue the book by per-asset shocks (fractions): P&L, post-shock VaR with Sigma kept."""
    v = ctx.values
    post = v * (1.0 + shocks)
    cov_post = ctx.model.cov @ post
    var, cvar = _gaussian(float(ctx.model.mean @ post), math.sqrt(max(float(post @ cov_post), 0.0)),
                          ctx.alpha)
    return {"pnl_i": v * shocks, "post_values": post, "var_after": var, "cvar_after": cvar,
            "extras": {"shocks": dict(zip(ctx.portfolio.symbols, shocks.tolist()))}}


def _market_crash(ctx: _Context, p: dict) -> dict:
    return _shock_outcome(ctx, np.maximum(ctx.portfolio.betas * p["index_shock"], -1.0))


def _custom(ctx: _Context, p: dict) -> dict:
    index = p["factor_shocks"].get("index", 0.0)
    shocks = np.maximum(ctx.portfolio.betas * index, -1.0)
    for symbol, shock in p["asset_shocks"].items():
        shocks[ctx.portfolio.symbols.index(symbol)] = shock
    return _shock_outcome(ctx, shocks)


def _distribution_outcome(ctx: _Context, cov_v_after: np.ndarray, sd_after: float) -> dict:
    """A stressed covariance, book unchanged: P&L impact = -VaR after, split by Euler."""
    var, cvar = _gaussian(ctx.mu_p, sd_after, ctx.alpha)
    parts = _euler(ctx.model.mean, ctx.values, cov_v_after, sd_after, ctx.alpha)
    return {"pnl_i": -parts, "post_values": ctx.values, "var_after": var, "cvar_after": cvar,
            "pnl": -var, "extras": {"sd_before": ctx.sd_p, "sd_after": sd_after}}


def _volatility_spike(ctx: _Context, p: dict) -> dict:
    m = p["multiplier"]
    out = _distribution_outcome(ctx, ctx.cov_v * (m * m), ctx.sd_p * m)
    pnl = _simulate(ctx.portfolio, ctx.model, "student_t", p["n_paths"],
                    np.random.default_rng(ctx.seed))
    stressed = ctx.mu_p + m * (pnl - ctx.mu_p)
    before = risk.historical_var_cvar(pnl, ctx.confidence)
    after = risk.historical_var_cvar(stressed, ctx.confidence)
    out["extras"]["monte_carlo"] = {"n_paths": p["n_paths"], "seed": ctx.seed, "nu": ctx.model.fit["nu"],
                                    "var_before": before[0], "cvar_before": before[1],
                                    "var_after": after[0], "cvar_after": after[1]}
    return out


def _correlation_breakdown(ctx: _Context, p: dict) -> dict:
    rho, b = p["target_correlation"], p["blend"]
    s, v = ctx.model.sd, ctx.values
    a = v * s
    var_p = (1 - b) * ctx.sd_p ** 2 + b * (rho * a.sum() ** 2 + (1 - rho) * (a * a).sum())
    sd_after = math.sqrt(max(var_p, 0.0))
    # (Sigma' v)_i = s_i [(1 - b) (C a)_i + b (rho sum(a) + (1 - rho) a_i)], (C a)_i = (Sigma v)_i / s_i
    cov_v_after = (1 - b) * ctx.cov_v + b * s * (rho * a.sum() + (1 - rho) * a)
    out = _distribution_outcome(ctx, cov_v_after, sd_after)
    avg_before = _average_correlation(ctx.model.cov, s)
    gross_risk = float(np.abs(a).sum())
    out["extras"].update(
        diversification_ratio_before=gross_risk / ctx.sd_p if ctx.sd_p > 0 else None,
        diversification_ratio_after=gross_risk / sd_after if sd_after > 0 else None,
        avg_correlation_before=avg_before,
        avg_correlation_after=None if avg_before is None else (1 - b) * avg_before + b * rho)
    return out


def _average_correlation(cov: np.ndarray, sd: np.ndarray) -> float | None:
    n = len(sd)
    if n < 2 or (sd <= 0).any():
        return None
    inv = 1.0 / sd
    return float((inv @ cov @ inv - n) / (n * (n - 1)))


def _liquidity_crisis(ctx: _Context, p: dict) -> dict:
    pf, v = ctx.portfolio, ctx.values
    size = np.abs(pf.qty) / pf.adv                      # position in days of volume
    spread = pf.half_spread_bps * 1e-4 * p["spread_multiplier"]
    impact = p["impact_coefficient"] * ctx.model.sd * np.sqrt(size)
    frac = spread + p["premium"] + impact
    frac = np.where(v > 0, np.minimum(frac, 1.0), frac)
    cost = frac * np.abs(v)
    days = size / p["participation"]
    total = float(cost.sum())
    gross = np.abs(v)
    breakdown = {"spread": float((spread * gross).sum()), "premium": float(p["premium"] * gross.sum()),
                 "impact": float((impact * gross).sum())}
    liquidation = [{"symbol": s, "cost": c, "cost_pct": f, "days_to_liquidate": d}
                   for s, c, f, d in zip(pf.symbols, cost.tolist(), frac.tolist(), days.tolist())]
    return {"pnl_i": -cost, "post_values": v, "var_after": ctx.var_before + total,
            "cvar_after": ctx.cvar_before + total,
            "extras": {"total_cost": total, "cost_breakdown": breakdown,
                       "max_days_to_liquidate": float(days.max()),
                       "value_weighted_days": float((days * gross).sum() / gross.sum()) if gross.sum() else 0.0,
                       "liquidation": liquidation}}


def _monte_carlo(ctx: _Context, p: dict, mc: dict | None = None) -> dict:
    """`mc`: the merged simulation when it ran elsewhere (the job fan-out), else run here."""
    levels = tuple(sorted({0.95, 0.99, ctx.confidence}))
    mc = mc or mc_single(ctx.portfolio, p["n_paths"], p["n_chunks"], ctx.seed, levels, p["distribution"])
    row = next((r for r in mc["by_confidence"] if abs(r["confidence"] - ctx.confidence) < 1e-9), None)
    if row is None:
        raise StressInputError(f"the simulation has no figures at confidence {ctx.confidence:g}",
                               "confidence")
    parts = _euler(ctx.model.mean, ctx.values, ctx.cov_v, ctx.sd_p, ctx.alpha)
    total = float(parts.sum())
    share = parts / total if total else np.zeros_like(parts)
    return {"pnl_i": -row["var"] * share, "post_values": ctx.values, "var_after": row["var"],
            "cvar_after": row["cvar"], "pnl": -row["var"], "extras": {"monte_carlo": mc}}


_SCENARIOS = {"market_crash": _market_crash, "volatility_spike": _volatility_spike,
              "liquidity_crisis": _liquidity_crisis, "correlation_breakdown": _correlation_breakdown,
              "custom": _custom, "monte_carlo": _monte_carlo}


# ---- results -----------------------------------------------------------------------------
def _none_if_inf(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _breaches(ctx: _Context, post_values: np.ndarray, post_equity: float, day_start: float) -> list[dict]:
    monitor = LimitMonitor(ctx.limits.scaled(ctx.portfolio.equity))
    rows = monitor.utilization(dict(zip(ctx.portfolio.symbols, post_values.tolist())), post_equity,
                               day_start)
    return [{k: _none_if_inf(x) for k, x in row.items()} for row in rows if row["breached"]]


def _safety(ctx: _Context, post_equity: float, day_start: float) -> dict:
    """The SafetyController's loss rules on the post-shock equity, from ACTIVE."""
    peak = max(ctx.portfolio.peak_equity or ctx.portfolio.equity, ctx.portfolio.equity)
    rules = evaluate_rules(ctx.safety, RuleInputs(equity=post_equity, day_start_equity=day_start),
                           {"peak_equity": peak}, 0.0)
    step = decide(ctx.safety, ACTIVE, {}, rules, {}, 0.0)
    state = step["to_state"] if step else ACTIVE
    return {"would_halt": state == HALTED, "halt_reason": step["reason"] if state == HALTED else None,
            "safety_state": state, "safety_rules": [r for r in rules if r["name"] in LOSS_RULES]}


def _result(ctx: _Context, spec: dict, out: dict, started: float) -> dict:
    pf = ctx.portfolio
    pnl_i = out["pnl_i"]
    pnl = float(out.get("pnl", pnl_i.sum()))
    post_equity = pf.equity + pnl
    day_start = pf.day_start_equity or pf.equity
    positions = [{"symbol": s, "value": v, "pnl": x}
                 for s, v, x in zip(pf.symbols, ctx.values.tolist(), pnl_i.tolist())]
    worst = [positions[i] for i in np.argsort(pnl_i, kind="stable")[:TOP_WORST] if pnl_i[i] < 0]
    return {"kind": spec["kind"], "name": spec["name"], "params": spec["params"],
            "confidence": ctx.confidence, "equity": pf.equity, "equity_after": post_equity,
            "pnl": pnl, "pnl_pct": pnl / pf.equity,
            "var_before": ctx.var_before, "var_after": float(out["var_after"]),
            "cvar_before": ctx.cvar_before, "cvar_after": float(out["cvar_after"]),
            "positions": positions, "worst_positions": worst,
            "breaches": _breaches(ctx, out["post_values"], post_equity, day_start),
            **_safety(ctx, post_equity, day_start),
            "extras": out["extras"], "duration_ms": 1000.0 * (time.perf_counter() - started)}


def _run(ctx: _Context, spec: dict) -> dict:
    started = time.perf_counter()
    spec = validate_scenario(spec, ctx.portfolio.symbols)
    return _result(ctx, spec, _SCENARIOS[spec["kind"]](ctx, spec["params"]), started)


def run_scenario(portfolio: Portfolio, spec: dict, *, confidence: float = 0.95,
                 limits: LimitConfig | None = None, safety: SafetyConfig | None = None,
                 seed: int = 0) -> dict:
    """Apply one scenario (validated by `validate_scenario`) to `portfolio`. Returns a
    JSON-safe dict: {kind, name, params, confidence, equity, equity_after, pnl, pnl_pct,
    var_before, var_after, cvar_before, cvar_after, positions [{symbol, value, pnl}],
    worst_positions (top 5 losses), breaches (limit rows over their limit), would_halt,
    halt_reason, safety_state, safety_rules, extras {kind-specific}, duration_ms}.
    `limits` are in REFERENCE_CAPITAL terms (LimitConfig's defaults) and scaled to the
    portfolio's equity. Bad input raises StressInputError."""
    with risk._blas_controller().limit(limits=risk.MC_BLAS_THREADS, user_api="blas"):
        started = time.perf_counter()
        ctx = _context(portfolio, confidence, limits, safety, seed)
        result = _run(ctx, spec)
        result["duration_ms"] = 1000.0 * (time.perf_counter() - started)
    return result


def run_standard(portfolio: Portfolio, *, confidence: float = 0.95, limits: LimitConfig | None = None,
                 safety: SafetyConfig | None = None, seed: int = 0) -> list[dict]:
    """The four STANDARD_KINDS with their default parameters, sharing one risk model and the
    pre-shock figures; arguments and results as `run_scenario`."""
    with risk._blas_controller().limit(limits=risk.MC_BLAS_THREADS, user_api="blas"):
        ctx = _context(portfolio, confidence, limits, safety, seed)
        return [_run(ctx, {"kind": kind}) for kind in STANDARD_KINDS]


def mc_scenario_result(portfolio: Portfolio, spec: dict, merged: dict, *, confidence: float = 0.95,
                       limits: LimitConfig | None = None, safety: SafetyConfig | None = None,
                       seed: int = 0) -> dict:
    """run_scenario's result for a monte_carlo `spec` whose simulation ran as a fan-out:
    `merged` is `mc_merge` of its chunks (confidences including `confidence`). Equal to
    run_scenario(portfolio, spec, ...) with the same plan and seed (but for duration_ms)."""
    with risk._blas_controller().limit(limits=risk.MC_BLAS_THREADS, user_api="blas"):
        started = time.perf_counter()
        ctx = _context(portfolio, confidence, limits, safety, seed)
        spec = validate_scenario(spec, portfolio.symbols)
        if spec["kind"] != "monte_carlo":
            raise StressInputError(f"a merged simulation belongs to a monte_carlo scenario, not {spec['kind']}",
                                   "kind")
        return _result(ctx, spec, _monte_carlo(ctx, spec["params"], merged), started)


# ---- Monte Carlo fan-out -----------------------------------------------------------------
def _check_paths(n_paths) -> int:
    r = PARAM_RANGES["monte_carlo"]["n_paths"]
    return _number("n_paths", n_paths, r)


def mc_plan(n_paths: int, n_chunks: int) -> list[int]:
    """Paths per chunk: an even split (the first n_paths % n_chunks chunks one larger)."""
    n = _check_paths(n_paths)
    k = _number("n_chunks", n_chunks, PARAM_RANGES["monte_carlo"]["n_chunks"])
    if k > n:
        raise StressInputError(f"n_chunks {k} is more than n_paths {n}", "n_chunks")
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _percentile_position(n_paths: int, confidence: float) -> tuple[int, float]:
    """(lower sorted index, fraction) numpy's linear percentile reads at alpha = 1 - c."""
    pos = (n_paths - 1) * (100.0 * (1.0 - confidence) / 100.0)
    lo = int(math.floor(pos))
    return lo, pos - lo


def mc_tail_keep(n_paths: int, confidences: Iterable[float]) -> int:
    """Smallest P&L values each chunk keeps: through the upper neighbour of the percentile's
    position at the largest alpha (lowest confidence); capped at n_paths."""
    levels = [_confidence(c) for c in confidences]
    if not levels:
        raise StressInputError("at least one confidence is needed", "confidence")
    lo = max(_percentile_position(n_paths, c)[0] for c in levels)
    return min(int(n_paths), lo + 2)


def _mc_edges(portfolio: Portfolio, model: _Model) -> np.ndarray:
    """Histogram edges: parametric mean +- MC_HIST_SDS sd of the P&L, MC_HIST_BINS bins."""
    v = portfolio.values
    mu, sd = float(model.mean @ v), math.sqrt(max(float(v @ model.cov @ v), 0.0))
    half = MC_HIST_SDS * sd if sd > 0 else max(abs(mu), 1.0)
    return np.linspace(mu - half, mu + half, MC_HIST_BINS + 1)


def _simulate(portfolio: Portfolio, model: _Model, distribution: str, rows: int, rng) -> np.ndarray:
    """`rows` simulated one-day P&L of the book: full asset vectors from core.risk's generator
    (Student-t or bootstrap), revalued; float64 out."""
    student = distribution == "student_t"
    chol = model.chol if student else None
    w = portfolio.values.astype(np.float32) if student else portfolio.values
    out = np.empty(rows)
    for start in range(0, rows, risk.MC_CHUNK_ROWS):
        n = min(risk.MC_CHUNK_ROWS, rows - start)
        out[start:start + n] = risk._scenarios(rng, model.returns, model.fit if student else None,
                                               chol, n) @ w
    return out


def mc_chunk(portfolio: Portfolio, n_paths: int, chunk_index: int, rows: int, seed: int,
             confidences=(0.95, 0.99), distribution: str = "student_t") -> dict:
    """One chunk of an n_paths simulation (JSON-safe): {chunk_index, rows, seed, distribution,
    digest, keep, tail (every P&L <= the keep-th smallest, ascending), counts (histogram),
    underflow, overflow, sum, sumsq, nu}. Idempotent: the same arguments give the same dict."""
    n_paths = _check_paths(n_paths)
    if distribution not in MC_DISTRIBUTIONS:
        raise StressInputError(f"distribution must be one of {MC_DISTRIBUTIONS}", "distribution")
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, (int, np.integer)) or chunk_index < 0 \
            or isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or not 1 <= rows <= n_paths:
        raise StressInputError(f"bad chunk {chunk_index!r} of {rows!r} rows", "n_chunks")
    keep = mc_tail_keep(n_paths, confidences)
    model = _model(portfolio)
    with risk._blas_controller().limit(limits=risk.MC_BLAS_THREADS, user_api="blas"):
        pnl = _simulate(portfolio, model, distribution, int(rows),
                        np.random.default_rng([int(seed), int(chunk_index)]))
    if rows > keep:
        threshold = np.partition(pnl, keep - 1)[keep - 1]
        tail = np.sort(pnl[pnl <= threshold])
    else:
        tail = np.sort(pnl)
    edges = _mc_edges(portfolio, model)
    counts, _ = np.histogram(pnl, bins=edges)
    return {"chunk_index": int(chunk_index), "rows": int(rows), "seed": int(seed),
            "distribution": distribution, "digest": portfolio.digest, "keep": keep,
            "tail": tail.tolist(), "counts": counts.tolist(),
            "underflow": int((pnl < edges[0]).sum()), "overflow": int((pnl > edges[-1]).sum()),
            "sum": float(pnl.sum()), "sumsq": float((pnl * pnl).sum()),
            "nu": model.fit["nu"] if distribution == "student_t" else None}


def _check_chunks(portfolio: Portfolio, n_paths: int, chunks: list[dict]) -> None:
    if not chunks:
        raise StressInputError("no chunks to merge", "n_chunks")
    indexes = sorted(c["chunk_index"] for c in chunks)
    if indexes != list(range(len(chunks))):
        raise StressInputError(f"chunks must be numbered 0..{len(chunks) - 1} once each, got {indexes}",
                               "n_chunks")
    if sum(c["rows"] for c in chunks) != n_paths:
        raise StressInputError(f"the chunks hold {sum(c['rows'] for c in chunks)} paths, not {n_paths}",
                               "n_paths")
    if len({(c["seed"], c["distribution"], c["digest"]) for c in chunks}) != 1 \
            or chunks[0]["digest"] != portfolio.digest:
        raise StressInputError("chunks come from different seeds, distributions or portfolios", "seed")


def mc_merge(portfolio: Portfolio, n_paths: int, chunks: list[dict],
             confidences=(0.95, 0.99)) -> dict:
    """The exact result of the whole simulation from its chunks (any order):
    {n_paths, n_chunks, seed, distribution, nu, mean, sd, by_confidence [{confidence, var,
    cvar, var_pct, cvar_pct}] (currency, positive = loss; pct of equity), histogram {edges,
    counts, underflow, overflow}}."""
    n = _check_paths(n_paths)
    _check_chunks(portfolio, n, chunks)
    tail = np.sort(np.concatenate([np.asarray(c["tail"], dtype=float) for c in chunks]))
    total, total_sq = math.fsum(c["sum"] for c in chunks), math.fsum(c["sumsq"] for c in chunks)
    mean = total / n
    sd = math.sqrt(max(total_sq - total * mean, 0.0) / (n - 1))
    rows = []
    for c in sorted({_confidence(c) for c in confidences}):
        lo, frac = _percentile_position(n, c)
        if lo + 1 >= tail.size and lo + 1 < n:
            raise StressInputError(f"the chunks kept too few losses for confidence {c}", "confidence")
        a, b = tail[lo], tail[min(lo + 1, n - 1)]
        q = float(a + frac * (b - a))
        cvar = -float(tail[tail <= q].mean())
        rows.append({"confidence": c, "var": -q, "cvar": cvar, "var_pct": -q / portfolio.equity,
                     "cvar_pct": cvar / portfolio.equity})
    counts = np.sum([c["counts"] for c in chunks], axis=0)
    first = chunks[0]
    return {"n_paths": n, "n_chunks": len(chunks), "seed": first["seed"],
            "distribution": first["distribution"], "nu": first["nu"], "mean": mean, "sd": sd,
            "by_confidence": rows,
            "histogram": {"edges": _mc_edges(portfolio, _model(portfolio)).tolist(),
                          "counts": [int(x) for x in counts],
                          "underflow": sum(c["underflow"] for c in chunks),
                          "overflow": sum(c["overflow"] for c in chunks)}}


def mc_single(portfolio: Portfolio, n_paths: int, n_chunks: int, seed: int,
              confidences=(0.95, 0.99), distribution: str = "student_t") -> dict:
    """`mc_merge` over `mc_chunk` of every chunk of `mc_plan`, in this process: what the
    fan-out computes, and what a "monte_carlo" scenario reports."""
    chunks = [mc_chunk(portfolio, n_paths, i, rows, seed, confidences, distribution)
              for i, rows in enumerate(mc_plan(n_paths, n_chunks))]
    return mc_merge(portfolio, n_paths, chunks, confidences)


# ---- saved custom scenarios (schema.STRESS_CUSTOM) -----------------------------------------
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9 _.-]{1,64}$")


def custom_name(name) -> str:
    """A saved scenario's name: 1-64 characters of letters, digits, space, _ . -"""
    text = name.strip() if isinstance(name, str) else None
    if not text or not _CUSTOM_NAME.match(text):
        raise StressInputError("name must be 1-64 characters: letters, digits, space, _ . -", "name")
    return text


def save_custom(client, name: str, spec: dict, user: str, symbols: Sequence[str] | None = None,
                now: float | None = None) -> dict:
    """Save (or overwrite) a custom scenario under `name`; returns the stored document
    {name, spec, user, ts}. At most MAX_CUSTOM_SCENARIOS names."""
    name = custom_name(name)
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_NAME:
        raise StressInputError("user must be a non-empty name", "user")
    if not isinstance(spec, dict) or spec.get("kind", "custom") != "custom":
        raise StressInputError("only custom scenarios can be saved", "kind")
    spec = validate_scenario({**spec, "kind": "custom", "name": name}, symbols)
    if not client.hexists(schema.STRESS_CUSTOM, name) \
            and client.hlen(schema.STRESS_CUSTOM) >= MAX_CUSTOM_SCENARIOS:
        raise StressInputError(f"at most {MAX_CUSTOM_SCENARIOS} saved scenarios: delete one first", "name")
    doc = {"name": name, "spec": spec, "user": user.strip(), "ts": time.time() if now is None else now}
    client.hset(schema.STRESS_CUSTOM, name, schema.dumps(doc))
    return doc


def list_custom(client) -> list[dict]:
    """Saved custom scenarios {name, spec, user, ts}, by name; unreadable entries skipped."""
    docs = schema.read_json_hash(client, schema.STRESS_CUSTOM)
    return [d for _, d in sorted(docs.items()) if isinstance(d, dict) and isinstance(d.get("spec"), dict)]


def delete_custom(client, name: str) -> bool:
    """Delete a saved scenario; True when it existed."""
    return bool(client.hdel(schema.STRESS_CUSTOM, custom_name(name)))
