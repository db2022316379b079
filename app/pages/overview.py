"""Overview: KPI cards against the spec's targets, system charts, recent alerts."""
from __future__ import annotations

from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from app import data, inputs
from app.components import charts
from app.components.kpi import against, kpi_card, severity_color, status_class
from core import alerts, health, metrics, report, runtime_config
from core.settings import get_settings
from core.telemetry import query

dash.register_page(__name__, path="/", name="Overview", order=0)

KPIS = [("overview-kpi-p99", "Pipeline p99"), ("overview-kpi-throughput", "Throughput"),
        ("overview-kpi-cpu", "CPU"), ("overview-kpi-memory", "Console memory"),
        ("overview-kpi-worker", "Celery worker"), ("overview-kpi-redis", "Redis")]
WINDOWS = {"5 min": 300, "15 min": 900, "60 min": 3600}


def layout(**_kwargs):
    return html.Div([
        dbc.Row([kpi_card(card_id, title) for card_id, title in KPIS]),
        dbc.Row([dbc.Col(dbc.RadioItems(id="overview-window", options=list(WINDOWS), value="15 min",
                                        inline=True), width="auto")], className="mb-2"),
        dbc.Row([dbc.Col(dcc.Graph(id=f"overview-{name}-graph", config={"displaylogo": False}), lg=6)
                 for name in ("cpu", "memory")]),
        dbc.Row([dbc.Col(dcc.Graph(id=f"overview-{name}-graph", config={"displaylogo": False}), lg=6)
                 for name in ("disk", "network")]),
        html.Div([html.H5("Recommendations", className="mt-3 d-inline-block me-3"),
                  html.A("report.json", href="/report.json", className="me-2 small", id="overview-report-json"),
                  html.A("report.html", href="/report.html", target="_blank", className="small",
                         id="overview-report-html")]),
        html.Div(id="overview-recommendations"),
        dcc.Interval(id="overview-report-interval", interval=10_000),
        html.H5("Recent alerts", className="mt-3"),
        html.Div(id="overview-alerts"),
    ])


def _recommendations_fallback(_n):
    return dbc.Alert("Recommendations unavailable: Redis unreachable.", color="secondary")


@callback(Output("overview-recommendations", "children"), Input("overview-report-interval", "n_intervals"))
@data.guarded(_recommendations_fallback)
def update_recommendations(_n):
    recs = report.get_comprehensive_performance_report(data.client(), get_settings())["recommendations"]
    if not recs:
        return html.P("Nothing to recommend: every measured figure is within its target.",
                      className="text-body-secondary")
    color = {"critical": "danger", "warning": "warning", "info": "info"}
    return html.Ul([html.Li([dbc.Badge(r["severity"], color=color.get(r["severity"], "secondary"),
                                       className="me-2"),
                             html.Strong(f"{r['area']}: "), r["finding"],
                             html.Span(f" → {r['action']}", className="text-body-secondary")])
                    for r in recs[:8]], id="overview-recommendations-list", className="list-unstyled")


KPI_OUTPUTS = [Output(f"{card_id}-{part}", prop) for card_id, _ in KPIS
               for part, prop in (("value", "children"), ("target", "children"), ("card", "className"))]


def _kpi_fallback(_n):
    return ["–", "Redis unreachable", status_class("unknown")] * len(KPIS)


def _health_kpi(part: dict) -> list:
    age = part.get("age_s")
    detail = part.get("detail", "") if age is None else f"heartbeat {age:.1f}s ago"
    status = {"ok": "ok", "fail": "fail"}.get(part["status"], "unknown")
    return [part["status"].upper(), detail, status_class(status)]


