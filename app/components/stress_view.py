"""The Stress tests page's pieces as pure functions: form text in, engine specs or messages
out; job records and scenario results (core.stress_jobs.get_job / list_jobs) in, Dash
components or plain-dict figures out. No Redis, no request: unit-testable without a browser.

Units. The form shows shocks, premiums, blends and the confidence in PERCENT and
multipliers as "x"; the engine (core.stress) takes signed FRACTIONS (-20 % -> -0.20). A
`Field` carries the scale between the two (UI value = engine value x scale). A P&L is signed
currency (a loss < 0); VaR and CVaR are positive currency losses, so on a P&L axis they sit
at x = -VaR and x = -CVaR.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import dash_bootstrap_components as dbc
from dash import html

from app.components import charts
from app.components.risk_view import fmt_money, fmt_num, fmt_pct, no_data, utc
from core import stress, stress_jobs
from core.stress import StressInputError

RUN_KINDS = stress.STANDARD_KINDS + ("monte_carlo", "custom")
RUN_ALL_KINDS = stress.STANDARD_KINDS + ("monte_carlo",)
STATUS_COLORS = {"queued": "secondary", "running": "info", "done": "success", "failed": "danger",
                 "cancelled": "warning"}
WATERFALL_TOP = 10
LOSS_COLOR, GAIN_COLOR = "#ef476f", "#06d6a0"


# ---- form fields ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """A numeric range in ENGINE units, shaped as core.stress.PARAM_RANGES' entries (which
    fields use directly): low/high, open or closed ends, integer or not."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below


@dataclass(frozen=True)
class Field:
    """One input of the form. `kind` is a scenario kind, "options" or "custom" (the editor);
    `param` the engine's name. UI value = engine value x `scale`; `unit` is appended to
    numbers in messages ("%", "x" or "")."""
    kind: str
    param: str
    label: str
    unit: str = ""
    scale: float = 1.0
    control: str = "number"            # number | select | text | textarea
    choices: tuple[str, ...] = ()
    bounds: Bounds | None = None      # or a core.stress.PARAM_RANGES entry (same shape)
    optional: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.param}"


def _param(kind: str, param: str, label: str, unit: str = "", scale: float = 1.0) -> Field:
    return Field(kind, param, label, unit, scale, bounds=stress.PARAM_RANGES[kind][param])


_CONF_LO, _CONF_HI = stress_jobs.CONFIDENCE_RANGE
FIELDS: tuple[Field, ...] = (
    _param("market_crash", "index_shock", "Index shock", "%", 100.0),
    _param("volatility_spike", "multiplier", "Volatility multiplier", "x"),
    _param("volatility_spike", "n_paths", "Simulated paths"),
    _param("liquidity_crisis", "premium", "Liquidity premium", "%", 100.0),
    _param("liquidity_crisis", "spread_multiplier", "Spread multiplier", "x"),
    _param("liquidity_crisis", "impact_coefficient", "Impact coefficient"),
    _param("liquidity_crisis", "participation", "Daily volume sold at most", "%", 100.0),
    _param("correlation_breakdown", "target_correlation", "Target correlation"),
    _param("correlation_breakdown", "blend", "Blend towards the target", "%", 100.0),
    _param("monte_carlo", "n_paths", "Paths"),
    _param("monte_carlo", "n_chunks", "Chunks (at least)"),
    Field("monte_carlo", "distribution", "Distribution", control="select",
          choices=tuple(stress.MC_DISTRIBUTIONS)),
    Field("custom", "name", "Name", control="text"),
    Field("custom", "index", "Index shock", "%", 100.0, optional=True),
    Field("custom", "asset_shocks", "Asset shocks (%)", control="textarea"),
    Field("options", "confidence", "Confidence", "%", 100.0, bounds=Bounds(_CONF_LO, _CONF_HI)),
    Field("options", "seed", "Seed", bounds=Bounds(0, 2**32 - 1, integer=True)),
)
BY_KEY = {f.key: f for f in FIELDS}
CUSTOM_DEFAULT_NAME = "My scenario"
# where an engine error's `field` is shown, beside which input
_CUSTOM_FIELDS = {"name": "custom-name", "factor_shocks": "custom-index", "asset_shocks": "custom-asset_shocks"}


