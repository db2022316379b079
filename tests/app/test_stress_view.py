"""The Stress tests page's pure builders: the form's percent <-> fraction conversion and the
engine's verdicts phrased beside each field, and the result cards, figures and tables built
from real engine results on a seeded synthetic book."""
from __future__ import annotations

import math

import pytest

from app.components import stress_view as view
from core import stress
from tests.app.test_risk_page import _text


def _form(**changes) -> dict:
    texts = {f.key: view.default_text(f) for f in view.FIELDS}
    texts.update({k.replace("__", "-"): v for k, v in changes.items()})
    return texts


@pytest.fixture(scope="module")
def book():
    return stress.synthetic_portfolio(20, seed=3, days=120)


@pytest.fixture(scope="module")
def results(book):
    standard = stress.run_standard(book)
    mc = stress.run_scenario(book, {"kind": "monte_carlo", "params": {"n_paths": 4000, "n_chunks": 4}})
    return standard + [mc]


# ---- form ------------------------------------------------------------------------------------
def test_defaults_pass_and_reach_the_engine_as_fractions():
    specs, errors = view.specs_for("all", _form())
    assert errors == {}
    by_kind = {s["kind"]: s["params"] for s in specs}
    assert list(by_kind) == list(view.RUN_ALL_KINDS)
    assert by_kind["market_crash"]["index_shock"] == -0.20
    assert by_kind["liquidity_crisis"]["premium"] == 0.05 and by_kind["liquidity_crisis"]["participation"] == 0.10
    assert by_kind["volatility_spike"]["multiplier"] == 3.0 and by_kind["volatility_spike"]["n_paths"] == 10_000
    assert by_kind["correlation_breakdown"] == {"target_correlation": 1.0, "blend": 1.0}
    assert by_kind["monte_carlo"] == {"n_paths": 100_000, "n_chunks": 20, "distribution": "student_t"}
    assert view.options_from_form(_form()) == ({"confidence": 0.95, "seed": 0}, {})
    assert view.form_errors(_form()) == {}


@pytest.mark.parametrize("text, message", [
    ("-150", "Index shock must be ≥ -100 % and < 0 %; got -150 %"),
    ("0", "Index shock must be ≥ -100 % and < 0 %; got 0 %"),
    ("NaN", "Index shock must be a finite number; got 'NaN'"),
    ("abc", "Index shock: enter a number (got 'abc')"),
    ("", "Index shock: enter a number"),
    ("-1,5", "Index shock: enter a number (got '-1,5')"),
])
def test_a_bad_crash_is_named_beside_its_field_in_percent(text, message):
    spec, errors = view.scenario_from_form("market_crash", _form(market_crash__index_shock=text))
    assert spec is None and errors == {"market_crash-index_shock": message}


def test_edges_and_other_units_are_judged_by_the_engine():
    assert view.scenario_from_form("market_crash", _form(market_crash__index_shock="-100 %"))[0][
        "params"]["index_shock"] == -1.0
    assert view.form_errors(_form(volatility_spike__multiplier="0")) == {
        "volatility_spike-multiplier": "Volatility multiplier must be > 0x and ≤ 20x; got 0x"}
    assert view.form_errors(_form(volatility_spike__n_paths="2500.5")) == {
        "volatility_spike-n_paths": "Simulated paths must be a whole number; got 2500.5"}
    # 99.9 % is the engine's 0.999 exactly, not 0.9990000000000001 (which it would refuse)
    assert view.options_from_form(_form(options__confidence="99.9"))[0]["confidence"] == 0.999
    assert view.options_from_form(_form(options__confidence="100"))[1] == {
        "options-confidence": "Confidence must be ≥ 50 % and ≤ 99.9 %; got 100 %"}
    assert "whole number" in view.options_from_form(_form(options__seed="1.5"))[1]["options-seed"]


def test_every_bad_field_is_named_at_once_and_valid_fields_stay_quiet():
    errors = view.form_errors(_form(liquidity_crisis__premium="-5", liquidity_crisis__participation="0",
                                    liquidity_crisis__spread_multiplier="5"))
    assert set(errors) == {"liquidity_crisis-premium", "liquidity_crisis-participation"}
    assert errors["liquidity_crisis-participation"].endswith("got 0 %")


