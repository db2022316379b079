"""Stress tests: apply the StressTestEngine's scenarios (core.stress) to the live paper book or
an uploaded CSV portfolio as Celery jobs (core.stress_jobs), follow their progress, cancel
them, read the results and compare past runs.

Everyone may look; running, cancelling and editing saved scenarios need the operator role,
checked on the server in each callback (start_job, request_cancel and the custom-scenario
actions are audited). The form speaks percent, the engine fractions: app/components/
stress_view.py converts and phrases the engine's verdicts beside each field. The progress
poll (STRESS_POLL_MS) runs only while a job of this tab is active; the first tick after a
page load re-attaches to the user's own running job.
"""
from __future__ import annotations

import time

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate
from kombu.exceptions import KombuError

from app import auth, data, inputs
from app.components import charts
from app.components import stress_view as view
from core import risk_manager, schema, stress, stress_jobs
from core.audit import write_audit
from core.dialect import DB_ERRORS
from core.stress import StressInputError

dash.register_page(__name__, path="/stress", name="Stress tests", order=4)

FIELD, FEEDBACK = "stress-field", "stress-feedback"
POLL_MS = 500
HISTORY_ROWS = 30
SHOWN_TTL_S = 3600             # how long the "ended job shown once" marker lives
GRAPH_CONFIG = {"displaylogo": False}
RUN_IDS = [f"stress-run-{kind}" for kind in view.RUN_KINDS] + ["stress-run-all"]
DESCRIPTIONS = {
    "market_crash": "An index move passed to every asset through its beta.",
    "volatility_spike": "Every volatility multiplied (correlations kept); VaR re-simulated.",
    "liquidity_crisis": "Exit cost: widened spreads, a premium and square-root market impact.",
    "correlation_breakdown": "Correlations pushed towards the target: diversification lost.",
    "monte_carlo": "Full-revaluation simulation fanned out over the stress workers.",
    "custom": "Your own shocks per asset (%) and on the index; saved for reuse.",
}
CSV_HELP = ("Columns: symbol, quantity (shares) or weight (fraction or %), and optionally price "
            "(blank = last close). Comma, semicolon or tab separated.")


# ---- layout ----------------------------------------------------------------------------------
def _control(field: view.Field):
    ident = {"type": FIELD, "key": field.key}
    value = view.default_text(field)
    if field.control == "select":
        return dbc.Select(id=ident, options=list(field.choices), value=value, size="sm")
    if field.control == "textarea":
        return dbc.Textarea(id=ident, value=value, rows=3, size="sm", debounce=False,
                            placeholder="SYM01 -30\nSYM02 +10")
    return dbc.Input(id=ident, value=value, type="text", size="sm", debounce=False,
                     inputMode="decimal" if field.control == "number" else "text",
                     placeholder="none" if field.optional else "")


def _field(field: view.Field) -> html.Div:
    unit = {"%": " (%)", "x": " (×)"}.get(field.unit, "")
    return html.Div([dbc.Label(field.label + unit, className="small mb-0"), _control(field),
                     dbc.FormFeedback(id={"type": FEEDBACK, "key": field.key}, type="invalid")],
                    id=f"stress-field-{field.key}", className="mb-2")


def _fields(kind: str) -> list:
    return [_field(f) for f in view.FIELDS if f.kind == kind]


def _run_button(kind: str, text: str = "Run") -> dbc.Button:
    return dbc.Button(text, id=f"stress-run-{kind}", color="primary", size="sm", className="me-2")


def _scenario_card(kind: str) -> dbc.Col:
    extra = _custom_tools() if kind == "custom" else []
    body = [html.P(DESCRIPTIONS[kind], className="small text-body-secondary mb-2"), *extra,
            *_fields(kind), _run_button(kind)]
    return dbc.Col(dbc.Card([dbc.CardHeader(stress.LABELS[kind], className="fw-semibold"), dbc.CardBody(body)],
                            className="h-100", id=f"stress-scenario-{kind}"), xs=12, md=6, xl=4, className="mb-3")


def _custom_tools() -> list:
    return [dbc.Select(id="stress-custom-saved", placeholder="Load a saved scenario…", size="sm", className="mb-2"),
            html.Div([dbc.Button("Save", id="stress-custom-save", size="sm", color="secondary", className="me-2"),
                      dbc.Button("Delete", id="stress-custom-delete", size="sm", color="danger", outline=True)],
                     className="mb-2"),
            html.Div(id="stress-custom-msg", className="small mb-2")]