def _fmt_number(x: float) -> str:
    """A number as a person types it: 100,000 / -20 / 0.95."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:g}"


def _with_unit(x: float, unit: str) -> str:
    return _fmt_number(x) + (f" {unit}" if unit == "%" else unit)


def default_text(field: Field) -> str:
    """The field's default as the form shows it."""
    if field.kind == "options":
        value = stress_jobs.validate_options({})[field.param]
    elif field.kind == "custom":
        value = {"name": CUSTOM_DEFAULT_NAME, "asset_shocks": "",
                 "index": stress.DEFAULT_PARAMS["custom"]["factor_shocks"]["index"]}[field.param]
    else:
        value = stress.DEFAULT_PARAMS[field.kind][field.param]
    return ui_text(field, value)


def ui_text(field: Field, value) -> str:
    """An engine value as the form shows it (x scale: -0.2 -> "-20" for a percent field)."""
    if isinstance(value, str):
        return value
    return _fmt_number(round(value * field.scale, 10))


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text) -> float | None:
    """The number a person typed ("-20", "-20 %", "100,000", "3x", "1e5", "nan"), or None
    when it is not one. Commas are thousands separators only (1,000), never decimals."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        return None
    s = text.strip().rstrip("%xX×").strip().replace("_", "").replace(" ", "")
    if "," in s:
        if not _THOUSANDS.match(s):
            return None
        s = s.replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def _range_message(field: Field, ui_value: float) -> str:
    b, u = field.bounds, field.unit
    low, high = round(b.low * field.scale, 10), round(b.high * field.scale, 10)
    return (f"{field.label} must be {'>' if b.low_open else '≥'} {_with_unit(low, u)} and "
            f"{'<' if b.high_open else '≤'} {_with_unit(high, u)}; got {_with_unit(ui_value, u)}")


def number_message(field: Field, text, engine_error: str) -> str:
    """`engine_error` (the engine rejected this field's value) said in the form's units."""
    ui_value = parse_number(text)
    if ui_value is None:
        shown = "" if text in (None, "") else f" (got {str(text)[:24]!r})"
        return f"{field.label}: enter a number{shown}"
    if not math.isfinite(ui_value):
        return f"{field.label} must be a finite number; got {text!r}"
    engine_value = _to_engine(field, ui_value)
    b = field.bounds
    if b is not None and b.integer and engine_value != int(engine_value):
        return f"{field.label} must be a whole number; got {_fmt_number(ui_value)}"
    if b is not None and not b.contains(engine_value):
        return _range_message(field, ui_value)
    return f"{field.label}: {engine_error}"


def _to_engine(field: Field, ui_value: float) -> float:
    """UI units -> engine units, rounded so that 99.9 % is 0.999, not 0.9990000000000001."""
    return ui_value if field.scale == 1.0 else round(ui_value / field.scale, 12)


def _engine_value(field: Field, text):
    """What the engine gets for this field: fraction for percent fields, the raw text when it
    is not a number (the engine then says why), a string for selects."""
    if field.control == "select":
        return text
    x = parse_number(text)
    return text if x is None else _to_engine(field, x)


def _field_message(field: Field, text, exc: StressInputError) -> str:
    if field.control == "number":
        return number_message(field, text, str(exc))
    return f"{field.label}: {exc}"


def scenario_from_form(kind: str, texts: Mapping[str, object]) -> tuple[dict | None, dict[str, str]]:
    """(spec for core.stress, {}) or (None, {field key: message}) for a standard or Monte Carlo
    kind. The engine judges the whole spec; a field it rejects gets its message and its default
    back, and the rest is judged again, so every bad field is named at once and cross-field
    rules (Monte Carlo paths per chunk) see the user's other values."""
    fields = {f.param: f for f in FIELDS if f.kind == kind}
    params = {p: _engine_value(f, texts.get(f.key)) for p, f in fields.items()}
    errors: dict[str, str] = {}
    for _ in range(len(fields) + 1):
        try:
            spec = stress.validate_scenario({"kind": kind, "params": params})
        except StressInputError as exc:
            field = fields.get(exc.field)
            if field is None:
                errors[route_error(kind, exc.field)] = str(exc)
                break
            if field.key in errors:         # a cross-field rule its default did not satisfy
                break
            errors[field.key] = _field_message(field, texts.get(field.key), exc)
            params[field.param] = stress.DEFAULT_PARAMS[kind][field.param]
            continue
        return (None, errors) if errors else (spec, {})
    return None, errors


SHOCK_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.-]*)\s*(?:[:=]|\s)\s*([^:=\s][^:=]*?)\s*$")


