"""Market simulator: an index plus a one-factor structure, spreads, volume, and a weak,
known, predictable component, all seeded.

Model (log prices, time in trading days, `dt` = days per tick):
- the index moves every tick: dI = mu*dt + sigma_m*sqrt(dt)*z;
- symbols are quoted round-robin (one symbol per tick, `n` symbols per round), so between two
  ticks of symbol j the index moved by dI_j and time n*dt passed. The symbol's log return is
      r_j = beta_j * dI_j + s_j * (eps + KAPPA * imbalance_j(prev)),  s_j = idio_vol_j * sqrt(n*dt)
  with eps ~ N(0, 1) independent of everything else.
- The predictable component: every tick publishes the symbol's order-book imbalance in (-1, 1)
  (tanh of a per-symbol AR(1) with persistence IMBALANCE_PHI). The symbol's NEXT return loads on
  the imbalance published with its previous tick, with loading KAPPA idiosyncratic sigmas. With
  KAPPA = 0.12 this explains about 0.5% of a symbol's idiosyncratic next-tick variance: weak,
  but a linear model fitted on tens of thousands of ticks finds it (tests/core/test_market.py
  and tests/core/test_pipeline.py check both). Because the imbalance persists for ~10 ticks of
  a symbol, the edge adds up over a holding period: the reference strategy (core/pipeline.py)
  earns a little more than the spreads it pays on most simulated days, and loses on some.
- Half spread = half_spread_bps_j * (1 + 0.25*|eps|): wider when the price jumps. Traded volume
  per tick = daily_volume_j * (n*dt) * lognormal, so daily volume does not depend on the tick rate.

The same generator makes the daily bars of the backfill (`daily_bars`, 32 rounds per day) and the
live ticks (`MarketSimulator.next_block`), so history and live data share one model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

INDEX_SYMBOL = "INDEX"
KAPPA = 0.12                # loading of the next return on the previous imbalance, in idio sigmas
IMBALANCE_PHI = 0.9         # per-symbol-tick persistence of the latent imbalance
INDEX_DAILY_VOL = 0.010
INDEX_DAILY_DRIFT = 0.0002
INDEX_START = 1000.0
BACKFILL_ROUNDS_PER_DAY = 32

# independent random streams derived from one seed
_STREAM_MODEL, _STREAM_BACKFILL, _STREAM_LIVE, _STREAM_FIT = 1, 2, 3, 4


def symbol_names(n: int) -> tuple[str, ...]:
    width = max(2, len(str(n)))
    return tuple(f"SYM{i:0{width}d}" for i in range(n))


@dataclass(frozen=True)
class FactorModel:
    """Per-symbol parameters of the factor model (daily units). Build with `from_seed`."""

    symbols: tuple[str, ...]
    betas: np.ndarray
    idio_vol: np.ndarray           # daily idiosyncratic volatility (log return)
    half_spread_bps: np.ndarray
    daily_volume: np.ndarray       # shares per day
    start_price: np.ndarray
    index_vol: float = INDEX_DAILY_VOL
    index_drift: float = INDEX_DAILY_DRIFT
    kappa: float = KAPPA

    @classmethod
    def from_seed(cls, n_symbols: int, seed: int) -> "FactorModel":
        if not isinstance(n_symbols, (int, np.integer)) or n_symbols < 1:
            raise ValueError(f"n_symbols must be a positive integer, got {n_symbols!r}")
        rng = np.random.default_rng([seed, _STREAM_MODEL])
        n = int(n_symbols)
        return cls(
            symbols=symbol_names(n),
            betas=rng.uniform(0.5, 1.5, n),
            idio_vol=rng.uniform(0.010, 0.025, n),
            half_spread_bps=rng.uniform(0.5, 2.0, n),
            daily_volume=rng.uniform(0.5e6, 5e6, n),
            start_price=rng.uniform(20.0, 300.0, n),
        )

    @property
    def n(self) -> int:
        return len(self.symbols)


@dataclass
class TickBlock:
    """`rounds * n` consecutive ticks, flattened in time order (tick t quotes symbol t % n)."""

    sym: np.ndarray            # int symbol index
    mid: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    volume: np.ndarray
    imbalance: np.ndarray
    index: np.ndarray          # index level at the tick
    log_return: np.ndarray     # the symbol's log return since its previous tick
    index_move: np.ndarray     # index log move since the symbol's previous tick

    def __len__(self) -> int:
        return len(self.sym)


class MarketSimulator:
    """Generates ticks in blocks (numpy), carrying its state from block to block."""

    def __init__(self, model: FactorModel, seed: int, start_prices=None,
                 start_index: float | None = None, stream: int = _STREAM_LIVE):
        self.model = model
        self._rng = np.random.default_rng([seed, stream])
        prices = model.start_price if start_prices is None else np.asarray(start_prices, float)
        if prices.shape != (model.n,) or not np.all(np.isfinite(prices)) or np.any(prices <= 0):
            raise ValueError(f"start_prices must be {model.n} positive finite numbers")
        self._log_px = np.log(prices).copy()
        self._log_index = float(np.log(start_index or INDEX_START))
        self._index_at_last = np.full(model.n, self._log_index)
        self._latent = self._rng.standard_normal(model.n)
        self._prev_imb = np.tanh(self._latent)

    def next_block(self, rounds: int, dt_days: float) -> TickBlock:
        """`rounds` rounds of `n` ticks; `dt_days` = simulated trading days per tick."""
        if rounds < 1 or not (dt_days > 0 and np.isfinite(dt_days)):
            raise ValueError(f"need rounds >= 1 and finite dt_days > 0, got {rounds}, {dt_days}")
        m, n, rng = self.model, self.model.n, self._rng
        inc = m.index_drift * dt_days + m.index_vol * np.sqrt(dt_days) * rng.standard_normal(rounds * n)
        log_index = (self._log_index + np.cumsum(inc)).reshape(rounds, n)
        prev_index = np.vstack([self._index_at_last[None, :], log_index[:-1]])
        index_move = log_index - prev_index
        sigma = m.idio_vol * np.sqrt(n * dt_days)
        eps = rng.standard_normal((rounds, n))
        imb, imb_prev = self._imbalance_path(rounds)
        log_ret = m.betas * index_move + sigma * (eps + m.kappa * imb_prev)
        log_px = self._log_px + np.cumsum(log_ret, axis=0)
        mid = np.exp(log_px)
        half = m.half_spread_bps * 1e-4 * (1.0 + 0.25 * np.abs(eps))
        volume = np.round(m.daily_volume * n * dt_days * rng.lognormal(0.0, 0.5, (rounds, n))
                          * (1.0 + np.abs(eps))) + 1.0
        self._log_px = log_px[-1].copy()
        self._log_index = float(log_index[-1, -1])
        self._index_at_last = log_index[-1].copy()
        flat = lambda a: np.ascontiguousarray(a).reshape(-1)  # noqa: E731
        return TickBlock(sym=np.tile(np.arange(n), rounds), mid=flat(mid),
                         bid=flat(mid * (1.0 - half)), ask=flat(mid * (1.0 + half)),
                         volume=flat(volume), imbalance=flat(imb), index=flat(np.exp(log_index)),
                         log_return=flat(log_ret), index_move=flat(index_move))

    def _imbalance_path(self, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """This round's imbalance and the previous one, per symbol (AR(1) latent, tanh-squashed)."""
        n, phi = self.model.n, IMBALANCE_PHI
        shocks = self._rng.standard_normal((rounds, n)) * np.sqrt(1.0 - phi * phi)
        # x[r] = phi * x[r-1] + shock[r], as one C loop (a Python loop over rounds cost ~0.3 ms
        # per block, which showed up in the feed's latency tail)
        latent = lfilter([1.0], [1.0, -phi], shocks, axis=0, zi=(phi * self._latent)[None, :])[0]
        self._latent = latent[-1].copy()
        imb = np.tanh(latent)
        imb_prev = np.vstack([self._prev_imb[None, :], imb[:-1]])
        self._prev_imb = imb[-1].copy()
        return imb, imb_prev

    @property
    def last_prices(self) -> np.ndarray:
        return np.exp(self._log_px)

    @property
    def last_index(self) -> float:
        return float(np.exp(self._log_index))


