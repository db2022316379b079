"""The Dash application: shell (navigation, Redis banner, alert toasts) and page routing.

Pages live in app/pages/<page>.py and register themselves; this module only builds the shell.
Bootstrap 5.3 CSS is served from assets/vendor/ (copied from the xstatic-bootstrap package at
set-up), so the console works offline; `data-bs-theme="dark"` selects Bootstrap's dark theme.
"""
from __future__ import annotations

import logging
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html, no_update
from dash_bootstrap_templates import load_figure_template
from flask import jsonify

from app import data
from app.components.kpi import severity_color
from core import alerts, health, prometheus
from core.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
REFRESH_MS = 2000
log = logging.getLogger(__name__)

INDEX = """<!DOCTYPE html>
<html data-bs-theme="dark" lang="en">
<head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}</head>
<body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body>
</html>"""



def _navbar() -> dbc.Navbar:
    links = [dbc.NavItem(dbc.NavLink(page["name"], href=page["relative_path"], active="exact"))
             for page in sorted(dash.page_registry.values(), key=lambda p: p.get("order", 99))]
    return dbc.Navbar(dbc.Container([
        dbc.NavbarBrand("Trading Performance & Risk Console", href="/"),
        dbc.Nav(links, navbar=True, className="me-auto"),
        html.Span(id="shell-health", className="small"),
    ], fluid=True), color="dark", dark=True, className="mb-3 border-bottom")


def _layout():
    return html.Div([
        _navbar(),
        dbc.Container([
            dbc.Alert("Redis unreachable: figures are frozen until the connection returns.",
                      id="shell-redis-banner", color="danger", is_open=False, className="mb-3"),
            dash.page_container,
        ], fluid=True),
        html.Div(id="shell-toasts", style={"position": "fixed", "top": 70, "right": 16,
                                           "width": 380, "zIndex": 2000}),
        dcc.Interval(id="shell-interval", interval=REFRESH_MS),
        dcc.Store(id="shell-last-alert-id"),
    ])


def _toast(alert: dict) -> dbc.Toast:
    return dbc.Toast(alert["message"], header=f"{alert['severity'].upper()} · {alert['source']}",
                     icon=severity_color(alert["severity"]), duration=10000,
                     dismissable=True, is_open=True, className="mb-2")


@callback(Output("shell-redis-banner", "is_open"), Output("shell-health", "children"),
          Input("shell-interval", "n_intervals"))
def update_health(_n):
    status = health.health_status(data.client(), get_settings())
    redis_down = status["parts"]["redis"]["status"] != "ok"
    badges = [dbc.Badge(name, color="success" if part["status"] == "ok" else "danger",
                        className="ms-1", title=part.get("detail", ""), id=f"shell-health-{name}")
              for name, part in status["parts"].items()]
    return redis_down, badges


def _toasts_fallback(_n, last_id):
    return no_update, no_update


@callback(Output("shell-toasts", "children"), Output("shell-last-alert-id", "data"),
          Input("shell-interval", "n_intervals"), State("shell-last-alert-id", "data"))
@data.guarded(_toasts_fallback)
def update_toasts(_n, last_id):
    if last_id is None:  # first tick of this browser tab: start after the newest alert
        return no_update, alerts.last_alert_id(data.client())
    fresh = alerts.alerts_after(data.client(), last_id, limit=5)
    if not fresh:
        return no_update, no_update
    return [_toast(a) for a in fresh], fresh[-1]["id"]


def create_app() -> dash.Dash:
    load_figure_template("bootstrap_dark")
    app = dash.Dash(__name__, use_pages=True, pages_folder=str(ROOT / "app" / "pages"),
                    assets_folder=str(ROOT / "assets"), title="Trading Console",
                    suppress_callback_exceptions=True, update_title=None)
    app.index_string = INDEX
    app.layout = _layout

    @app.server.get("/healthz")
    def healthz():
        status = health.health_status(data.client(), get_settings())
        return jsonify(status), (200 if status["status"] == "ok" else 503)

    @app.server.get("/metrics")
    def prometheus_metrics():
        body = prometheus.render(data.client(), get_settings())
        return body, 200, {"Content-Type": prometheus.CONTENT_TYPE}

    return app