def test_monte_carlo_paths_per_chunk_rule_uses_the_users_other_values():
    assert view.scenario_from_form("monte_carlo", _form(monte_carlo__n_paths="1,000,000",
                                                        monte_carlo__n_chunks="256"))[1] == {}
    spec, errors = view.scenario_from_form("monte_carlo", _form(monte_carlo__n_paths="1000"))
    assert spec is None and list(errors) == ["monte_carlo-n_chunks"]
    assert "at least 500" in errors["monte_carlo-n_chunks"]


@pytest.mark.parametrize("text, value", [("100,000", 100_000.0), ("-20 %", -20.0), ("3x", 3.0), ("1e5", 1e5),
                                         (" 5 ", 5.0), ("1,5", None), ("", None), (None, None), ("--", None)])
def test_parse_number_takes_what_people_type(text, value):
    assert view.parse_number(text) == value


def test_custom_editor_parses_percent_shocks_and_checks_symbols_of_the_book(book):
    shocks, problem = view.parse_asset_shocks("SYM01 -30, sym02: +10 %\nSYM03=5")
    assert problem is None and shocks == {"SYM01": -0.30, "SYM02": 0.10, "SYM03": 0.05}
    assert view.parse_asset_shocks(view.format_asset_shocks(shocks))[0] == shocks
    assert "e.g. SYM01 -30" in view.parse_asset_shocks("SYM01")[1]
    assert view.parse_asset_shocks("SYM01 1; sym01 2")[1] == "SYM01 is given twice"
    spec, errors = view.custom_from_form(_form(custom__asset_shocks="SYM01 -30", custom__index="-5"),
                                         book.symbols)
    assert errors == {} and spec["params"] == {"asset_shocks": {"SYM01": -0.30}, "factor_shocks": {"index": -0.05}}
    _, errors = view.custom_from_form(_form(custom__asset_shocks="NOPE -30"), book.symbols)
    assert list(errors) == ["custom-asset_shocks"] and "unknown symbol 'NOPE'" in errors["custom-asset_shocks"]
    _, errors = view.custom_from_form(_form(custom__index="", custom__name="bad/name"))
    assert set(errors) == {"custom-name", "custom-asset_shocks"}      # no shock at all, and the name
    _, errors = view.custom_from_form(_form(custom__index="-150"))
    assert list(errors) == ["custom-index"] and "got -1.5" in errors["custom-index"]


# ---- results -------------------------------------------------------------------------------------
def test_waterfall_steps_sum_to_the_scenario_pnl_with_others_and_total(results):
    crash = results[0]
    fig = view.waterfall_figure(crash, top_n=5)
    trace = fig["data"][0]
    assert trace["type"] == "waterfall"
    assert trace["measure"] == ["relative"] * 6 + ["total"]
    assert trace["x"][5] == "others (15)" and trace["x"][-1] == "total"
    assert math.fsum(trace["y"][:-1]) == pytest.approx(crash["pnl"], rel=1e-12)
    assert trace["y"][-1] == crash["pnl"]
    biggest = max(crash["positions"], key=lambda p: abs(p["pnl"]))
    assert trace["x"][0] == biggest["symbol"]
    assert view.waterfall_figure(None)["data"] == []


def test_distribution_has_merged_bins_and_lines_at_minus_var_and_cvar(results):
    mc = view.monte_carlo_result(results)
    fig = view.mc_distribution_figure(mc)
    hist = mc["extras"]["monte_carlo"]["histogram"]
    bars = fig["data"][0]
    assert sum(bars["y"]) + hist["underflow"] + hist["overflow"] == 4000
    assert len(bars["x"]) == len(hist["edges"]) - 1
    var_line, cvar_line = fig["layout"]["shapes"]
    assert var_line["x0"] == var_line["x1"] == -mc["var_after"]
    assert cvar_line["x0"] == -mc["cvar_after"] < var_line["x0"]       # CVaR is the deeper loss
    assert [a["text"] for a in fig["layout"]["annotations"]] == ["VaR 95 %", "CVaR 95 %"]
    assert view.mc_distribution_figure(results[0])["data"] == []    # no simulation in a crash