def _portfolio_card() -> dbc.Card:
    return dbc.Card([dbc.CardHeader("Portfolio", className="fw-semibold"), dbc.CardBody([
        dbc.RadioItems(id="stress-source", value="live", inline=True, className="mb-2",
                       options=[{"label": "Live paper book", "value": "live"},
                                {"label": "Uploaded CSV", "value": "upload"}]),
        dcc.Upload(html.Div(["Drop a CSV here or ", html.A("choose a file", href="#")]), id="stress-upload",
                   accept=".csv,text/csv,text/plain", max_size=stress.CSV_MAX_BYTES, className="mb-2",
                   style={"border": "1px dashed var(--bs-border-color)", "borderRadius": "6px",
                          "padding": "10px", "textAlign": "center", "cursor": "pointer"}),
        html.Div(CSV_HELP, className="small text-body-secondary mb-2"),
        html.Div(id="stress-upload-status", className="mb-2"),
        html.Div(id="stress-portfolio-summary"),
    ])], className="h-100")


def _run_card() -> dbc.Card:
    return dbc.Card([dbc.CardHeader("Run", className="fw-semibold"), dbc.CardBody([
        dbc.Row([dbc.Col(_field(view.BY_KEY["options-confidence"])), dbc.Col(_field(view.BY_KEY["options-seed"]))]),
        _run_button("all", "Run all (four standard + Monte Carlo)"),
        html.Div(id="stress-run-msg", className="small mt-2"),
        html.Hr(),
        html.Div(id="stress-job-panel", className="mb-2"),
        dbc.Button("Cancel", id="stress-cancel", color="danger", outline=True, size="sm", disabled=True),
        html.Span(id="stress-cancel-msg", className="small ms-2"),
    ])], className="h-100")


def _results_section() -> html.Div:
    return html.Div([
        html.H5("Results", className="mt-2"),
        html.Div(id="stress-view-header", className="mb-2"),
        html.Div([dbc.Button("Download CSV", id="stress-download-csv", size="sm", color="secondary",
                             className="me-2", disabled=True),
                  dbc.Button("Download JSON", id="stress-download-json", size="sm", color="secondary",
                             disabled=True),
                  dcc.Download(id="stress-download")], className="mb-2"),
        html.Div(id="stress-results"),
        dbc.Row([dbc.Col(dcc.Graph(id="stress-pnl-graph", config=GRAPH_CONFIG), lg=6),
                 dbc.Col([dbc.Select(id="stress-waterfall-scenario", size="sm", className="mb-1"),
                          dcc.Graph(id="stress-waterfall-graph", config=GRAPH_CONFIG)], lg=6)]),
        dcc.Graph(id="stress-mc-graph", config=GRAPH_CONFIG),
    ])


def _history_section() -> html.Div:
    return html.Div([
        html.H5("History", className="mt-3"),
        html.Div(id="stress-history"),
        html.H5("Compare two runs", className="mt-3"),
        dbc.Row([dbc.Col(dbc.Select(id="stress-compare-a", placeholder="Run A…", size="sm"), md=6),
                 dbc.Col(dbc.Select(id="stress-compare-b", placeholder="Run B…", size="sm"), md=6)],
                className="mb-2"),
        html.Div(id="stress-compare"),
    ])


def layout(**_kwargs):
    viewer = auth.require_role("operator")
    return html.Div([
        html.H4("Stress tests"),
        dbc.Alert(f"{viewer} You can look at runs but not start or cancel them.", color="secondary",
                  className="py-1 small", id="stress-viewer-note") if viewer else None,
        dbc.Row([dbc.Col(_portfolio_card(), lg=6, className="mb-3"), dbc.Col(_run_card(), lg=6, className="mb-3")]),
        dbc.Row([_scenario_card(kind) for kind in view.RUN_KINDS]),
        _results_section(),
        _history_section(),
        dcc.Store(id="stress-job"), dcc.Store(id="stress-view"), dcc.Store(id="stress-upload-data"),
        dcc.Interval(id="stress-poll", interval=POLL_MS, disabled=False),
    ])


# ---- form: messages beside the fields --------------------------------------------------------
def _keys(entries: list[dict]) -> list[str]:
    """The field keys of a pattern-matching (ALL) input or output list, in layout order."""
    return [e["id"]["key"] for e in entries]