def parse_asset_shocks(text) -> tuple[dict[str, float], str | None]:
    """"SYM01 -30, SYM02: +10 %" (comma, semicolon or newline separated, percent) ->
    ({symbol: fraction}, None) or ({}, message). Symbols are upper-cased; a blank text is {}."""
    if text is None or not str(text).strip():
        return {}, None
    out: dict[str, float] = {}
    for entry in re.split(r"[\n;,]+", str(text)):
        if not entry.strip():
            continue
        m = SHOCK_LINE.match(entry)
        value = parse_number(m.group(2)) if m else None
        if value is None or not math.isfinite(value):
            return {}, f"{entry.strip()[:32]!r}: write SYMBOL followed by a shock in %, e.g. SYM01 -30"
        symbol = m.group(1).upper()
        if symbol in out:
            return {}, f"{symbol} is given twice"
        out[symbol] = value / 100.0
    return out, None


def format_asset_shocks(shocks: Mapping[str, float]) -> str:
    """The editor's text for {symbol: fraction}: one "SYMBOL -30" per line (percent)."""
    return "\n".join(f"{s} {_fmt_number(round(100 * x, 8))}" for s, x in sorted(shocks.items()))


def custom_from_form(texts: Mapping[str, object], symbols=None) -> tuple[dict | None, dict[str, str]]:
    """The custom editor as a scenario spec (validated; asset shocks against `symbols` when
    given), or (None, {field key: message})."""
    errors = {}
    try:
        name = stress.custom_name(texts.get("custom-name"))
    except StressInputError as exc:
        name, errors["custom-name"] = None, str(exc)
    shocks, problem = parse_asset_shocks(texts.get("custom-asset_shocks"))
    if problem:
        errors["custom-asset_shocks"] = problem
    index_text = texts.get("custom-index")
    index = BY_KEY["custom-index"]
    factor = {}
    if index_text is not None and str(index_text).strip():
        factor = {"index": _engine_value(index, index_text)}
    spec = {"kind": "custom", "name": name or CUSTOM_DEFAULT_NAME,
            "params": {"asset_shocks": shocks, "factor_shocks": factor}}
    try:
        valid = stress.validate_scenario(spec, symbols)
    except StressInputError as exc:
        key = route_error("custom", exc.field)
        errors.setdefault(key, _field_message(index, index_text, exc) if key == index.key else str(exc))
    return (None, errors) if errors else (valid, {})


