"""Position, exposure, loss and leverage limits: a pre-trade check and post-trade utilization.

Conventions (all amounts in account currency; exposure of a position = qty x mark price):
- per-symbol position limit:  |qty x price| of one symbol after the order
- total position limit:       gross exposure, sum over symbols of |qty x price|
- portfolio value limit:      |net exposure|, |sum over symbols of qty x price|
- daily loss limit:           loss since the start of the (simulated) day, equity based;
                              in currency (`max_daily_loss`) and/or as a fraction of the
                              start-of-day equity (`max_daily_loss_fraction`); the tighter binds
- leverage limit:             gross exposure / equity
A risk-reducing order (it shrinks a position towards zero without crossing it) always passes
the pre-trade check: blocking the way out of a breach would only make it worse.

`LimitConfig` is frozen and validated (a negative, zero, NaN or out-of-range value raises
ValueError naming the field); `LimitMonitor` applies it. Reason codes are the OK / REJECT_*
constants below. `utilization(...)` and `write_status(...)` produce schema.LIMITS_STATUS:
{"ts": float, "limits": [{"name", "kind", "symbol" (or None), "limit", "value",
"utilization", "breached"}]}.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace

from core import schema

OK = "OK"
REJECT_BAD_ORDER = "BAD_ORDER"
REJECT_SYMBOL_POSITION = "SYMBOL_POSITION_LIMIT"
REJECT_TOTAL_POSITION = "TOTAL_POSITION_LIMIT"
REJECT_PORTFOLIO_VALUE = "PORTFOLIO_VALUE_LIMIT"
REJECT_DAILY_LOSS = "DAILY_LOSS_LIMIT"
REJECT_LEVERAGE = "LEVERAGE_LIMIT"

REFERENCE_CAPITAL = 1_000_000.0   # the currency defaults below are sized for this account


@dataclass(frozen=True)
class LimitConfig:
    """Limits of one account. Defaults suit a 1,000,000 account (see `scaled`); None = no limit.

    max_position_per_symbol  100,000    |exposure| of one symbol (10% of the reference capital)
    max_total_position       1,500,000  gross exposure
    max_portfolio_value      1,000,000  |net exposure|
    max_daily_loss           None       currency loss since start of day
    max_daily_loss_fraction  0.05       loss as a fraction of start-of-day equity, in (0, 1]
    max_leverage             2.0        gross exposure / equity
    """

    max_position_per_symbol: float | None = 100_000.0
    max_total_position: float | None = 1_500_000.0
    max_portfolio_value: float | None = 1_000_000.0
    max_daily_loss: float | None = None
    max_daily_loss_fraction: float | None = 0.05
    max_leverage: float | None = 2.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"limit {f.name} must be a number or None, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"limit {f.name} must be a finite number > 0, got {value!r}")
            if value > 1e15:
                raise ValueError(f"limit {f.name} is out of range (> 1e15): {value!r}")
        if self.max_daily_loss_fraction is not None and self.max_daily_loss_fraction > 1:
            raise ValueError("limit max_daily_loss_fraction must be within (0, 1], "
                             f"got {self.max_daily_loss_fraction!r}")
        if self.max_leverage is not None and self.max_leverage > 1000:
            raise ValueError(f"limit max_leverage must be <= 1000, got {self.max_leverage!r}")

    def scaled(self, capital: float) -> "LimitConfig":
        """The currency limits scaled from REFERENCE_CAPITAL to `capital` (fractions unchanged)."""
        if not (isinstance(capital, (int, float)) and math.isfinite(capital) and capital > 0):
            raise ValueError(f"capital must be a finite number > 0, got {capital!r}")
        k = capital / REFERENCE_CAPITAL
        cur = ("max_position_per_symbol", "max_total_position", "max_portfolio_value", "max_daily_loss")
        return replace(self, **{n: getattr(self, n) * k for n in cur if getattr(self, n) is not None})


def daily_loss_limit(config: LimitConfig, day_start_equity: float) -> float | None:
    """The binding daily loss in currency (the tighter of the two forms), or None."""
    candidates = [config.max_daily_loss] if config.max_daily_loss is not None else []
    if config.max_daily_loss_fraction is not None and day_start_equity > 0:
        candidates.append(config.max_daily_loss_fraction * day_start_equity)
    return min(candidates) if candidates else None


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


class LimitMonitor:
    """Pre-trade check and post-trade utilization for one account under one LimitConfig."""

    def __init__(self, config: LimitConfig | None = None, clock=time.time):
        self.config = config or LimitConfig()
        self._clock = clock
        self.rejections: dict[str, int] = {}

    def check_order(self, symbol_qty: float, order_qty: float, price: float, gross: float,
                    net: float, equity: float, day_start_equity: float) -> tuple[bool, str]:
        """Would an order of signed `order_qty` at `price`, on a symbol holding `symbol_qty`,
        keep every limit? `gross` / `net` are the account's exposures before the order.
        Returns (ok, reason code). Bad numbers give (False, BAD_ORDER), never an exception."""
        if not _finite(symbol_qty, order_qty, price, gross, net, equity, day_start_equity) \
                or price <= 0 or order_qty == 0:
            return self._reject(REJECT_BAD_ORDER)
        new_qty = symbol_qty + order_qty
        if symbol_qty != 0 and abs(new_qty) <= abs(symbol_qty) and new_qty * symbol_qty >= 0:
            return True, OK                                  # risk-reducing: always passes
        c = self.config
        old_exp, new_exp = abs(symbol_qty) * price, abs(new_qty) * price
        if c.max_position_per_symbol is not None and new_exp > c.max_position_per_symbol:
            return self._reject(REJECT_SYMBOL_POSITION)
        new_gross = gross - old_exp + new_exp
        if c.max_total_position is not None and new_gross > c.max_total_position:
            return self._reject(REJECT_TOTAL_POSITION)
        if c.max_portfolio_value is not None and abs(net + order_qty * price) > c.max_portfolio_value:
            return self._reject(REJECT_PORTFOLIO_VALUE)
        loss_limit = daily_loss_limit(c, day_start_equity)
        if loss_limit is not None and day_start_equity - equity >= loss_limit:
            return self._reject(REJECT_DAILY_LOSS)
        if c.max_leverage is not None and (equity <= 0 or new_gross / equity > c.max_leverage):
            return self._reject(REJECT_LEVERAGE)
        return True, OK

    def _reject(self, code: str) -> tuple[bool, str]:
        self.rejections[code] = self.rejections.get(code, 0) + 1
        return False, code

    def utilization(self, exposures: dict[str, float], equity: float,
                    day_start_equity: float) -> list[dict]:
        """One row per limit (per symbol for the position limit): value, limit, utilization
        (value / limit) and breached (value > limit). `exposures`: symbol -> qty x price."""
        c = self.config
        gross = sum(abs(v) for v in exposures.values())
        net = sum(exposures.values())
        rows = []
        if c.max_position_per_symbol is not None:
            rows += [_row("position", "symbol_position", sym, c.max_position_per_symbol, abs(v))
                     for sym, v in sorted(exposures.items())]
        if c.max_total_position is not None:
            rows.append(_row("total_position", "total_position", None, c.max_total_position, gross))
        if c.max_portfolio_value is not None:
            rows.append(_row("portfolio_value", "portfolio_value", None, c.max_portfolio_value, abs(net)))
        loss_limit = daily_loss_limit(c, day_start_equity)
        if loss_limit is not None:
            rows.append(_row("daily_loss", "daily_loss", None, loss_limit,
                             max(0.0, day_start_equity - equity)))
        if c.max_leverage is not None:
            lev = gross / equity if equity > 0 else math.inf
            rows.append(_row("leverage", "leverage", None, c.max_leverage, lev))
        return rows

    def status(self, exposures: dict[str, float], equity: float, day_start_equity: float) -> dict:
        return {"ts": self._clock(), "limits": self.utilization(exposures, equity, day_start_equity)}

    def write_status(self, client, exposures: dict[str, float], equity: float,
                     day_start_equity: float) -> dict:
        """Write schema.LIMITS_STATUS (a JSON string); returns what was written."""
        doc = self.status(exposures, equity, day_start_equity)
        client.set(schema.LIMITS_STATUS, schema.dumps(doc))
        return doc


def _row(name: str, kind: str, symbol, limit: float, value: float) -> dict:
    util = value / limit if limit > 0 else math.inf
    return {"name": name if symbol is None else f"{name}:{symbol}", "kind": kind, "symbol": symbol,
            "limit": float(limit), "value": float(value), "utilization": float(util),
            "breached": bool(value > limit)}