def _feedback(errors: dict[str, str], invalid_at: int, feedback_at: int) -> tuple[list[bool], list[str]]:
    """(invalid flags, messages) for the FIELD and FEEDBACK outputs at these positions."""
    return ([k in errors for k in _keys(ctx.outputs_list[invalid_at])],
            [errors.get(k, "") for k in _keys(ctx.outputs_list[feedback_at])])


@callback(Output({"type": FIELD, "key": ALL}, "invalid"), Output({"type": FEEDBACK, "key": ALL}, "children"),
          Input({"type": FIELD, "key": ALL}, "value"))
def validate_form(values):
    return _feedback(view.form_errors(dict(zip(_keys(ctx.inputs_list[0]), values))), 0, 1)


# ---- run --------------------------------------------------------------------------------------
def _message(text: str, color: str = "danger") -> html.Div:
    return html.Div(text, className=f"text-{color}", id="stress-run-message")


def _decode_upload(contents: str) -> str:
    """dcc.Upload's data URL -> text; StressInputError when it is not base64 UTF-8 text."""
    try:
        return inputs.upload_bytes(contents).decode("utf-8-sig")
    except ValueError:                       # UnicodeDecodeError is one
        raise StressInputError("the file could not be read as UTF-8 text", "portfolio_csv") from None


def _uploaded(upload: dict | None) -> stress.Portfolio:
    """The uploaded book, parsed again on the server; StressInputError when there is none."""
    if not upload or not upload.get("text"):
        raise StressInputError("no valid CSV uploaded: choose a file or use the live book", "portfolio")
    portfolio, errors = stress_jobs.uploaded_portfolio(upload["text"])
    if errors:
        raise StressInputError(f"the uploaded CSV has {len(errors)} error(s); fix them first", "portfolio")
    return portfolio


def _start(run: str, texts: dict, source: str, upload: dict | None) -> tuple[str | None, html.Div, dict]:
    """(job id or None, message, field errors) of one Run click, already allowed."""
    specs, errors = view.specs_for(run, texts)
    options, option_errors = view.options_from_form(texts)
    errors = {**errors, **option_errors}
    if errors:
        return None, _message(f"Not started: check {view.labels_of(errors) or 'the form'}."), errors
    try:
        portfolio = _uploaded(upload) if source == "upload" else None
        job_id, created = stress_jobs.start_job(data.client(), user=auth.current_user()["username"],
                                                source="web", scenarios=specs, portfolio=portfolio,
                                                options=options)
    except StressInputError as exc:
        key = view.route_error(run, exc.field) if run != "all" else ""
        return None, _message(f"Not started: {exc}"), ({key: str(exc)} if key else {})
    except (OSError, *DB_ERRORS) as exc:
        return None, _message(f"Not started: the price history is unavailable ({exc})."), {}
    except KombuError as exc:
        return None, _message(f"Recorded but not queued: the broker refused it ({exc})."), {}
    text = f"Started job {job_id}." if created else f"The same run is already under way: job {job_id}."
    return job_id, _message(text, "success"), {}


@callback(Output("stress-job", "data", allow_duplicate=True), Output("stress-poll", "disabled", allow_duplicate=True),
          Output("stress-run-msg", "children"),
          Output({"type": FIELD, "key": ALL}, "invalid", allow_duplicate=True),
          Output({"type": FEEDBACK, "key": ALL}, "children", allow_duplicate=True),
          *[Output(i, "disabled", allow_duplicate=True) for i in RUN_IDS],
          *[Input(i, "n_clicks") for i in RUN_IDS],
          State({"type": FIELD, "key": ALL}, "value"), State("stress-source", "value"),
          State("stress-upload-data", "data"), prevent_initial_call=True)
@data.guarded(lambda *a: (no_update, no_update, _message("Redis unreachable: nothing was started."),
                          no_update, no_update, *[no_update] * len(RUN_IDS)))
