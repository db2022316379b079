"""The Dash application: shell (navigation, Redis banner, alert toasts) and page routing.

Pages live in app/pages/<page>.py and register themselves; this module only builds the shell.
Bootstrap 5.3 CSS is served from assets/vendor/ (copied from the xstatic-bootstrap package at
set-up), so the console works offline; `data-bs-theme="dark"` selects Bootstrap's dark theme.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
import redis
from dash import Input, Output, State, callback, ctx, dcc, html, no_update
from dash_bootstrap_templates import load_figure_template
from flask import jsonify, request

from app import api, api_stress, auth, data, inputs
from app.components import emergency as estop
from app.components.kpi import severity_color
from core import alerts, emergency, health, prometheus, report, safety, users
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
    role = auth.current_role()
    # pages may declare `min_role` (register_page kwarg); the page itself checks it again
    links = [dbc.NavItem(dbc.NavLink(page["name"], href=page["relative_path"], active="exact",
                                        className="text-nowrap"))
             for page in sorted(dash.page_registry.values(), key=lambda p: p.get("order", 99))
             if users.has_role(role, page.get("min_role", "viewer"))]
    return dbc.Navbar(dbc.Container([
        dbc.NavbarBrand("Trading Performance & Risk Console", href="/"),
        dbc.Nav(links, navbar=True, className="me-auto"),
        html.Span(id="shell-health", className="small me-3"),
        _user_menu(),
        estop.stop_button(),
    ], fluid=True), color="dark", dark=True, className="mb-3 border-bottom")


def _user_menu():
    user = auth.current_user()
    if user is None:  # layout rendered outside a request (never for a signed-in page)
        return html.Span()
    return html.Span([html.Span(f"{user['username']} ({user['role']})", id="shell-user",
                                className="small text-body-secondary me-2"),
                      html.A("Sign out", href="/logout", id="shell-logout",
                             className="btn btn-sm btn-outline-secondary")])


def _layout():
    return html.Div([
        _navbar(),
        dbc.Container([
            dbc.Alert("Redis unreachable: figures are frozen until the connection returns.",
                      id="shell-redis-banner", color="danger", is_open=False, className="mb-3"),
            estop.state_banner(),
            dash.page_container,
        ], fluid=True),
        html.Div(id="shell-toasts", style={"position": "fixed", "top": 70, "right": 16,
                                           "width": 380, "zIndex": 2000}),
        dcc.Interval(id="shell-interval", interval=REFRESH_MS),
        dcc.Store(id="shell-last-alert-id"),
        estop.stop_modal(), estop.resume_modal(),
        dcc.Store(id="shell-estop-done"), dcc.Store(id="shell-resume-done"),
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
    try:
        fresh = alerts.alerts_after(data.client(), last_id, limit=5)
    except ValueError:  # not an alert id (a tampered store): start again after the newest alert
        return no_update, alerts.last_alert_id(data.client())
    if not fresh:
        return no_update, no_update
    return [_toast(a) for a in fresh], fresh[-1]["id"]


# ---- emergency stop: button -> confirmation -> halt; banner while halted; resume -----------
def _web_user() -> str:
    user = auth.current_user()
    return user["username"] if user else f"web:{request.remote_addr or 'unknown'}"


def _modal_fallback(*_args):
    return True, no_update, "Redis unreachable: trading state not changed."


@callback(Output("shell-estop-modal", "is_open"), Output("shell-estop-done", "data"),
          Output("shell-estop-msg", "children"),
          Input("shell-estop-open", "n_clicks"), Input("shell-estop-cancel", "n_clicks"),
          Input("shell-estop-confirm", "n_clicks"), State("shell-estop-reason", "value"),
          prevent_initial_call=True)
@data.guarded(_modal_fallback)
def emergency_stop_dialog(_open, _cancel, _confirm, reason):
    if ctx.triggered_id == "shell-estop-open":
        return True, no_update, ""
    if ctx.triggered_id == "shell-estop-confirm":
        denied = auth.require_role("operator")
        if denied:
            return True, no_update, denied
        text = inputs.text(reason).strip()[:safety.MAX_REASON] or "emergency stop button"
        result = emergency.emergency_stop(data.client(), text, _web_user(), "button")
        return False, result["ts"], ""
    return False, no_update, ""


@callback(Output("shell-resume-modal", "is_open"), Output("shell-resume-done", "data"),
          Output("shell-resume-msg", "children"),
          Input("shell-resume-open", "n_clicks"), Input("shell-resume-cancel", "n_clicks"),
          Input("shell-resume-confirm", "n_clicks"), prevent_initial_call=True)
@data.guarded(_modal_fallback)
def resume_dialog(_open, _cancel, _confirm):
    if ctx.triggered_id == "shell-resume-open":
        return True, no_update, ""
    if ctx.triggered_id == "shell-resume-confirm":
        denied = auth.require_role("operator")
        if denied:
            return True, no_update, denied
        result = emergency.resume_trading(data.client(), _web_user(), "button")
        return False, result["ts"], ""
    return False, no_update, ""


def _banner_fallback(*_args):
    return no_update, no_update, no_update, no_update


@callback(Output("shell-trading-banner", "is_open"), Output("shell-trading-banner", "color"),
          Output("shell-trading-title", "children"), Output("shell-trading-detail", "children"),
          Input("shell-interval", "n_intervals"), Input("shell-estop-done", "data"),
          Input("shell-resume-done", "data"))
@data.guarded(_banner_fallback)
def update_trading_banner(_n, _halted, _resumed):
    client = data.client()
    state = safety.read_state(client)
    if state == safety.ACTIVE:
        return False, "danger", no_update, ""
    meta = safety.read_meta(client)
    detail = (f"{meta.get('reason', '')} ({meta.get('source', '?')}, {meta.get('user', '?')})"
              if meta else "")
    if state == safety.REDUCING:
        return True, "warning", "TRADING REDUCING: only risk-reducing orders pass", detail
    return True, "danger", "TRADING HALTED", detail


def _metrics_denied(token: str):
    """None when /metrics may answer: no CONSOLE_METRICS_TOKEN set, or `Authorization: Bearer
    <token>` matches it (constant-time); else a 401 that tells the scraper what to send."""
    if not token:
        return None
    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    return ("metrics token required: send Authorization: Bearer <CONSOLE_METRICS_TOKEN>\n", 401,
            {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain; charset=utf-8"})


def register_metrics(server) -> None:
    """GET /metrics: the Prometheus exposition, open unless CONSOLE_METRICS_TOKEN is set."""
    @server.get("/metrics")
    def prometheus_metrics():
        denied = _metrics_denied(get_settings().metrics_token)
        if denied:
            return denied
        body = prometheus.render(data.client(), get_settings())
        return body, 200, {"Content-Type": prometheus.CONTENT_TYPE}


def create_app() -> dash.Dash:
    load_figure_template("bootstrap_dark")
    app = dash.Dash(__name__, use_pages=True, pages_folder=str(ROOT / "app" / "pages"),
                    assets_folder=str(ROOT / "assets"), title="Trading Console",
                    suppress_callback_exceptions=True, update_title=None)
    app.index_string = INDEX
    app.layout = _layout
    auth.install(app.server)
    api.register(app.server)
    api_stress.register(app.server)

    @app.server.get("/healthz")
    def healthz():
        status = health.health_status(data.client(), get_settings())
        return jsonify(status), (200 if status["status"] == "ok" else 503)

    @app.server.get("/report.json")
    def report_json():
        try:
            rep = report.get_comprehensive_performance_report(data.client(), get_settings())
        except redis.RedisError as exc:
            return jsonify({"error": f"Redis unavailable: {exc}"}), 503
        return jsonify(rep), 200, {"Content-Disposition": "attachment; filename=performance-report.json"}

    @app.server.get("/report.html")
    def report_html():
        try:
            rep = report.get_comprehensive_performance_report(data.client(), get_settings())
        except redis.RedisError as exc:
            return f"Redis unavailable: {exc}", 503
        return report.render_html(rep), 200, {"Content-Type": "text/html; charset=utf-8"}

    register_metrics(app.server)

    # Last: Flask refuses new routes or hooks once it has served a request.
    # Dash registers its component bundles while rendering the index page. Under several
    # gunicorn workers, a worker that never rendered it refuses those bundles ("not a
    # registered library") when the browser fetches them from it: render it once here.
    with app.server.test_client() as client:
        client.get("/", environ_overrides={auth.PRIME_ENVIRON_KEY: True})
    return app