def options_from_form(texts: Mapping[str, object]) -> tuple[dict | None, dict[str, str]]:
    """{"confidence", "seed"} for core.stress_jobs, or (None, {field key: message})."""
    errors, options = {}, {}
    for f in (BY_KEY["options-confidence"], BY_KEY["options-seed"]):
        text = texts.get(f.key)
        value = parse_number(text)
        engine = None if value is None else _to_engine(f, value)
        if f.param == "seed" and engine is not None and math.isfinite(engine) and engine == int(engine):
            engine = int(engine)
        try:
            options[f.param] = stress_jobs.validate_options({f.param: engine})[f.param]
        except StressInputError as exc:
            errors[f.key] = number_message(f, text, str(exc))
    if errors:
        return None, errors
    return stress_jobs.validate_options(options), {}


def route_error(kind: str, engine_field: str | None) -> str:
    """The field key an engine error belongs beside: the scenario's own parameter, the custom
    editor's field, an option, or "" (the run message) when no input matches."""
    if kind == "custom" and engine_field in _CUSTOM_FIELDS:
        return _CUSTOM_FIELDS[engine_field]
    for key in (f"{kind}-{engine_field}", f"options-{engine_field}"):
        if key in BY_KEY:
            return key
    return ""


def form_errors(texts: Mapping[str, object]) -> dict[str, str]:
    """Every field's message (field key -> text) for the whole form, as the page shows them
    beside the inputs while the user types."""
    errors: dict[str, str] = {}
    for kind in RUN_ALL_KINDS:
        errors.update(scenario_from_form(kind, texts)[1])
    errors.update(custom_from_form(texts)[1])
    errors.update(options_from_form(texts)[1])
    errors.pop("", None)
    return errors


def specs_for(run: str, texts: Mapping[str, object]) -> tuple[list[dict] | None, dict[str, str]]:
    """The scenarios a Run button submits ("all" = the four standard + Monte Carlo) with their
    validation messages; custom asset shocks are checked against the book when the job starts."""
    kinds = RUN_ALL_KINDS if run == "all" else (run,)
    specs, errors = [], {}
    for kind in kinds:
        spec, errs = custom_from_form(texts) if kind == "custom" else scenario_from_form(kind, texts)
        errors.update(errs)
        if spec:
            specs.append(spec)
    return (None if errors else specs), errors


def labels_of(keys) -> str:
    return ", ".join(BY_KEY[k].label for k in keys if k in BY_KEY)


# ---- portfolio -------------------------------------------------------------------------------
def portfolio_summary(info: Mapping | None, title: str) -> html.Div:
    """"<title>: n positions, gross, net, equity" from core.stress_jobs' portfolio_info shape."""
    if not info:
        return no_data("No portfolio.")
    return html.Div([html.Span(title, className="fw-semibold me-2"),
                     html.Span(f"{info.get('n_assets', 0)} positions · gross {fmt_money(info.get('gross'))} · "
                               f"net {fmt_money(info.get('net'))} · equity {fmt_money(info.get('equity'))}")],
                    className="small")


def book_info(source: str, equity, values) -> dict:
    """A book's headline in core.stress_jobs' portfolio_info shape: positions, gross and net
    exposure (signed position values qty x price), equity."""
    values = [float(v) for v in values]
    return {"source": source, "n_assets": len(values), "equity": equity,
            "gross": math.fsum(abs(v) for v in values), "net": math.fsum(values)}


def csv_errors_table(errors: list[Mapping]) -> html.Div:
    """core.stress.parse_portfolio_csv's per-row errors; row None = the whole file."""
    rows = [html.Tr([html.Td("file" if e.get("row") is None else e["row"]), html.Td(e.get("message", ""))])
            for e in errors]
    return html.Div([
        html.Div(f"{len(errors)} problem(s) in the file: nothing runs until it is fixed.",
                 className="text-danger small mb-1"),
        dbc.Table([html.Thead(html.Tr([html.Th("Row"), html.Th("Problem")])), html.Tbody(rows)],
                  size="sm", striped=True, id="stress-csv-errors-table", className="mb-0")])


# ---- progress --------------------------------------------------------------------------------
def elapsed_s(job: Mapping, now: float) -> float | None:
    """Seconds the job has run (or ran): from started (else created) to finished (else now)."""
    start = job.get("started") or job.get("created")
    if start is None:
        return None
    return max(0.0, (job.get("finished") or now) - start)


