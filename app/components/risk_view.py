"""The Risk page's sections as pure functions: a risk document (schema.RISK_LATEST), the limit
status (schema.LIMITS_STATUS) or trading-state history entries in, Dash components or plain-
dict figures out. Every input may be None or malformed: the section then says so."""
from __future__ import annotations

import functools
import logging
import math
from datetime import datetime, timezone

import dash_bootstrap_components as dbc
from dash import html

from app.components import charts

log = logging.getLogger(__name__)

def _tolerant(figure: bool = False):
    """A section fed a malformed document says so instead of failing the whole callback."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                log.warning("%s: malformed input (%s: %s)", fn.__name__, type(exc).__name__, exc)
                text = "Malformed data in Redis; waiting for the next update."
                return charts.empty_figure(text) if figure else no_data(text)
        return inner
    return wrap


METHOD_LABELS = {"historical": "Historical", "parametric": "Parametric (Gaussian)",
                 "cornish_fisher": "Cornish-Fisher", "monte_carlo": "Monte Carlo"}
STATE_COLORS = {"ACTIVE": "success", "REDUCING": "warning", "HALTED": "danger"}
# simulated dates are business days that run faster than wall time: an axis of categories
DAY_AXIS = {"type": "category", "nticks": 8}
CARDS = [("risk-state", "Trading state"), ("risk-equity", "Equity"),
         ("risk-exposure", "Gross exposure"), ("risk-var99", "VaR 99 % (1 day)"),
         ("risk-mdd", "Max drawdown"), ("risk-confidence", "Model confidence")]


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _num(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


# ---- formatting ----------------------------------------------------------------------------
def fmt_pct(value, digits: int = 2) -> str:
    v = _num(value)
    return "–" if not math.isfinite(v) else f"{100 * v:.{digits}f} %"


def fmt_money(value) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "–"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f}"


def fmt_num(value, fmt: str = ".3f") -> str:
    v = _num(value)
    return "–" if not math.isfinite(v) else format(v, fmt)


def utc(ts) -> str:
    v = _num(ts)
    if not math.isfinite(v):
        return "–"
    return datetime.fromtimestamp(v, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def no_data(text: str = "No data yet.") -> html.P:
    return html.P(text, className="text-body-secondary")


def _table(header: list[str], rows: list, table_id: str) -> dbc.Table:
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)],
                     size="sm", striped=True, hover=True, id=table_id, className="mb-0")


def _util_bar(utilization, breached: bool = False) -> dbc.Progress:
    u = _num(utilization)
    u = 0.0 if not math.isfinite(u) else u
    color = "danger" if breached or u >= 1 else "warning" if u >= 0.8 else "success"
    return dbc.Progress(value=min(100.0, 100 * u), label=f"{100 * u:.0f} %", color=color,
                        style={"height": "18px", "minWidth": "110px"})


# ---- sections (pure: document in, components out) ------------------------------------------
@_tolerant()
def var_table(doc: dict | None):
    if not doc or not doc.get("var"):
        return no_data()
    cells = {(r["method"], r["confidence"]): r for r in doc["var"]}
    rows = []
    for method, label in METHOD_LABELS.items():
        tds = [html.Td(label)]
        for c in (0.95, 0.99):
            r = cells.get((method, c), {})
            tds += [html.Td([fmt_pct(r.get("var_pct")), html.Br(),
                             html.Small(fmt_money(r.get("var_ccy")), className="text-body-secondary")]),
                    html.Td([fmt_pct(r.get("cvar_pct")), html.Br(),
                             html.Small(fmt_money(r.get("cvar_ccy")), className="text-body-secondary")])]
        rows.append(html.Tr(tds, id=f"risk-var-row-{method}"))
    note = (f"{doc.get('days_of_history', 0)} daily returns, Monte Carlo "
            f"{doc.get('mc_scenarios', 0):,} scenarios; loss as % of equity and in currency")
    return html.Div([_table(["Method", "VaR 95 %", "CVaR 95 %", "VaR 99 %", "CVaR 99 %"], rows,
                            "risk-var-table-inner"), html.Small(note, className="text-body-secondary")])


@_tolerant()
def model_panel(doc: dict | None):
    model = (doc or {}).get("model")
    if not model or not model.get("n"):
        return no_data("No model outcomes yet (the pipeline ships them every second).")
    conf = _num(model.get("confidence"))
    color = "secondary" if not math.isfinite(conf) else "success" if conf >= 0.8 else \
        "warning" if conf >= 0.6 else "danger"
    items = [("Confidence (bootstrap share with positive slope)",
              dbc.Badge(fmt_num(conf, ".2f"), color=color, id="risk-model-confidence")),
             ("Hit rate (95 % Wilson CI)",
              f"{fmt_pct(model.get('hit_rate'), 1)} [{fmt_pct(model.get('hit_low'), 1)}, "
              f"{fmt_pct(model.get('hit_high'), 1)}] of {model.get('trials', 0):,} signals"),
             ("Information coefficient", fmt_num(model.get("ic"))),
             ("Calibration slope (1 = calibrated)", fmt_num(model.get("calibration_slope"), ".2f")),
             ("Calibration error (mean |realized - predicted|)",
              fmt_num(model.get("calibration_error"), ".2e")),
             ("Prediction uncertainty (bootstrap sd of slope)", fmt_num(model.get("uncertainty"), ".2f")),
             ("Pairs judged", f"{model.get('n', 0):,}")]
    return _table(["Measure", "Value"], [html.Tr([html.Td(k), html.Td(v)]) for k, v in items],
                  "risk-model-table")


@_tolerant(figure=True)
def underwater_figure(doc: dict | None) -> dict:
    pnl = (doc or {}).get("pnl") or {}
    if not pnl.get("drawdown"):
        return charts.empty_figure("Drawdown: no closed days yet")
    y = [None if d is None else -100 * d for d in pnl["drawdown"]]
    trace = charts.line(pnl.get("dates") or pnl.get("days"), y, "drawdown", 1,
                        fill="tozeroy", line={"width": 1.2, "color": charts.SERIES_COLORS[1]})
    return charts.figure([trace], f"Underwater (max drawdown {fmt_pct(pnl.get('max_drawdown_pct'))})",
                         yaxis={"title": {"text": "% below peak"}}, xaxis=DAY_AXIS)


@_tolerant(figure=True)
def pnl_figure(doc: dict | None) -> dict:
    pnl = (doc or {}).get("pnl") or {}
    if not pnl.get("daily"):
        return charts.empty_figure("P&L: no closed days yet")
    x = pnl.get("dates") or pnl.get("days")
    daily = {"type": "bar", "x": x, "y": pnl["daily"], "name": "daily",
             "marker": {"color": ["#06d6a0" if (v or 0) >= 0 else "#ef476f" for v in pnl["daily"]]}}
    cumulative = charts.line(x, pnl.get("cumulative") or [], "cumulative", 0, yaxis="y2")
    return charts.figure([daily, cumulative], "P&L per simulated day",
                         yaxis={"title": {"text": "daily"}}, xaxis=DAY_AXIS,
                         yaxis2={"title": {"text": "cumulative"}, "overlaying": "y", "side": "right",
                                 "showgrid": False})


@_tolerant(figure=True)
def concentration_figure(doc: dict | None) -> dict:
    positions = sorted((doc or {}).get("positions") or [], key=lambda p: -(p.get("weight") or 0))
    if not positions:
        return charts.empty_figure("Concentration: no open positions")
    conc = doc.get("concentration") or {}
    trace = {"type": "bar", "orientation": "h", "x": [100 * (p.get("weight") or 0) for p in positions],
             "y": [p["symbol"] for p in positions], "name": "weight",
             "marker": {"color": charts.SERIES_COLORS[0]}}
    title = (f"Concentration: HHI {fmt_num(conc.get('hhi'))}, effective N "
             f"{fmt_num(conc.get('effective_n'), '.1f')}, top {conc.get('top_n', 5)} "
             f"{fmt_pct(conc.get('top_n_share'), 0)}")
    return charts.figure([trace], title, height=max(280, 24 * len(positions) + 90),
                         xaxis={"title": {"text": "% of gross exposure"}},
                         yaxis={"autorange": "reversed"})


@_tolerant()
def positions_table(doc: dict | None, limits: dict | None):
    positions = (doc or {}).get("positions") or []
    if not positions:
        return no_data("No open positions." if doc else "No data yet.")
    by_symbol = {}
    for lim in (limits or {}).get("limits") or []:
        if isinstance(lim, dict) and lim.get("symbol"):
            by_symbol.setdefault(lim["symbol"], []).append(lim)
    rows = []
    for p in sorted(positions, key=lambda p: -abs(p.get("value") or 0)):
        lims = by_symbol.get(p["symbol"], [])
        worst = max(lims, key=lambda lim: _num(lim.get("utilization")) or 0, default=None)
        rows.append(html.Tr([
            html.Td(p["symbol"]), html.Td(f"{p.get('qty', 0):,.0f}"), html.Td(fmt_money(p.get("value"))),
            html.Td(fmt_pct(p.get("exposure_pct"), 1)), html.Td(fmt_money(p.get("component_var_ccy"))),
            html.Td(_util_bar(worst.get("utilization"), bool(worst.get("breached")))
                    if worst else html.Span("–", className="text-body-secondary")),
        ]))
    return _table(["Symbol", "Qty", "Value", "% equity", "Component VaR 95 %", "Limit use"], rows,
                  "risk-positions-table")


@_tolerant()
def limits_table(limits: dict | None):
    items = [lim for lim in (limits or {}).get("limits") or [] if isinstance(lim, dict)]
    if not items:
        return no_data("No limit status yet.")
    # the portfolio-wide limits first, then per-symbol ones by utilization
    items.sort(key=lambda lim: (lim.get("symbol") is not None, -(_num(lim.get("utilization")) or 0)))
    idle = [lim for lim in items if lim.get("symbol") is not None and not _num(lim.get("utilization"))]
    items = [lim for lim in items if lim not in idle]   # flat symbols' limits: counted, not listed
    rows = [html.Tr([html.Td(lim.get("name", "")), html.Td(lim.get("symbol") or "all"),
                     html.Td(fmt_num(lim.get("value"), ",.2f")),
                     html.Td(fmt_num(lim.get("limit"), ",.2f")),
                     html.Td(_util_bar(lim.get("utilization"), bool(lim.get("breached"))))])
            for lim in items[:30]]
    note = f"as of {utc(limits.get('ts'))} UTC" if limits.get("ts") else ""
    if idle:
        note += f"; {len(idle)} per-symbol limits of flat symbols not shown"
    return html.Div([_table(["Limit", "Symbol", "Value", "Limit", "Utilization"], rows,
                            "risk-limits-table"), html.Small(note, className="text-body-secondary")])


@_tolerant()
def history_table(entries: list[dict]):
    if not entries:
        return no_data("No state changes yet.")
    rows = [html.Tr([html.Td(utc(e.get("ts"))),
                     html.Td(f"{e.get('from_state', '')} → {e.get('to_state', '')}"),
                     html.Td(e.get("reason", "")), html.Td(e.get("source", "")), html.Td(e.get("user", ""))])
            for e in entries]
    return _table(["UTC", "Change", "Reason", "Source", "User"], rows, "risk-state-history-table")


def cards(doc: dict | None, state: str | None) -> list:
    """(value, detail) of every card in CARDS, flattened."""
    state_text = state or "no data yet"
    out = [dbc.Badge(state_text, color=STATE_COLORS.get(state_text, "secondary"), id="risk-state-badge"),
           "absent key = ACTIVE" if state is None else ""]
    if not doc:
        return out + ["–", "no data yet"] * 5
    var99 = next((r for r in doc.get("var", []) if r.get("method") == "historical"
                  and r.get("confidence") == 0.99), {})
    model = doc.get("model") or {}
    return out + [
        fmt_money(doc.get("equity")), f"initial {fmt_money(doc.get('initial_cash'))}",
        fmt_money(doc.get("gross_exposure")),
        f"leverage {fmt_num(doc.get('leverage'), '.2f')}, {doc.get('n_positions', 0)} positions",
        fmt_pct(var99.get("var_pct")), f"historical, {fmt_money(var99.get('var_ccy'))}",
        fmt_pct((doc.get("pnl") or {}).get("max_drawdown_pct")), "over the simulated days",
        fmt_num(model.get("confidence"), ".2f"),
        f"hit rate {fmt_pct(model.get('hit_rate'), 1)} of {model.get('trials', 0):,}",
    ]
