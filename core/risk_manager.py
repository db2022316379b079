"""RiskManager: the functions of core/risk.py applied to the live paper portfolio.

Inputs (all written by the pipeline runner):
  schema.BROKER_ACCOUNT / BROKER_POSITIONS   equity, positions (qty, last_price)
  schema.PIPELINE_DAILY                      daily P&L and equity per simulated day
  schema.MODEL_OUTCOMES                      (prediction, realized next return) pairs
  the SQLite history (core/history.py)       daily closes -> asset daily returns (read from its
                                             memory map, core/shared_closes.py, when current)
Output: one JSON document in schema.RISK_LATEST (shape in `compute`) and a small summary per
run in schema.RISK_HISTORY (24 h). Units: `*_pct` fields are loss fractions of equity
(0.03 = 3 %), `*_ccy` fields are currency; positive = loss, as in core/risk.py.

The live Monte Carlo uses settings.risk_mc_scenarios (20,000 by default: every few seconds
on a shared machine; the 100,000-scenario figure is the benchmark's).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from core import alerts, db, history, risk, schema, shared_closes

log = logging.getLogger(__name__)

CONFIDENCES = (0.95, 0.99)
MODEL_WINDOW = 5000                 # most recent (prediction, realized) pairs judged
OUTCOMES_BATCH_MAX = 1000           # pairs shipped per batch (the newest; older are dropped)
TOP_N = 5


# ---- model outcomes: shipped by the pipeline runner, read here ---------------------------
def ship_outcomes(pipe, pending, now: float | None = None) -> int:
    """Drain `pending` (a deque of (prediction, realized) pairs filled by the pipeline's hot
    path) into one capped stream entry on the redis pipeline `pipe`; returns pairs shipped.
    Only the newest OUTCOMES_BATCH_MAX are kept: a sample is all model risk needs."""
    # two C-level calls, no Python loop: a per-item popleft loop here fights the feed thread
    # for the GIL (switch interval 0.1 ms) and took long enough to age the runner's status
    # snapshot. A pair appended between the copy and the clear is lost: this is a sample.
    pairs = list(pending)
    pending.clear()
    pairs = pairs[-OUTCOMES_BATCH_MAX:]
    if not pairs:
        return 0
    blob = np.asarray(pairs, dtype="<f4").tobytes()
    pipe.xadd(schema.MODEL_OUTCOMES, {"ts": f"{time.time() if now is None else now:.3f}",
                                      "n": len(pairs), "pairs": blob},
              maxlen=schema.MODEL_OUTCOMES_MAXLEN, approximate=True)
    return len(pairs)


def read_outcomes(client, max_pairs: int = MODEL_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, realized), oldest first, at most the newest `max_pairs`; malformed
    entries are skipped."""
    chunks, total = [], 0
    for _id, fields in client.xrevrange(schema.MODEL_OUTCOMES, count=schema.MODEL_OUTCOMES_MAXLEN):
        blob = fields.get(b"pairs", b"")
        if not blob or len(blob) % 8:
            continue
        chunks.append(np.frombuffer(blob, dtype="<f4").reshape(-1, 2))
        total += len(chunks[-1])
        if total >= max_pairs:
            break
    if not chunks:
        return np.empty(0), np.empty(0)
    pairs = np.concatenate(chunks[::-1]).astype(float)[-max_pairs:]
    return pairs[:, 0], pairs[:, 1]


# ---- inputs ------------------------------------------------------------------------------
def _float(value, default=math.nan) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def read_portfolio(client) -> tuple[dict, list[dict]]:
    """(account, open positions [{symbol, qty, price, value}]); malformed rows are skipped
    with a log line, never raised."""
    raw = client.hgetall(schema.BROKER_ACCOUNT)
    account = {k.decode(): _float(v.decode()) for k, v in raw.items()
               if k.decode() not in ("ts",)} if raw else {}
    positions = []
    for symbol, data in sorted(schema.read_json_hash(client, schema.BROKER_POSITIONS).items()):
        if not isinstance(data, dict):
            log.warning("position %s is not an object: skipped", symbol)
            continue
        qty = _float(data.get("qty"))
        if qty == 0:                          # the broker keeps a row per symbol, flat or not
            continue
        price = _float(data.get("last_price")) or _float(data.get("avg_price"))
        if not (math.isfinite(qty) and math.isfinite(price)) or price <= 0:
            log.warning("position %s has a bad qty / price %r: skipped", symbol, data)
            continue
        positions.append({"symbol": symbol, "qty": qty, "price": price, "value": qty * price})
    return account, positions