def run(*args):
    values, source, upload = args[len(RUN_IDS):]
    unchanged = [no_update] * len(RUN_IDS)
    if not ctx.triggered_id or not ctx.triggered[0]["value"]:
        raise PreventUpdate  # nothing clicked (its wildcard outputs take no bare no_update)
    texts = dict(zip(_keys(ctx.states_list[0]), values))
    denied = auth.require_role("operator")
    if denied:
        return (no_update, no_update, _message(denied), *_feedback(view.form_errors(texts), 3, 4), *unchanged)
    job_id, message, errors = _start(ctx.triggered_id.removeprefix("stress-run-"), texts, source, upload)
    feedback = _feedback({**view.form_errors(texts), **errors}, 3, 4)
    if job_id is None:
        return (no_update, no_update, message, *feedback, *unchanged)
    return ({"id": job_id, "open": True}, False, message, *feedback, *[True] * len(RUN_IDS))


# ---- progress, cancel ---------------------------------------------------------------------------
def _own_active_job(client) -> str | None:
    """The newest queued or running job of this user (a page reload re-attaches to it)."""
    me = auth.current_user()["username"]
    return next((j["id"] for j in stress_jobs.list_jobs(client, 20)
                 if j["user"] == me and j["status"] in stress_jobs.ACTIVE_STATUSES), None)


def _poll_fallback(*_args):
    return (html.Span("Redis unreachable: progress unavailable.", className="text-warning"),
            no_update, no_update, no_update, no_update, *[no_update] * len(RUN_IDS))


@callback(Output("stress-job-panel", "children"), Output("stress-poll", "disabled"),
          Output("stress-cancel", "disabled"), Output("stress-job", "data"),
          Output("stress-view", "data", allow_duplicate=True),
          *[Output(i, "disabled") for i in RUN_IDS],
          Input("stress-poll", "n_intervals"), State("stress-job", "data"), State("stress-view", "data"),
          prevent_initial_call=True)
@data.guarded(_poll_fallback)
def poll(_n, tracked, viewed):
    """Progress of the tracked job ({"id", "open"}: open until its end has been shown once, when
    its results become the viewed run); none tracked: re-attach to the user's active job."""
    client = data.client()
    tracked = tracked if isinstance(tracked, dict) else {}
    job_id = tracked.get("id") or _own_active_job(client)
    job = stress_jobs.get_job(client, job_id) if job_id else None
    if job is None:
        newest = [] if viewed else stress_jobs.list_jobs(client, 1)
        return (view.progress_panel(None, time.time()), True, True, no_update,
                newest[0]["id"] if newest else no_update, *[False] * len(RUN_IDS))
    active = job["status"] in stress_jobs.ACTIVE_STATUSES
    track = {"id": job_id, "open": active}
    # the end is shown once: a poll already in flight when the interval was disabled carries the
    # same stale "open" state, and must not switch the view back after the user picked a run
    just_ended = (not active and tracked.get("open", True)
                  and bool(client.set(schema.stress_job(job_id, "shown:" + auth.current_user()["username"]),
                                      1, nx=True, ex=SHOWN_TTL_S)))
    return (view.progress_panel(job, time.time()), not active, not active,
            no_update if track == tracked else track, job_id if just_ended else no_update,
            *[active] * len(RUN_IDS))


@callback(Output("stress-cancel-msg", "children"), Output("stress-poll", "disabled", allow_duplicate=True),
          Input("stress-cancel", "n_clicks"), State("stress-job", "data"), prevent_initial_call=True)
@data.guarded(lambda *a: (html.Span("Redis unreachable: not cancelled.", className="text-warning"), no_update))
def cancel(n_clicks, tracked):
    job_id = tracked.get("id") if isinstance(tracked, dict) else None
    if not n_clicks:
        return no_update, no_update
    denied = auth.require_role("operator")
    if denied:
        return html.Span(denied, className="text-danger"), no_update
    if not job_id:
        return html.Span("No job to cancel.", className="text-body-secondary"), no_update
    if stress_jobs.request_cancel(data.client(), job_id, auth.current_user()["username"], "web"):
        return html.Span(f"Cancel requested for job {job_id}.", className="text-warning"), False
    return html.Span(f"Job {job_id} had already finished.", className="text-body-secondary"), False


# ---- results ------------------------------------------------------------------------------------
def _view_fallback(_viewed):
    down = charts.empty_figure("Redis unreachable")
    return (html.Span("Redis unreachable.", className="text-warning"), no_update, down, [], None, down, True, True)


@callback(Output("stress-view-header", "children"), Output("stress-results", "children"),
          Output("stress-pnl-graph", "figure"), Output("stress-waterfall-scenario", "options"),
          Output("stress-waterfall-scenario", "value"), Output("stress-mc-graph", "figure"),
          Output("stress-download-csv", "disabled"), Output("stress-download-json", "disabled"),
          Input("stress-view", "data"))
