"""Settings (admin only): every runtime tunable, validated beside its field, versioned and
audited in Redis (core.runtime_config); reset to defaults; export to and import from JSON.

Hot settings reach every process within about a second (pub/sub listeners); the others say
which process to restart. Every callback checks the admin role on the server. A save sends
only the fields that differ from what the page was rendered with, so it never reverts a
change another admin made meanwhile.
"""
from __future__ import annotations

from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
import redis
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app import auth, data, inputs
from core import runtime_config as rc

dash.register_page(__name__, path="/settings", name="Settings", order=92, min_role="admin")

FIELD, FEEDBACK = "settings-field", "settings-feedback"
OPTIMIZATION_KEYS = {t.key for t in rc.TUNABLES if t.group == "optimization"}


def field_text(value) -> str:
    """A value as the form shows it: '' for no limit, true/false, integers without '.0'."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _shown(value) -> str:
    """A value for reading: 'no limit', true/false, 1,500,000."""
    if value is None:
        return "no limit"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return rc.number_text(value)
    return field_text(value)


def _input(t: rc.Tunable, value):
    ident = {"type": FIELD, "key": t.key}
    if t.kind in ("bool", "choice"):
        options = ["true", "false"] if t.kind == "bool" else list(t.choices)
        return dbc.Select(id=ident, options=options, value=field_text(value), size="sm")
    return dbc.Input(id=ident, value=field_text(value), type="text", inputMode="decimal", size="sm",
                     placeholder="no limit" if t.optional else "", debounce=False)


def _applies(t: rc.Tunable):
    if t.hot:
        return dbc.Badge("live", color="success", title="takes effect in every process within seconds")
    return dbc.Badge(f"restart {', '.join(t.restart)}", color="warning", text_color="dark",
                     title=f"read when the {' and '.join(t.restart)} process starts: restart it to apply")


def _row(t: rc.Tunable, value, default, overridden: bool):
    name = t.key.split(".", 1)[-1]
    return html.Tr([
        html.Td([html.Div(name, className="fw-semibold" + (" text-info" if overridden else "")),
                 html.Div(t.description, className="small text-body-secondary")], style={"width": "40%"}),
        html.Td([_input(t, value), dbc.FormFeedback(id={"type": FEEDBACK, "key": t.key}, type="invalid")],
                style={"width": "18%"}),
        html.Td(t.unit, className="small"),
        html.Td(_shown(default), className="small text-body-secondary"),
        html.Td(_applies(t)),
    ], id=f"settings-row-{t.key.replace('.', '-')}")


def _group(group: str, snap: dict):
    title, effect = rc.GROUPS[group]
    head = html.Thead(html.Tr([html.Th(h) for h in ("Setting", "Value", "Unit", "Default", "Applies")]))
    rows = [_row(t, snap["values"][t.key], snap["defaults"][t.key], t.key in snap["overridden"])
            for t in rc.TUNABLES if t.group == group]
    return dbc.Card([dbc.CardHeader([html.Span(title, className="fw-semibold me-2"),
                                     html.Span(f"applies to: {effect}", className="small text-body-secondary")]),
                     dbc.CardBody(dbc.Table([head, html.Tbody(rows)], size="sm", className="mb-0"),
                                  className="p-2")],
                    className="mb-3", id=f"settings-group-{group}")


def _toolbar():
    return html.Div([
        dbc.Button("Save", id="settings-save", color="primary"),
        dcc.ConfirmDialogProvider(
            dbc.Button("Reset to defaults", color="danger", outline=True),
            id="settings-reset", message="Reset every setting to the environment and built-in defaults?"),
        dbc.Button("Export JSON", id="settings-export", color="secondary"),
        dcc.Upload(dbc.Button("Import JSON", color="secondary"), id="settings-upload", accept=".json,application/json",
                   max_size=rc.MAX_IMPORT_BYTES),
        dcc.Download(id="settings-download"),
    ], className="d-flex flex-wrap gap-2 mb-3")


def layout(**_kwargs):
    denied = auth.require_role("admin")
    if denied:
        return dbc.Alert(denied, color="danger", id="settings-denied")
    try:
        snap = rc.snapshot(data.client())
    except (redis.RedisError, OSError):
        return dbc.Alert("Redis unreachable: the settings cannot be read.", color="secondary", id="settings-unavailable")
    return html.Div([
        html.H4(["Settings ", html.Small(f"version {snap['version']}", id="settings-version",
                                         className="text-body-secondary")]),
        html.P("Environment values are the defaults; what is saved here overrides them for every "
               "process. Changed values are highlighted.", className="text-body-secondary"),
        _toolbar(),
        html.Div(id="settings-result"),
        html.Div(id="settings-export-msg"),
        dcc.Store(id="settings-loaded", data={k: field_text(v) for k, v in snap["values"].items()}),
        *[_group(g, snap) for g in rc.GROUPS],
        html.H5("Applied in", className="mt-4"),
        html.Div(id="settings-applied"),
        html.H5("Recent changes", className="mt-4"),
        html.Div(id="settings-history"),
    ])


# ---- save / reset / import ------------------------------------------------------------------
def _decode_upload(contents: str) -> bytes:
    try:
        return inputs.upload_bytes(contents)
    except ValueError:
        raise rc.ConfigError({"": "the uploaded file could not be read"}) from None


def _run(trigger, submitted: dict, loaded: dict, upload, user: str) -> dict:
    client = data.client()
    if trigger == "settings-save":
        changes = {k: v for k, v in submitted.items() if v != loaded.get(k)}
        return rc.apply(client, changes, user)
    if trigger == "settings-reset":
        return rc.reset(client, user)
    return rc.import_json(client, _decode_upload(upload or ""), user)


def _describe(result: dict, trigger) -> tuple[str, list[str]]:
    changes = result["changes"]
    if not changes:
        return "Nothing changed.", []
    verb = {"settings-save": "Saved", "settings-reset": "Reset", "settings-upload": "Imported"}[trigger]
    lines = [f"{c['key']}: {_shown(c['old'])} → {_shown(c['new'])}" for c in changes]
    restart = sorted({p for c in changes for p in rc.REGISTRY[c["key"]].restart})
    if restart:
        lines.append(f"Restart {', '.join(restart)} for the restart-only values to apply.")
    return f"{verb} as version {result['version']}:", lines


def _kick_kernels(changes: list[dict]) -> str:
    """Flags and max_workers apply at the next kernels.optimize: start one now."""
    if not any(c["key"] in OPTIMIZATION_KEYS for c in changes):
        return ""
    from celery_config import celery_app
    try:
        celery_app.send_task("kernels.optimize")
    except Exception as exc:  # noqa: BLE001  (broker down: say so, the change is saved)
        return f"kernels.optimize could not be started ({exc}); it applies at the next scheduled run."
    return "kernels.optimize started to re-select backends with the new flags."


def _blank_outputs(n_fields: int, n_feedback: int):
    return [no_update] * n_fields, [False] * n_fields, [""] * n_feedback


@callback(Output({"type": FIELD, "key": ALL}, "value"), Output({"type": FIELD, "key": ALL}, "invalid"),
          Output({"type": FEEDBACK, "key": ALL}, "children"), Output("settings-result", "children"),
          Output("settings-loaded", "data"), Output("settings-version", "children"),
          Input("settings-save", "n_clicks"), Input("settings-reset", "submit_n_clicks"),
          Input("settings-upload", "contents"),
          State({"type": FIELD, "key": ALL}, "value"), State("settings-loaded", "data"),
          prevent_initial_call=True)
def act(_save, _reset, upload, values, loaded):
    field_keys = [o["id"]["key"] for o in ctx.outputs_list[0]]
    feedback_keys = [o["id"]["key"] for o in ctx.outputs_list[2]]
    values_out, invalid, feedback = _blank_outputs(len(field_keys), len(feedback_keys))
    denied = auth.require_role("admin")       # checked on the server for every call
    if denied:
        return values_out, invalid, feedback, dbc.Alert(denied, color="danger"), no_update, no_update
    try:
        result = _run(ctx.triggered_id, dict(zip(field_keys, values)), inputs.mapping(loaded), upload,
                      auth.current_user()["username"])
        snap = rc.snapshot(data.client())
    except rc.ConfigError as exc:
        errors = exc.errors
        general = [f"{k}: {m}" if k else m for k, m in errors.items() if k not in feedback_keys]
        beside = sorted(k for k in errors if k in feedback_keys)
        head = "Not saved, nothing was changed" + (f": see the message beside {', '.join(beside)}." if beside else ".")
        alert = dbc.Alert([html.Div(head), *[html.Div(g) for g in general]], color="warning", id="settings-error")
        return (values_out, [k in errors for k in field_keys], [errors.get(k, "") for k in feedback_keys],
                alert, no_update, no_update)
    except (redis.RedisError, OSError):
        return values_out, invalid, feedback, dbc.Alert("Redis unreachable: not saved.", color="secondary"), \
            no_update, no_update
    head, lines = _describe(result, ctx.triggered_id)
    note = _kick_kernels(result["changes"])
    alert = dbc.Alert([html.Div(head), html.Ul([html.Li(x) for x in lines], className="mb-0 small"),
                       html.Div(note, className="small") if note else None],
                      color="success" if result["changes"] else "info", id="settings-ok", dismissable=True)
    fresh = {k: field_text(v) for k, v in snap["values"].items()}
    return ([fresh.get(k, "") for k in field_keys], invalid, feedback, alert, fresh, f"version {snap['version']}")


@callback(Output("settings-download", "data"), Output("settings-export-msg", "children"),
          Input("settings-export", "n_clicks"), prevent_initial_call=True)
@data.guarded(lambda *_: (no_update, dbc.Alert("Redis unreachable.", color="secondary")))
def export(_n):
    denied = auth.require_role("admin")
    if denied:
        return no_update, dbc.Alert(denied, color="danger")
    text = rc.export_json(data.client())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return dict(content=text, filename=f"console-settings-{stamp}.json", type="application/json"), ""


# ---- where it applies, what changed ------------------------------------------------------------
def _when(ts) -> str:
    return datetime.fromtimestamp(float(ts or 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _applied_table(rows: list[dict], version: int):
    if not rows:
        return html.P("No process has reported yet.", className="text-body-secondary")
    body = [html.Tr([html.Td(r["role"]), html.Td(r["proc"], className="small"),
                     html.Td(dbc.Badge(f"v{r.get('version', 0)}",
                                       color="success" if r.get("version") == version else "warning")),
                     html.Td(", ".join(f"{k} {v:g} s" for k, v in ((r.get("detail") or {}).get("schedule") or {}).items()
                                       if v is not None), className="small")]) for r in rows]
    note = html.P("The web workers read the settings from Redis on every request.",
                  className="small text-body-secondary mb-0")
    return html.Div([dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("Role", "Process", "Version", "Schedule")])),
                                html.Tbody(body)], size="sm", striped=True, id="settings-applied-table"), note])


def _history_table(rows: list[dict]):
    if not rows:
        return html.P("No change yet: every value is its default.", className="text-body-secondary")
    body = [html.Tr([html.Td(f"v{r['version']}"), html.Td(_when(r["ts"])), html.Td(r.get("user", "")),
                     html.Td(r.get("action", "").removeprefix("settings_")),
                     html.Td(html.Ul([html.Li(f"{c['key']}: {_shown(c['old'])} → {_shown(c['new'])}")
                                      for c in r["changes"][:20]], className="mb-0 small"))]) for r in rows]
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("Version", "UTC", "User", "Action", "Changes")])),
                      html.Tbody(body)], size="sm", striped=True, id="settings-history-table")


@callback(Output("settings-applied", "children"), Output("settings-history", "children"),
          Input("shell-interval", "n_intervals"), Input("settings-version", "children"))
@data.guarded(lambda *_: (dbc.Alert("Redis unreachable.", color="secondary"), no_update))
def show_status(_n, _version):
    denied = auth.require_role("admin")
    if denied:
        return dbc.Alert(denied, color="danger"), no_update
    client = data.client()
    version = rc.read_overrides(client)[0]
    return _applied_table(rc.applied(client), version), _history_table(rc.history(client, 20))
