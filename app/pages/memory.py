"""Memory: system and per-process memory over time, GC statistics, trend and leak suspicion,
the history of optimizations with before/after, and "Run optimization now"."""
from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html, no_update

from app import data
from app.components import charts
from app.components import optimizations
from app.components.optimizations import history_table
from core import memory, metrics, runtime_config

dash.register_page(__name__, path="/memory", name="Memory", order=5)

WINDOW_S = 900


def layout(**_kwargs):
    return html.Div([
        dbc.Row([
            dbc.Col(html.H4("Memory"), width="auto"),
            dbc.Col(dbc.Button("Run optimization now", id="memory-optimize-button", color="primary",
                               size="sm"), width="auto"),
            dbc.Col(html.Div(id="memory-optimize-result"), className="small"),
        ], className="mb-2 align-items-center"),
        dcc.Store(id="memory-task-id"),
        dcc.Interval(id="memory-task-poll", interval=700, disabled=True),
        html.Div(id="memory-kpis", className="mb-2"),
        dbc.Row([dbc.Col(dcc.Graph(id="memory-system-graph", config={"displaylogo": False}), lg=6),
                 dbc.Col(dcc.Graph(id="memory-procs-graph", config={"displaylogo": False}), lg=6)]),
        dbc.Row([dbc.Col([html.H5("Garbage collector (last run)"), html.Div(id="memory-gc")], lg=5),
                 dbc.Col([html.H5("Trend and leak suspicion"), html.Div(id="memory-trend")], lg=7)]),
        html.H5("Optimization history", className="mt-3"),
        html.Div(id="memory-history"),
    ])


@callback(Output("memory-task-id", "data"), Output("memory-task-poll", "disabled"),
          Output("memory-optimize-result", "children", allow_duplicate=True),
          Input("memory-optimize-button", "n_clicks"), prevent_initial_call=True)
def optimize_now(n_clicks):
    if not n_clicks:
        return no_update, no_update, no_update
    return optimizations.enqueue("memory.optimize")


def _poll_fallback(_n, _task_id):
    return html.Div("Result unavailable: Redis unreachable.", className="text-warning"), no_update


@callback(Output("memory-optimize-result", "children"),
          Output("memory-task-poll", "disabled", allow_duplicate=True),
          Input("memory-task-poll", "n_intervals"), State("memory-task-id", "data"), prevent_initial_call=True)
@data.guarded(_poll_fallback)
def poll_task(_n, task_id):
    return optimizations.poll(task_id)


def _charts_fallback(_n):
    msg = html.P("Redis unreachable.", className="text-warning")
    return msg, charts.empty_figure("Redis unreachable"), charts.empty_figure("Redis unreachable")


@callback(Output("memory-kpis", "children"), Output("memory-system-graph", "figure"),
          Output("memory-procs-graph", "figure"), Input("shell-interval", "n_intervals"))
@data.guarded(_charts_fallback)
def update_charts(_n):
    client = data.client()
    rows = metrics.metrics_series(client, WINDOW_S)
    system = charts.time_series(rows, [("mem_pct", "system"), ("swap_pct", "swap")], "System memory", "%",
                                threshold=80.0, threshold_label="80% threshold")
    traces, x = {}, charts.to_datetimes(r["t"] for r in rows)
    for i, r in enumerate(rows):
        for p in r.get("procs") or []:
            name = f"{p.get('role')} {p.get('pid')}"
            traces.setdefault(name, [None] * len(rows))[i] = (p.get("rss_bytes") or 0) / 1024**2
    procs = (charts.figure([charts.line(x, y, name, j) for j, (name, y) in enumerate(sorted(traces.items()))],
                           "RSS per console process", yaxis={"title": {"text": "MiB"}})
             if traces else charts.empty_figure("RSS per console process: no data yet"))
    last = rows[-1] if rows else {}
    total = last.get("console_rss_bytes")
    mem_last = (memory.memory_series(client, WINDOW_S) or [{}])[-1]
    budget = runtime_config.current(client)["alerts.console_memory_budget_mib"] * 1024**2   # the alert's
    kpis = dbc.Row([dbc.Col(html.Div([html.Div(label, className="small text-body-secondary"),
                                      html.Div(value, className="fs-5")]), width="auto")
                    for label, value in (
                        ("Console memory (RSS)", f"{charts.fmt_bytes(total)} of {charts.fmt_bytes(budget)}"),
                        ("Console USS", charts.fmt_bytes(mem_last.get("console_uss_bytes"))),
                        ("System", "–" if last.get("mem_pct") is None else f"{last['mem_pct']:.0f} %"),
                        ("Swap", "–" if last.get("swap_pct") is None else f"{last['swap_pct']:.0f} %"))],
                   id="memory-kpi-row")
    return kpis, system, procs


def _lists_fallback(_n):
    msg = html.P("Redis unreachable.", className="text-warning")
    return msg, msg, msg


@callback(Output("memory-gc", "children"), Output("memory-trend", "children"),
          Output("memory-history", "children"), Input("shell-interval", "n_intervals"))
@data.guarded(_lists_fallback)
def update_lists(_n):
    client = data.client()
    runs = memory.read_history(client, "memory")
    last = runs[0] if runs else {}
    gc_rows = [html.Tr([html.Td(g["generation"]), html.Td(f"{g.get('objects_before') or 0:,}"),
                        html.Td(f"{g['collected']:,}"), html.Td(f"{g.get('objects_after') or 0:,}")])
               for g in last.get("gc", [])]
    gc_view = (dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("Gen", "Objects before", "Collected",
                                                                   "Objects after")])), html.Tbody(gc_rows)],
                         size="sm", striped=True)
               if gc_rows else html.P("No run yet.", className="text-body-secondary"))
    trend = memory.get_memory_trend(metrics_samples(client))
    t_rows = [html.Tr([html.Td(name), html.Td(f"{tr['slope'] * 3600 / 1024**2:+.2f} MiB/h"),
                       html.Td(f"[{tr['ci_low'] * 3600 / 1024**2:+.2f}, {tr['ci_high'] * 3600 / 1024**2:+.2f}]"),
                       html.Td(dbc.Badge("leak suspected", color="danger") if tr["leak_suspected"] else "steady")])
              for name, tr in sorted(trend["procs"].items()) if tr["n"] >= 3]
    trend_view = (dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("Process", "Slope", "95% CI", "")])),
                             html.Tbody(t_rows)], size="sm", striped=True, id="memory-trend-table")
                  if t_rows else html.P("Not enough samples yet.", className="text-body-secondary"))
    return gc_view, trend_view, history_table(runs, "memory-history-table")


def metrics_samples(client) -> list[dict]:
    """The metrics collector's samples (1 s) in MemoryManager's shape, for the trend."""
    return [{"t": r["t"], "console_rss_bytes": r.get("console_rss_bytes") or 0, "procs": r.get("procs") or []}
            for r in metrics.metrics_series(client, WINDOW_S)]


