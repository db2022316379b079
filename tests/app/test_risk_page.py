"""The Risk page: its sections with and without data, and real Chromium against the whole
console showing live VaR figures and charts."""
from __future__ import annotations

import re

import pytest

from app.components import risk_view as page_module
from tests.conftest import wait_for

DOC = {
    "ts": 1_700_000_000.0, "equity": 1_010_000.0, "initial_cash": 1_000_000.0,
    "gross_exposure": 250_000.0, "net_exposure": 50_000.0, "leverage": 0.2475, "n_positions": 2,
    "days_of_history": 59, "mc_scenarios": 20000,
    "var": [{"method": m, "confidence": c, "var_pct": 0.0123 * (1 + (c > 0.96)), "cvar_pct": 0.015,
             "var_ccy": 12_423.0, "cvar_ccy": 15_150.0}
            for m in ("historical", "parametric", "cornish_fisher", "monte_carlo") for c in (0.95, 0.99)],
    "positions": [{"symbol": "SYM01", "qty": 100, "price": 1500.0, "value": 150_000.0, "weight": 0.6,
                   "exposure_pct": 0.1485, "component_var_ccy": 9000.0},
                  {"symbol": "SYM02", "qty": -50, "price": 2000.0, "value": -100_000.0, "weight": 0.4,
                   "exposure_pct": -0.099, "component_var_ccy": None}],
    "concentration": {"hhi": 0.52, "effective_n": 1.92, "top_n_share": 1.0, "top_n": 5},
    "pnl": {"days": [60, 61], "dates": ["2024-01-02", "2024-01-03"], "daily": [5000.0, -2000.0],
            "cumulative": [5000.0, 3000.0], "drawdown": [0.0, 0.00198], "max_drawdown_pct": 0.00198},
    "model": {"n": 5000, "hit_rate": 0.53, "hit_low": 0.516, "hit_high": 0.544, "hits": 2650,
              "trials": 5000, "ic": 0.05, "calibration_slope": 0.9, "calibration_error": 1e-5,
              "uncertainty": 0.2, "confidence": 1.0},
}
LIMITS = {"ts": 1_700_000_000.0, "limits": [
    {"name": "position", "kind": "currency", "symbol": "SYM01", "limit": 160_000.0, "value": 150_000.0,
     "utilization": 0.9375, "breached": False},
    {"name": "leverage", "kind": "ratio", "symbol": None, "limit": 2.0, "value": 0.25,
     "utilization": 0.125, "breached": False},
    {"name": "position", "kind": "currency", "symbol": "SYM09", "limit": 160_000.0, "value": 0.0,
     "utilization": 0.0, "breached": False}]}


def _text(component) -> str:
    """All text inside a Dash component tree (what a reader of the page would see)."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    parts = [_text(getattr(component, "children", None))]
    if getattr(component, "label", None):
        parts.append(str(component.label))
    return " ".join(p for p in parts if p)


def test_sections_say_no_data_yet_when_nothing_was_written():
    for section in (page_module.var_table(None), page_module.model_panel(None),
                    page_module.positions_table(None, None), page_module.limits_table(None),
                    page_module.history_table([])):
        assert "No " in _text(section) and "yet" in _text(section) or "No open" in _text(section)
    for fig in (page_module.underwater_figure(None), page_module.pnl_figure(None),
                page_module.concentration_figure(None)):
        assert fig["data"] == [] and "no" in fig["layout"]["annotations"][0]["text"].lower()
    cards = page_module.cards(None, None)
    assert cards[0].children == "no data yet" and len(cards) == 2 * len(page_module.CARDS)


def test_sections_show_every_method_both_levels_and_the_symbol_limit_utilization():
    table = _text(page_module.var_table(DOC))
    for label in page_module.METHOD_LABELS.values():
        assert label in table
    assert "1.23 %" in table and "2.46 %" in table and "12.42 k" in table
    positions = page_module.positions_table(DOC, LIMITS)
    assert "SYM01" in _text(positions) and "94 %" in _text(positions)
    limits = _text(page_module.limits_table(LIMITS))
    assert limits.index("leverage") < limits.index("position")      # portfolio-wide first
    assert "SYM09" not in limits and "1 per-symbol limits of flat symbols not shown" in limits
    fig = page_module.concentration_figure(DOC)
    assert fig["data"][0]["y"] == ["SYM01", "SYM02"] and "HHI 0.520" in fig["layout"]["title"]["text"]
    under = page_module.underwater_figure(DOC)
    assert under["data"][0]["y"] == [-0.0, pytest.approx(-0.198)]
    history = _text(page_module.history_table([{"ts": "1700000000.5", "from_state": "ACTIVE",
                                                "to_state": "HALTED", "reason": "button",
                                                "source": "button", "user": "admin"}]))
    assert "ACTIVE → HALTED" in history and "admin" in history


def test_malformed_documents_do_not_break_the_sections():
    odd = {"var": [{"method": "historical", "confidence": 0.95, "var_pct": "x"}],
           "positions": [{"symbol": "S", "value": None}], "pnl": {"daily": [None]}, "model": {"n": 3}}
    assert "–" in _text(page_module.var_table(odd))
    page_module.positions_table(odd, {"limits": ["junk", {"symbol": "S", "utilization": None}]})
    page_module.limits_table({"limits": [{"name": "x", "utilization": "bad"}]})
    page_module.model_panel(odd)
    assert page_module.pnl_figure(odd)["data"][0]["y"] == [None]
    assert "Malformed" in _text(page_module.positions_table({"positions": [{"no symbol": 1}]}, None))


LAST_LEN = "(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot'); " \
           "return g && g.data ? g.data.reduce((n, t) => n + ((t.x || []).length), 0) : null; }"


@pytest.mark.timeout(240)
def test_risk_page_shows_live_var_for_every_method_and_its_charts(console, page):
    page.goto(console + "/risk")
    assert "Risk" in page.inner_text("nav")
    # risk.compute runs every few seconds on the worker; the pipeline opens positions
    wait_for(lambda: page.locator("#risk-var-row-monte_carlo").count() > 0, 90, 0.5,
             "the VaR table with a Monte Carlo row")
    for method in page_module.METHOD_LABELS:
        row = page.inner_text(f"#risk-var-row-{method}")
        assert len(re.findall(r"-?\d+\.\d\d %", row)) == 4, (method, row)
    wait_for(lambda: re.search(r"\d+\.\d\d %", page.inner_text("#risk-var99-value")), 30, 0.5,
             "the VaR 99 % card")
    for graph in ("#risk-underwater-graph", "#risk-pnl-graph", "#risk-concentration-graph"):
        assert page.evaluate("(s) => !!document.querySelector(s + ' .js-plotly-plot')", graph)
    # positions come from the live paper broker: the concentration chart gets bars
    wait_for(lambda: (page.evaluate(LAST_LEN, "#risk-concentration-graph") or 0) > 0, 90, 0.5,
             "concentration bars for open positions")
    assert "SYM" in page.inner_text("#risk-positions")
    assert page.inner_text("#risk-state-badge") in {"ACTIVE", "REDUCING", "HALTED", "no data yet"}
    assert page.locator("#risk-model").count() == 1
    assert not page.console_errors, page.console_errors