def status_badge(status: str | None, badge_id: str | None = None) -> dbc.Badge:
    status = status or "unknown"
    extra = {"id": badge_id} if badge_id else {}
    return dbc.Badge(status, color=STATUS_COLORS.get(status, "secondary"), **extra)


def progress_panel(job: Mapping | None, now: float) -> list:
    """Status, progress bar (units stored / total: scenarios plus Monte Carlo chunks), stage,
    elapsed time, and the reason of a failure or cancellation."""
    if not job:
        return [html.Span("No job running: pick a portfolio and press Run.", className="text-body-secondary",
                          id="stress-status-text")]
    progress = job.get("progress") or {}
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    status = job.get("status")
    fraction = done / total if total else (1.0 if status == stress_jobs.DONE else 0.0)
    active = status in stress_jobs.ACTIVE_STATUSES
    bar = dbc.Progress(value=100 * fraction, label=f"{done} / {total}", striped=active, animated=active,
                       color=STATUS_COLORS.get(status, "info"),
                       id="stress-progress-bar", style={"height": "22px"}, className="mb-1")
    took = elapsed_s(job, now)
    detail = [html.Span(progress.get("stage") or "", id="stress-progress-stage", className="me-3"),
              html.Span("" if took is None else f"elapsed {took:.1f} s", id="stress-progress-elapsed")]
    head = [status_badge(status, "stress-status"),
            html.Span(f" job {job.get('id', '?')} · {_names(job)} · {job.get('user', '?')}",
                      className="small text-body-secondary")]
    out = [html.Div(head, className="mb-1"), bar, html.Div(detail, className="small")]
    if status in (stress_jobs.FAILED, stress_jobs.CANCELLED) and job.get("error"):
        out.append(html.Div(job["error"], id="stress-job-error",
                            className="small " + ("text-danger" if status == "failed" else "text-warning")))
    return out


def _names(job: Mapping) -> str:
    return ", ".join(s.get("name", s.get("kind", "?")) for s in job.get("scenarios") or []) or "–"


# ---- results ----------------------------------------------------------------------------------
def _signed_class(x) -> str:
    try:
        return "text-danger" if float(x) < 0 else "text-success"
    except (TypeError, ValueError):
        return ""


def _before_after(label: str, before, after) -> html.Tr:
    return html.Tr([html.Td(label, className="text-body-secondary"),
                    html.Td(f"{fmt_money(before)} → {fmt_money(after)}")])


def _extras_line(result: Mapping) -> str:
    """One kind-specific line: liquidation time, diversification, simulated figures."""
    extras, kind = result.get("extras") or {}, result.get("kind")
    if kind == "liquidity_crisis":
        return (f"liquidation cost {fmt_money(extras.get('total_cost'))}, up to "
                f"{_fmt_days(extras.get('max_days_to_liquidate'))} to exit "
                f"(value-weighted {_fmt_days(extras.get('value_weighted_days'))})")
    if kind == "correlation_breakdown":
        return (f"diversification ratio {fmt_num(extras.get('diversification_ratio_before'), '.2f')} → "
                f"{fmt_num(extras.get('diversification_ratio_after'), '.2f')} (1 = none left)")
    if kind == "volatility_spike" and extras.get("monte_carlo"):
        mc = extras["monte_carlo"]
        return (f"simulated VaR {fmt_money(mc.get('var_before'))} → {fmt_money(mc.get('var_after'))} "
                f"over {mc.get('n_paths', 0):,} paths")
    if kind == "monte_carlo" and extras.get("monte_carlo"):
        mc = extras["monte_carlo"]
        return f"{mc.get('n_paths', 0):,} paths in {mc.get('n_chunks', 0)} chunks, {mc.get('distribution', '')}"
    return ""