def test_cards_show_pnl_var_worst_positions_breaches_and_halt(results):
    crash = results[0]
    text = _text(view.result_card(crash, 0))
    assert "Market crash" in text and view.fmt_money(crash["pnl"]) in text and view.fmt_pct(crash["pnl_pct"]) in text
    assert f"{view.fmt_money(crash['var_before'])} → {view.fmt_money(crash['var_after'])}" in text
    assert crash["worst_positions"][0]["symbol"] in text
    halting = {**crash, "would_halt": True, "halt_reason": "daily loss 11.8 % over 5 %",
               "breaches": [{"name": "daily_loss", "symbol": None, "value": 117_000.0, "limit": 50_000.0,
                             "utilization": 2.34}]}
    text = _text(view.result_card(halting, 0))
    assert "would halt" in text and "daily loss 11.8 % over 5 %" in text
    assert "daily_loss: 117.00 k over 50.00 k (234 %)" in text
    liquidity = _text(view.result_card(results[2], 2))
    assert "liquidation cost" in liquidity and "days to exit" in liquidity
    bar = view.pnl_by_scenario_figure(results)["data"][0]
    assert bar["y"] == [r["pnl"] for r in results] and bar["x"][0] == "Market crash"


def test_progress_panel_shows_real_progress_stage_elapsed_and_the_reason():
    job = {"id": "a" * 16, "status": "running", "user": "ops", "created": 100.0, "started": 101.0,
           "finished": None, "progress": {"done": 3, "total": 12, "stage": "Monte Carlo chunk 2 done"},
           "scenarios": [{"kind": "monte_carlo", "name": "Monte Carlo"}], "error": None}
    panel = view.progress_panel(job, now=105.5)
    bar = panel[1]
    assert bar.value == 25.0 and bar.label == "3 / 12" and bar.animated
    assert "Monte Carlo chunk 2 done" in _text(panel) and "elapsed 4.5 s" in _text(panel)
    cancelled = view.progress_panel({**job, "status": "cancelled", "finished": 103.0, "error": "cancelled by ops"},
                                    now=200.0)
    assert "cancelled by ops" in _text(cancelled) and "elapsed 2.0 s" in _text(cancelled)
    assert not cancelled[1].animated and cancelled[1].color == "warning"


def test_compare_rows_are_b_minus_a_matched_by_scenario():
    a = {"id": "a", "summary": [{"kind": "market_crash", "name": "Market crash", "pnl": -100.0, "var_after": 10.0},
                                {"kind": "monte_carlo", "name": "Monte Carlo", "pnl": -30.0, "var_after": 30.0}]}
    b = {"id": "b", "summary": [{"kind": "market_crash", "name": "Market crash", "pnl": -160.0, "var_after": 12.5},
                                {"kind": "custom", "name": "Mine", "pnl": 5.0, "var_after": 1.0}]}
    rows = view.compare_rows(a, b)
    assert [r["name"] for r in rows] == ["Market crash", "Monte Carlo", "Mine"]
    assert rows[0]["pnl_diff"] == -60.0 and rows[0]["var_after_diff"] == 2.5
    assert rows[1]["pnl_b"] is None and rows[1]["pnl_diff"] is None and rows[2]["pnl_a"] is None
    table = _text(view.compare_table(a, b))
    assert "Market crash -100 -160 -60 10 12 2" in table and "Mine – 5 –" in table
    assert "Pick two different runs" in _text(view.compare_table(a, a))
    assert view.headline(b) == "-160 (Market crash)"


def test_csv_errors_and_portfolio_summary(book):
    errors = [{"row": 2, "message": "quantity 'abc' is not a number"}, {"row": None, "message": "too big"}]
    text = _text(view.csv_errors_table(errors))
    assert "2 problem(s)" in text and "quantity 'abc' is not a number" in text and "file" in text
    info = view.book_info("upload", book.equity, book.values)
    assert info["gross"] == pytest.approx(float(abs(book.values).sum()))
    assert info["net"] == pytest.approx(float(book.values.sum()))
    assert "20 positions" in _text(view.portfolio_summary(info, "Uploaded:"))