def read_daily(client, limit: int = 2000) -> list[dict]:
    """The pipeline's daily P&L rows {day, date, pnl, equity}, oldest first."""
    rows = []
    for member in client.zrange(schema.PIPELINE_DAILY, -limit, -1):
        try:
            row = schema.loads(member)
            rows.append({"day": int(row["day"]), "date": str(row.get("date", "")),
                         "pnl": float(row["pnl"]), "equity": float(row["equity"])})
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def read_closes(conn, symbols: list[str], cache=None, last_rows: int | None = None,
                var_dir=None) -> np.ndarray:
    """Daily closes (days x symbols, oldest first; days missing a symbol dropped), the newest
    `last_rows` days (all when None). With `var_dir`, the memory-mapped closes matrix answers
    when it is current (core.shared_closes: checked against the database's last day), with no
    copy kept in this process. Else through `cache` (a core.cache.CacheManager) the history
    is read in day blocks (core.db.cached_closes_tail): closed blocks never change and are
    shared by every read, and a new day is a new key for the open block only, so nothing
    stale is read and a new day does not re-read the whole history."""
    if var_dir is not None:
        mapped = shared_closes.read(conn, var_dir, symbols, last_rows)
        if mapped is not None:
            return mapped
    if cache is None:
        closes = history.closes_matrix(conn, symbols)
        return closes if last_rows is None else closes[-last_rows:]
    last = history.last_day(conn)
    if last is None:
        return np.empty((0, len(symbols)))
    return db.cached_closes_tail(cache, lambda sql, params: conn.execute(sql, params).fetchall(),
                                 symbols, last[0], last_rows)


def asset_returns(conn, symbols: list[str], lookback: int, cache=None, var_dir=None) -> np.ndarray:
    """Simple daily returns (days x symbols) of the last `lookback` days from the closes."""
    if not symbols:
        return np.empty((0, 0))
    closes = read_closes(conn, symbols, cache, last_rows=lookback + 1, var_dir=var_dir)
    if len(closes) < 2:
        return np.empty((0, len(symbols)))
    return closes[1:] / closes[:-1] - 1.0


# ---- the computation ---------------------------------------------------------------------
def _var_table(R: np.ndarray, w: np.ndarray, equity: float, mc_scenarios: int, seed: int) -> list:
    """One row per method and confidence: VaR / CVaR as fractions of equity and currency."""
    port = R @ w if R.size else np.empty(0)
    rows = []
    mc = None
    if R.shape[0] >= 5 and np.any(w):
        mc = risk.monte_carlo_var_cvar(R, w, CONFIDENCES[0], n_scenarios=mc_scenarios, seed=seed,
                                       confidences=CONFIDENCES[1:])
    for method in risk.METHODS:
        for c in CONFIDENCES:
            if not np.any(w):
                var = cvar = 0.0              # no exposure: nothing to lose
            elif method == "monte_carlo":
                var, cvar = mc["by_confidence"][c] if mc else (math.nan, math.nan)
            else:
                var = risk.value_at_risk(port, c, method)
                cvar = risk.conditional_value_at_risk(port, c, method)
            rows.append({"method": method, "confidence": c, "var_pct": var, "cvar_pct": cvar,
                         "var_ccy": var * equity, "cvar_ccy": cvar * equity})
    return rows


def _pnl(daily: list[dict], initial_cash: float) -> dict:
    if not daily:
        return {"days": [], "dates": [], "daily": [], "cumulative": [], "drawdown": [],
                "max_drawdown_pct": math.nan}
    pnl = np.array([r["pnl"] for r in daily])
    equity = np.array([r["equity"] for r in daily])
    before = np.concatenate([[equity[0] - pnl[0]], equity[:-1]])
    returns = np.divide(pnl, before, out=np.zeros_like(pnl), where=before > 0)
    dd = risk.drawdown_series(returns)
    return {"days": [r["day"] for r in daily], "dates": [r["date"] for r in daily],
            "daily": pnl.tolist(), "cumulative": (equity - initial_cash).tolist(),
            "drawdown": dd.tolist(), "max_drawdown_pct": float(dd.max())}