@data.guarded(_view_fallback)
def show_run(viewed):
    job = stress_jobs.get_job(data.client(), viewed) if viewed else None
    if job is None:
        none = charts.empty_figure("No run selected")
        return view.no_data("No run yet."), None, none, [], None, none, True, True
    results = job["results"]
    options = [{"label": r.get("name", r.get("kind")), "value": str(i)}
               for i, r in enumerate(results) if r.get("positions")]
    return (view.job_header(job), view.result_cards(results), view.pnl_by_scenario_figure(results), options,
            options[0]["value"] if options else None, view.mc_distribution_figure(view.monte_carlo_result(results)),
            not results, not results)


@callback(Output("stress-waterfall-graph", "figure"), Input("stress-waterfall-scenario", "value"),
          Input("stress-view", "data"))
@data.guarded(lambda *a: charts.empty_figure("Redis unreachable"))
def show_waterfall(index, viewed):
    job = stress_jobs.get_job(data.client(), viewed) if viewed and index is not None else None
    results = (job or {}).get("results") or []
    chosen = results[int(index)] if job and str(index).isdigit() and int(index) < len(results) else None
    return view.waterfall_figure(chosen)


@callback(Output("stress-download", "data"), Input("stress-download-csv", "n_clicks"),
          Input("stress-download-json", "n_clicks"), State("stress-view", "data"), prevent_initial_call=True)
@data.guarded(lambda *a: no_update)
def download(_csv, _json, viewed):
    job = stress_jobs.get_job(data.client(), viewed) if viewed else None
    if job is None or not ctx.triggered_id:
        return no_update
    if ctx.triggered_id == "stress-download-csv":
        return dict(content=stress_jobs.job_to_csv(job), filename=f"stress-{viewed}.csv", type="text/csv")
    return dict(content=stress_jobs.job_to_json(job), filename=f"stress-{viewed}.json", type="application/json")


# ---- history, compare ----------------------------------------------------------------------------
@callback(Output("stress-history", "children"), Output("stress-compare-a", "options"),
          Output("stress-compare-b", "options"),
          Input("shell-interval", "n_intervals"), Input("stress-view", "data"), Input("stress-job", "data"))
@data.guarded(lambda *a: (html.Span("Redis unreachable.", className="text-warning"), no_update, no_update))
def show_history(*_args):
    records = stress_jobs.list_jobs(data.client(), HISTORY_ROWS)
    options = [view.job_option(r) for r in records]
    return view.history_table(records), options, options


@callback(Output("stress-view", "data"), Input({"type": "stress-view-button", "job": ALL}, "n_clicks"),
          prevent_initial_call=True)
def pick_run(_clicks):
    if not ctx.triggered_id or not any(t["value"] for t in ctx.triggered):
        return no_update
    return ctx.triggered_id["job"]


@callback(Output("stress-compare", "children"), Input("stress-compare-a", "value"),
          Input("stress-compare-b", "value"))
@data.guarded(lambda *a: html.Span("Redis unreachable.", className="text-warning"))
def compare(a, b):
    client = data.client()
    return view.compare_table(stress_jobs.read_record(client, a) if a else None,
                              stress_jobs.read_record(client, b) if b else None)


# ---- portfolio source ------------------------------------------------------------------------------
@callback(Output("stress-upload-data", "data"), Output("stress-upload-status", "children"),
          Output("stress-source", "value"),
          Input("stress-upload", "contents"), State("stress-upload", "filename"), prevent_initial_call=True)
def upload(contents, filename):
    if not contents:
        return None, view.no_data("The file was empty or larger than 1 MiB."), no_update
    name = str(filename or "upload.csv")[:80]
    try:
        text = _decode_upload(contents)
        portfolio, errors = stress_jobs.uploaded_portfolio(text)
    except StressInputError as exc:
        portfolio, errors = None, [{"row": None, "message": str(exc)}]
    except (OSError, *DB_ERRORS) as exc:
        return None, html.Div(f"The price history is unavailable: {exc}", className="text-danger small"), no_update
    if errors:
        return None, html.Div([html.Div(name, className="fw-semibold small"), view.csv_errors_table(errors)],
                              id="stress-upload-errors"), "upload"
    info = view.book_info("upload", portfolio.equity, portfolio.values)
    return ({"filename": name, "text": text, "info": info},
            html.Div(f"{name}: {info['n_assets']} positions read.", className="text-success small",
                     id="stress-upload-ok"), "upload")


