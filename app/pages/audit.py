"""Audit (admin only): every control action, login, logout and failed login, newest first."""
from __future__ import annotations

from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from app import auth, data, inputs
from core.audit import recent_audit

dash.register_page(__name__, path="/audit", name="Audit", order=91, min_role="admin")


def layout(**_kwargs):
    denied = auth.require_role("admin")
    if denied:
        return dbc.Alert(denied, color="danger", id="audit-denied")
    return html.Div([
        html.H4("Audit log"),
        dbc.Row([dbc.Col(dbc.Input(id="audit-filter", placeholder="filter: action, user or text",
                                   debounce=True), md=4)], className="mb-2"),
        html.Div(id="audit-table"),
        dcc.Interval(id="audit-interval", interval=5000),
    ])


def _unavailable(*_args):
    return dbc.Alert("Redis unreachable.", color="secondary")


@callback(Output("audit-table", "children"), Input("audit-interval", "n_intervals"),
          Input("audit-filter", "value"))
@data.guarded(_unavailable)
def show_audit(_n, text):
    denied = auth.require_role("admin")
    if denied:
        return dbc.Alert(denied, color="danger")
    needle = inputs.text(text).strip().lower()
    rows = [e for e in recent_audit(data.client(), 500)
            if not needle or needle in " ".join(str(v) for v in e.values()).lower()]
    body = [html.Tr([html.Td(datetime.fromtimestamp(e["ts"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")),
                     html.Td(e.get("action")), html.Td(e.get("user")), html.Td(e.get("source")),
                     html.Td(e.get("reason")), html.Td(str(e.get("details") or ""))]) for e in rows[:200]]
    return dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("UTC", "Action", "User", "Source",
                                                                "Reason", "Details")])),
                      html.Tbody(body)], size="sm", striped=True, id="audit-table-el")