def _fmt_days(x) -> str:
    try:
        return f"{float(x):,.2f} days"
    except (TypeError, ValueError):
        return "–"


def _breach_text(row: Mapping) -> str:
    who = f" {row['symbol']}" if row.get("symbol") else ""
    util = row.get("utilization")
    return (f"{row.get('name', '?')}{who}: {fmt_money(row.get('value'))} over {fmt_money(row.get('limit'))}"
            + ("" if util is None else f" ({100 * float(util):.0f} %)"))


def result_card(result: Mapping, index: int) -> dbc.Card:
    """One scenario: P&L (currency, % of equity), VaR / CVaR before → after, worst positions,
    limits that would breach, and whether the SafetyController would halt."""
    halt = (dbc.Badge("would halt", color="danger", className="ms-2", title=result.get("halt_reason") or "")
            if result.get("would_halt") else dbc.Badge("no halt", color="success", className="ms-2"))
    worst = result.get("worst_positions") or []
    breaches = result.get("breaches") or []
    body = [
        html.Div(fmt_money(result.get("pnl")), id=f"stress-card-{index}-pnl",
                 className="fs-4 fw-semibold " + _signed_class(result.get("pnl"))),
        html.Div(f"{fmt_pct(result.get('pnl_pct'))} of equity {fmt_money(result.get('equity'))}",
                 className="small text-body-secondary mb-2"),
        dbc.Table(html.Tbody([_before_after("VaR", result.get("var_before"), result.get("var_after")),
                              _before_after("CVaR", result.get("cvar_before"), result.get("cvar_after"))]),
                  size="sm", className="mb-2"),
        html.Div(_extras_line(result), className="small mb-2"),
        html.Div([html.Span("Worst: ", className="text-body-secondary"),
                  ", ".join(f"{p['symbol']} {fmt_money(p.get('pnl'))}" for p in worst[:5]) or "no losing position"],
                 className="small"),
        html.Div([html.Span("Limits breached: ", className="text-body-secondary"),
                  html.Ul([html.Li(_breach_text(b)) for b in breaches[:6]], className="mb-0")
                  if breaches else "none"], className="small"),
    ]
    if result.get("would_halt"):
        body.append(html.Div(f"Halt: {result.get('halt_reason') or 'loss rule'}", className="small text-danger"))
    return dbc.Card([dbc.CardHeader([html.Span(result.get("name", "?"), className="fw-semibold"), halt]),
                     dbc.CardBody(body)],
                    id=f"stress-card-{index}", className=f"h-100 stress-card stress-card-{result.get('kind')}")


def result_cards(results: list[Mapping]) -> dbc.Row | html.P:
    if not results:
        return no_data("No results in this run.")
    return dbc.Row([dbc.Col(result_card(r, i), xs=12, md=6, xl=4, className="mb-3")
                    for i, r in enumerate(results)], id="stress-cards")


def pnl_by_scenario_figure(results: list[Mapping]) -> dict:
    if not results:
        return charts.empty_figure("P&L by scenario: no results")
    pnl = [r.get("pnl") for r in results]
    trace = {"type": "bar", "x": [r.get("name") for r in results], "y": pnl, "name": "P&L",
             "marker": {"color": [LOSS_COLOR if (v or 0) < 0 else GAIN_COLOR for v in pnl]},
             "text": [fmt_money(v) for v in pnl], "textposition": "auto"}
    return charts.figure([trace], "P&L by scenario", yaxis={"title": {"text": "P&L (currency)"}})