@callback(Output("stress-portfolio-summary", "children"), Input("stress-source", "value"),
          Input("stress-upload-data", "data"), Input("shell-interval", "n_intervals"))
@data.guarded(lambda *a: html.Span("Redis unreachable.", className="text-warning"))
def show_portfolio(source, upload, _n):
    if source == "upload":
        if not upload:
            return view.no_data("No valid CSV uploaded yet: nothing to run.")
        return view.portfolio_summary(upload["info"], f"Uploaded {upload['filename']}:")
    account, positions = risk_manager.read_portfolio(data.client())
    if not positions:
        return view.no_data("The live book has no open positions: nothing to stress (upload a portfolio).")
    return view.portfolio_summary(view.book_info("live", account.get("equity"),
                                                 [p["value"] for p in positions]), "Live paper book:")


# ---- custom scenarios ---------------------------------------------------------------------------
def _saved_options(client) -> list[dict]:
    return [{"label": d["name"], "value": d["name"]} for d in stress.list_custom(client)]


def _custom_action(trigger: str, texts: dict, selected: str | None) -> tuple[html.Span, object]:
    """Save the editor's scenario or delete the selected one (operators; audited):
    (message, the saved-scenario selector's new value: cleared after a delete)."""
    denied = auth.require_role("operator")
    if denied:
        return html.Span(denied, className="text-danger"), no_update
    client, user = data.client(), auth.current_user()["username"]
    if trigger == "stress-custom-delete":
        if not selected:
            return html.Span("Pick a saved scenario to delete.", className="text-body-secondary"), no_update
        gone = stress.delete_custom(client, selected)
        write_audit(client, "stress_custom_delete", user, "web", selected, {"existed": gone})
        return html.Span(f"Deleted {selected}." if gone else f"{selected} was already gone.",
                         className="text-info"), None
    spec, errors = view.custom_from_form(texts)
    if errors:
        return html.Span("Not saved: " + "; ".join(errors.values()), className="text-danger"), no_update
    doc = stress.save_custom(client, spec["name"], spec, user)
    write_audit(client, "stress_custom_save", user, "web", doc["name"], {"spec": doc["spec"]})
    return html.Span(f"Saved {doc['name']}.", className="text-success"), no_update


@callback(Output("stress-custom-saved", "options"), Output("stress-custom-msg", "children"),
          Output("stress-custom-saved", "value"),
          Input("stress-custom-save", "n_clicks"), Input("stress-custom-delete", "n_clicks"),
          State({"type": FIELD, "key": ALL}, "value"), State({"type": FIELD, "key": ALL}, "id"),
          State("stress-custom-saved", "value"))
@data.guarded(lambda *a: (no_update, html.Span("Redis unreachable: nothing changed.", className="text-warning"),
                          no_update))
def custom_scenarios(_save, _delete, values, ids, selected):
    message, select = None, no_update
    if ctx.triggered_id and ctx.triggered[0]["value"]:
        texts = {i["key"]: v for i, v in zip(ids, values) if "key" in inputs.mapping(i)}
        try:
            message, select = _custom_action(ctx.triggered_id, texts, selected)
        except StressInputError as exc:
            message = html.Span(f"Not done: {exc}", className="text-danger")
    return _saved_options(data.client()), message, select


@callback(Output({"type": FIELD, "key": "custom-name"}, "value"),
          Output({"type": FIELD, "key": "custom-index"}, "value"),
          Output({"type": FIELD, "key": "custom-asset_shocks"}, "value"),
          Input("stress-custom-saved", "value"), prevent_initial_call=True)
@data.guarded(lambda *a: (no_update, no_update, no_update))
def load_custom(name):
    doc = next((d for d in stress.list_custom(data.client()) if d["name"] == name), None)
    if doc is None:
        return no_update, no_update, no_update
    params = doc["spec"].get("params") or {}
    index = (params.get("factor_shocks") or {}).get("index")
    return (doc["name"], "" if index is None else view.ui_text(view.BY_KEY["custom-index"], index),
            view.format_asset_shocks(params.get("asset_shocks") or {}))