def compute(client, conn, lookback_days: int = 252, mc_scenarios: int = 20_000, seed: int = 0,
            now: float | None = None, cache=None, var_dir=None) -> dict:
    """The whole risk picture of the live portfolio as a JSON-ready dict:
    {ts, equity, gross_exposure, net_exposure, leverage, n_positions, days_of_history,
     var: [{method, confidence, var_pct, cvar_pct, var_ccy, cvar_ccy}],
     positions: [{symbol, qty, price, value, weight, marginal_var_pct, component_var_ccy,
                  component_cvar_ccy}], concentration: {hhi, effective_n, top_n_share, top_n},
     pnl: {days, dates, daily, cumulative, drawdown, max_drawdown_pct}, model: {...model_risk}}
    Marginal / component VaR are parametric at 95 % (components sum to its VaR, currency);
    component CVaR is historical at 95 %."""
    account, positions = read_portfolio(client)
    equity = account.get("equity", math.nan)
    initial_cash = account.get("initial_cash", math.nan)
    symbols = [p["symbol"] for p in positions]
    values = np.array([p["value"] for p in positions])
    R = asset_returns(conn, symbols, lookback_days, cache, var_dir)
    usable_equity = equity if math.isfinite(equity) and equity > 0 else math.nan
    w = values / usable_equity if symbols else np.zeros(0)
    if not np.isfinite(w).all():
        w = np.zeros(len(symbols))
    conc = risk.concentration(values if symbols else np.zeros(1), top_n=TOP_N)
    rows = []
    if symbols:
        decomposition = risk.portfolio_var(values, R, CONFIDENCES[0]) if R.shape[0] >= 2 else None
        for i, p in enumerate(positions):
            rows.append({**p, "weight": float(conc["weights"][i]),
                         "exposure_pct": float(w[i]),
                         "marginal_var_pct": _pick(decomposition, "marginal_var", i),
                         "component_var_ccy": _pick(decomposition, "component_var", i),
                         "component_cvar_ccy": _pick(decomposition, "component_cvar", i)})
    preds, real = read_outcomes(client)
    gross = float(np.abs(values).sum()) if symbols else 0.0
    return {"ts": time.time() if now is None else now, "equity": equity,
            "initial_cash": initial_cash, "gross_exposure": gross,
            "net_exposure": float(values.sum()) if symbols else 0.0,
            "leverage": gross / usable_equity if math.isfinite(usable_equity) else math.nan,
            "n_positions": len(symbols), "days_of_history": int(R.shape[0]),
            "lookback_days": lookback_days, "mc_scenarios": mc_scenarios,
            "var": _var_table(R, w, equity, mc_scenarios, seed) if symbols else
            _var_table(np.empty((0, 0)), np.zeros(0), equity, mc_scenarios, seed),
            "positions": rows,
            "concentration": {k: conc[k] for k in ("hhi", "effective_n", "top_n_share", "top_n")},
            "pnl": _pnl(read_daily(client), initial_cash if math.isfinite(initial_cash) else 0.0),
            "model": risk.model_risk(preds, real, window=MODEL_WINDOW, seed=seed)}


def _pick(decomposition, key, i) -> float:
    return math.nan if decomposition is None else float(decomposition[key][i])


def summary(result: dict) -> dict:
    """The few figures kept per run in RISK_HISTORY."""
    var = {(r["method"], r["confidence"]): r for r in result["var"]}
    pick = lambda m, c, f: var.get((m, c), {}).get(f, math.nan)  # noqa: E731
    return {"ts": result["ts"], "equity": result["equity"],
            "var95": pick("historical", 0.95, "var_pct"), "var99": pick("historical", 0.99, "var_pct"),
            "cvar95": pick("historical", 0.95, "cvar_pct"),
            "cvar99": pick("historical", 0.99, "cvar_pct"),
            "max_drawdown": result["pnl"]["max_drawdown_pct"],
            "confidence": result["model"]["confidence"], "hit_rate": result["model"]["hit_rate"]}


def store(client, result: dict) -> None:
    """Write RISK_LATEST and append the summary to RISK_HISTORY (one round trip)."""
    pipe = client.pipeline(transaction=False)
    pipe.set(schema.RISK_LATEST, schema.dumps(result))
    schema.add_to_series(pipe, schema.RISK_HISTORY, result["ts"], schema.dumps(summary(result)),
                         schema.RISK_HISTORY_RETENTION_S)
    pipe.execute()


def check_model_confidence(client, result: dict, threshold: float) -> str | None:
    """Raise a (deduplicated) alert when the model confidence is below `threshold`."""
    model = result["model"]
    conf = model.get("confidence")
    if conf is None or not math.isfinite(conf) or conf >= threshold:
        return None
    return alerts.raise_alert(
        client, "warning", "risk",
        f"model confidence {conf:.2f} below {threshold:.2f} (hit rate {model['hit_rate']:.3f} "
        f"over {model['trials']} signals, IC {model['ic']:.3f})",
        dedupe_key="risk:model_confidence", dedupe_s=300)


def run_once(client, conn, settings, now: float | None = None, cache=None) -> dict:
    """Compute, store and alert: what the risk.compute task does (history reads from the
    memory-mapped closes under settings.var_dir when current, else through `cache` when given)."""
    result = compute(client, conn, settings.risk_lookback_days, settings.risk_mc_scenarios,
                     settings.seed, now, cache, settings.var_dir)
    store(client, result)
    check_model_confidence(client, result, settings.model_confidence_threshold)
    return result


def latest(client) -> dict | None:
    """The last stored result, or None."""
    raw = client.get(schema.RISK_LATEST)
    try:
        return schema.loads(raw)
    except ValueError:
        return None


def risk_history(client, since: float) -> list[dict]:
    return schema.read_series(client, schema.RISK_HISTORY, since)
