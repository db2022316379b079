"""Alerts: the rules and their state (acknowledge / resolve), and the history with filters."""
from __future__ import annotations

from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, callback, html, no_update

from app import auth, data, inputs
from app.components import charts
from app.components.kpi import severity_color
from core import alerting, alerts, runtime_config
from core.audit import write_audit

dash.register_page(__name__, path="/alerts", name="Alerts", order=5)

STATE_COLOR = {"ok": "success", "pending": "warning", "firing": "danger"}


def layout(**_kwargs):
    return html.Div([
        html.H4("Alert rules"),
        html.Div(id="alerts-action-result"),
        html.Div(id="alerts-rules"),
        html.H4("History", className="mt-4"),
        dbc.Row([
            dbc.Col(dbc.Select(id="alerts-severity", value="all",
                               options=["all"] + list(alerts.SEVERITIES)), md=2),
            dbc.Col(dbc.Input(id="alerts-text", placeholder="filter: source or text", debounce=True), md=4),
        ], className="mb-2"),
        html.Div(id="alerts-history"),
    ])


def _when(ts) -> str:
    return datetime.fromtimestamp(float(ts or 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _threshold(rule: dict) -> str:
    if rule["metric"].endswith("_bytes"):
        return charts.fmt_bytes(rule["threshold"])
    return f"{rule['threshold']:g}"


def _rules_table(states: list[dict], can_act: bool):
    rows = []
    for r in states:
        firing = r["state"] == "firing"
        buttons = [dbc.Button("Acknowledge", id={"type": "alerts-ack", "rule": r["name"]}, size="sm",
                              color="warning", className="me-1", disabled=not (firing and can_act)),
                   dbc.Button("Resolve", id={"type": "alerts-resolve", "rule": r["name"]}, size="sm",
                              color="secondary", disabled=not (firing and can_act))]
        rows.append(html.Tr([html.Td(r["name"]), html.Td(r["summary"]),
                             html.Td(f"{r['metric']} {r['op']} {_threshold(r)} for {r['for_s']:g} s"),
                             html.Td(dbc.Badge(r["severity"], color=severity_color(r["severity"]))),
                             html.Td(dbc.Badge(r["state"], color=STATE_COLOR[r["state"]])),
                             html.Td(f"by {r['acked_by']}" if r.get("acked_by") else ""),
                             html.Td(buttons)]))
    head = html.Thead(html.Tr([html.Th(h) for h in ("Rule", "What", "Condition", "Severity", "State",
                                                    "Acknowledged", "")]))
    return dbc.Table([head, html.Tbody(rows)], size="sm", striped=True, id="alerts-rules-table")


def _unavailable(*_args):
    return dbc.Alert("Redis unreachable.", color="secondary")


@callback(Output("alerts-rules", "children"), Input("shell-interval", "n_intervals"),
          Input("alerts-action-result", "children"))
@data.guarded(_unavailable)
def show_rules(_n, _result):
    client = data.client()
    states = alerting.rule_states(client, alerting.default_rules(runtime_config.current(client)))
    return _rules_table(states, auth.require_role("operator") is None)


@callback(Output("alerts-action-result", "children"),
          Input({"type": "alerts-ack", "rule": ALL}, "n_clicks"),
          Input({"type": "alerts-resolve", "rule": ALL}, "n_clicks"), prevent_initial_call=True)
@data.guarded(lambda *_: dbc.Alert("Redis unreachable.", color="secondary"))
def act_on_rule(_acks, _resolves):
    trigger = dash.ctx.triggered_id
    if not trigger or not any(t["value"] for t in dash.ctx.triggered):
        return no_update
    denied = auth.require_role("operator")
    if denied:
        return dbc.Alert(denied, color="danger")
    user = auth.current_user()["username"]
    act = alerting.acknowledge if trigger["type"] == "alerts-ack" else alerting.resolve
    client = data.client()
    message = act(client, trigger["rule"], user)
    write_audit(client, f"alert_{trigger['type'].removeprefix('alerts-')}", user, "web", trigger["rule"], {})
    return dbc.Alert(message, color="info", dismissable=True, id="alerts-action-message")


@callback(Output("alerts-history", "children"), Input("shell-interval", "n_intervals"),
          Input("alerts-severity", "value"), Input("alerts-text", "value"))
@data.guarded(_unavailable)
def show_history(_n, severity, text):
    needle, severity = inputs.text(text).strip().lower(), inputs.scalar(severity)
    rows = [a for a in alerts.recent_alerts(data.client(), limit=500)
            if (severity in (None, "all") or a["severity"] == severity)
            and (not needle or needle in f"{a['source']} {a['message']}".lower())]
    body = [html.Tr([html.Td(_when(a["ts"])), html.Td(dbc.Badge(a["severity"], color=severity_color(a["severity"]))),
                     html.Td(a["source"]), html.Td(a["message"])]) for a in rows[:200]]
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("UTC", "Severity", "Source", "Message")])),
                      html.Tbody(body)], size="sm", striped=True, hover=True, id="alerts-history-table")