def waterfall_figure(result: Mapping | None, top_n: int = WATERFALL_TOP) -> dict:
    """P&L by position: the `top_n` largest |P&L| positions, "others" for the rest, and the
    total, which equals the scenario's P&L."""
    positions = (result or {}).get("positions") or []
    if not positions:
        return charts.empty_figure("P&L by position: pick a scenario with results")
    ranked = sorted(positions, key=lambda p: -abs(p.get("pnl") or 0.0))
    top, rest = ranked[:top_n], ranked[top_n:]
    total = float(result.get("pnl", math.fsum(p.get("pnl") or 0.0 for p in positions)))
    x = [p["symbol"] for p in top]
    y = [float(p.get("pnl") or 0.0) for p in top]
    if rest:
        x.append(f"others ({len(rest)})")
        y.append(total - math.fsum(y))
    trace = {"type": "waterfall", "x": x + ["total"], "y": y + [total],
             "measure": ["relative"] * len(y) + ["total"], "name": "P&L",
             "decreasing": {"marker": {"color": LOSS_COLOR}}, "increasing": {"marker": {"color": GAIN_COLOR}},
             "totals": {"marker": {"color": charts.SERIES_COLORS[0]}}, "connector": {"line": {"width": 0.5}}}
    return charts.figure([trace], f"P&L by position: {result.get('name', '?')} ({fmt_money(total)})",
                         yaxis={"title": {"text": "P&L (currency)"}}, showlegend=False)


def _vline(x: float, label: str, color: str, dash: str, side: str) -> tuple[dict, dict]:
    """A vertical line at P&L x and its label on `side` ("left" / "right") of it."""
    shape = {"type": "line", "xref": "x", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1,
             "line": {"color": color, "dash": dash, "width": 1.5}}
    note = {"xref": "x", "x": x, "yref": "paper", "y": 1, "text": label, "showarrow": False,
            "xanchor": "right" if side == "left" else "left", "yanchor": "bottom",
            "font": {"size": 11, "color": color}}
    return shape, note


def mc_distribution_figure(result: Mapping | None) -> dict:
    """The Monte Carlo P&L histogram (merged bins of every chunk), with vertical lines at
    -VaR and -CVaR (P&L axis: a loss is negative)."""
    mc = ((result or {}).get("extras") or {}).get("monte_carlo") or {}
    hist = mc.get("histogram") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return charts.empty_figure("Monte Carlo P&L distribution: run Monte Carlo to see it")
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    trace = {"type": "bar", "x": centers, "y": counts, "width": widths, "name": "paths",
             "marker": {"color": charts.SERIES_COLORS[0]}}
    level = f"{100 * float(result.get('confidence', 0.95)):g} %"
    # CVaR >= VaR: its line lies left of VaR's, so the labels face away from each other
    var_line = _vline(-float(result["var_after"]), f"VaR {level}", LOSS_COLOR, "dash", "right")
    cvar_line = _vline(-float(result["cvar_after"]), f"CVaR {level}", charts.SERIES_COLORS[2], "dot", "left")
    outside = (hist.get("underflow") or 0) + (hist.get("overflow") or 0)
    title = (f"Monte Carlo P&L: {mc.get('n_paths', sum(counts)):,} paths, VaR {fmt_money(result['var_after'])}, "
             f"CVaR {fmt_money(result['cvar_after'])}" + (f" ({outside:,} beyond the axis)" if outside else ""))
    return charts.figure([trace], title, height=320, bargap=0, showlegend=False,
                         xaxis={"title": {"text": "one-day P&L (currency)"}},
                         yaxis={"title": {"text": "paths"}},
                         shapes=[var_line[0], cvar_line[0]], annotations=[var_line[1], cvar_line[1]])


def monte_carlo_result(results: list[Mapping]) -> Mapping | None:
    return next((r for r in results if r.get("kind") == "monte_carlo"), None)


def job_header(job: Mapping) -> html.Div:
    info = job.get("portfolio_info") or {}
    took = job.get("duration_s")
    return html.Div([status_badge(job.get("status")),
                     html.Span(f" run {job.get('id')} by {job.get('user', '?')} ({job.get('source', '?')}) at "
                               f"{utc(job.get('created'))} UTC" + ("" if took is None else f", took {took:.1f} s")
                               + f"; {info.get('source', '?')} book of {info.get('n_assets', '?')} positions",
                               className="small text-body-secondary")], id="stress-view-header")