def daily_bars(model: FactorModel, n_days: int, seed: int,
               rounds_per_day: int = BACKFILL_ROUNDS_PER_DAY) -> dict[str, np.ndarray]:
    """Daily OHLCV of every symbol plus the index (last column), from the intraday model.

    Returns {"open","high","low","close","volume"}: arrays of shape (n_days, n + 1).
    """
    if n_days < 1:
        raise ValueError(f"n_days must be >= 1, got {n_days}")
    sim = MarketSimulator(model, seed, stream=_STREAM_BACKFILL)
    n = model.n
    out = {k: np.empty((n_days, n + 1)) for k in ("open", "high", "low", "close", "volume")}
    dt = 1.0 / (rounds_per_day * n)
    for d in range(n_days):
        first_px = np.append(sim.last_prices, sim.last_index)
        b = sim.next_block(rounds_per_day, dt)
        mids = np.column_stack([b.mid.reshape(rounds_per_day, n), b.index.reshape(rounds_per_day, n)[:, -1]])
        vols = b.volume.reshape(rounds_per_day, n).sum(axis=0)
        out["open"][d] = first_px
        out["high"][d] = np.maximum(mids.max(axis=0), first_px)
        out["low"][d] = np.minimum(mids.min(axis=0), first_px)
        out["close"][d] = mids[-1]
        out["volume"][d] = np.append(vols, vols.sum())
    return out


def fit_stream(model: FactorModel, seed: int) -> MarketSimulator:
    """A simulator on its own random stream, for fitting the signal model at start-up."""
    return MarketSimulator(model, seed, stream=_STREAM_FIT)