@callback(*KPI_OUTPUTS, Input("shell-interval", "n_intervals"))
@data.guarded(_kpi_fallback)
def update_kpis(_n):
    client = data.client()
    stats = query.get_latency_statistics(client, window_s=60).get("total_pipeline", {})
    sample = metrics.latest_metrics(client) or {}
    status = health.health_status(client, get_settings())
    p99, ops = stats.get("p99_us"), stats.get("ops_s")
    config = runtime_config.current(client)    # the Settings page's targets, read live
    target_ops, cpu_limit = config["alerts.throughput_target_ops_s"], config["alerts.cpu_pct"]
    budget = config["alerts.console_memory_budget_mib"] * 1024**2
    p99_target = config["stage_ms.total_pipeline"] * 1000.0
    cpu, rss = sample.get("cpu_pct"), sample.get("console_rss_bytes")
    out = [charts.fmt_us(p99), f"target < {charts.fmt_us(p99_target)} (last 60 s)",
           status_class(against(p99, p99_target)),
           charts.fmt_rate(ops, "ticks/s"), f"target ≥ {charts.fmt_rate(target_ops, 'ticks/s')}",
           status_class("unknown" if ops is None else ("ok" if ops >= target_ops else "warn")),
           "–" if cpu is None else f"{cpu:.0f} %", f"warning above {cpu_limit:g} %",
           status_class(against(cpu, cpu_limit, 0.9)),
           charts.fmt_bytes(rss), f"budget {charts.fmt_bytes(budget)} (all console processes)",
           status_class(against(rss, budget))]
    out += _health_kpi(status["parts"]["worker"]) + _health_kpi(status["parts"]["redis"])
    return out


def _charts_fallback(_n, _window):
    return [charts.empty_figure("Redis unreachable")] * 4


@callback(Output("overview-cpu-graph", "figure"), Output("overview-memory-graph", "figure"),
          Output("overview-disk-graph", "figure"), Output("overview-network-graph", "figure"),
          Input("shell-interval", "n_intervals"), Input("overview-window", "value"))
@data.guarded(_charts_fallback)
def update_system_charts(_n, window):
    client = data.client()
    rows = metrics.metrics_series(client, WINDOWS.get(inputs.scalar(window), 900))
    config = runtime_config.current(client)
    cpu_limit, mem_limit = config["alerts.cpu_pct"], config["memory_threshold_pct"]
    mib = 1 / 1024**2
    return (
        charts.time_series(rows, [("cpu_pct", "machine"), ("console_cpu_pct", "console")],
                           "CPU", "%", threshold=cpu_limit, threshold_label=f"{cpu_limit:g}% warning"),
        charts.time_series(rows, [("mem_pct", "machine")], "Memory", "%", threshold=mem_limit,
                           threshold_label=f"{mem_limit:g}% warning"),
        charts.time_series(rows, [("disk_read_bps", "read"), ("disk_write_bps", "write")],
                           "Disk I/O", "MiB/s", scale=mib),
        charts.time_series(rows, [("net_recv_bps", "received"), ("net_sent_bps", "sent")],
                           "Network", "MiB/s", scale=mib),
    )


def _alerts_fallback(_n):
    return dbc.Alert("Alerts unavailable: Redis unreachable.", color="secondary")


@callback(Output("overview-alerts", "children"), Input("shell-interval", "n_intervals"))
@data.guarded(_alerts_fallback)
def update_alerts(_n):
    recent = alerts.recent_alerts(data.client(), limit=10)
    if not recent:
        return html.P("No alerts.", className="text-body-secondary")
    rows = [html.Tr([html.Td(datetime.fromtimestamp(a["ts"], timezone.utc).strftime("%H:%M:%S")),
                     html.Td(dbc.Badge(a["severity"], color=severity_color(a["severity"]))),
                     html.Td(a["source"]), html.Td(a["message"])]) for a in recent]
    return dbc.Table([html.Thead(html.Tr([html.Th("UTC"), html.Th("Severity"), html.Th("Source"),
                                          html.Th("Message")])), html.Tbody(rows)],
                     size="sm", striped=True, hover=True, id="overview-alerts-table")