# ---- history and comparison -------------------------------------------------------------------
def headline(record: Mapping) -> str:
    """The worst P&L of the run's scenarios and which one, or "–"."""
    rows = [r for r in record.get("summary") or [] if isinstance(r.get("pnl"), (int, float))]
    if not rows:
        return "–"
    worst = min(rows, key=lambda r: r["pnl"])
    return f"{fmt_money(worst['pnl'])} ({worst.get('name', '?')})"


def history_table(records: list[Mapping]) -> dbc.Table | html.P:
    """Past runs, newest first, each with a View button (pattern id stress-view-button)."""
    if not records:
        return no_data("No stress run yet.")
    rows = []
    for r in records:
        took = r.get("duration_s")
        rows.append(html.Tr([
            html.Td(utc(r.get("created"))), html.Td(r.get("user", "")), html.Td(r.get("source", "")),
            html.Td(_names(r), className="small"),
            html.Td("–" if took is None else f"{took:.1f} s"), html.Td(status_badge(r.get("status"))),
            html.Td(headline(r)),
            html.Td(dbc.Button("View", id={"type": "stress-view-button", "job": r["id"]}, size="sm",
                               color="secondary", outline=True, className="py-0")),
        ], id=f"stress-history-row-{r['id']}"))
    head = html.Thead(html.Tr([html.Th(h) for h in ("UTC", "Who", "Source", "Scenarios", "Took", "Status",
                                                    "Worst P&L", "")]))
    return dbc.Table([head, html.Tbody(rows)], size="sm", striped=True, hover=True, id="stress-history-table")


def job_option(record: Mapping) -> dict:
    return {"label": f"{utc(record.get('created'))} · {record.get('user', '?')} · {_names(record)} "
                     f"({record.get('status')})", "value": record["id"]}


def compare_rows(a: Mapping, b: Mapping) -> list[dict]:
    """Per scenario (matched by kind and name, A's order then B's extras): P&L and VaR after
    of both runs and the difference B - A (None where a side lacks the scenario)."""
    def by_key(job):
        return {(r.get("kind"), r.get("name")): r for r in job.get("summary") or []}
    left, right = by_key(a), by_key(b)
    keys = list(left) + [k for k in right if k not in left]
    rows = []
    for key in keys:
        ra, rb = left.get(key, {}), right.get(key, {})
        row = {"kind": key[0], "name": key[1]}
        for field in ("pnl", "var_after"):
            va, vb = ra.get(field), rb.get(field)
            row[f"{field}_a"], row[f"{field}_b"] = va, vb
            row[f"{field}_diff"] = vb - va if va is not None and vb is not None else None
        rows.append(row)
    return rows


def compare_table(a: Mapping | None, b: Mapping | None) -> dbc.Table | html.P:
    if not a or not b:
        return no_data("Pick two runs to compare.")
    if a.get("id") == b.get("id"):
        return no_data("Pick two different runs.")
    rows = [html.Tr([html.Td(r["name"]), html.Td(fmt_money(r["pnl_a"])), html.Td(fmt_money(r["pnl_b"])),
                     html.Td(fmt_money(r["pnl_diff"]), className=_signed_class(r["pnl_diff"])),
                     html.Td(fmt_money(r["var_after_a"])), html.Td(fmt_money(r["var_after_b"])),
                     html.Td(fmt_money(r["var_after_diff"]))])
            for r in compare_rows(a, b)]
    head = html.Thead(html.Tr([html.Th(h) for h in ("Scenario", "P&L A", "P&L B", "Δ P&L (B − A)",
                                                    "VaR after A", "VaR after B", "Δ VaR (B − A)")]))
    return dbc.Table([head, html.Tbody(rows)], size="sm", striped=True, id="stress-compare-table")
