"""Latency: per-stage percentiles over time, distribution, breakdown, bottleneck, throughput
trend, the spec's target/current/status table and the event bus's per-handler statistics."""
from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, callback, dcc, html

from app import data, inputs
from app.components import charts, kernels_table
from core import schema
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS
from core.telemetry import query

dash.register_page(__name__, path="/latency", name="Latency", order=1)

WINDOWS = {"5 min": 300, "15 min": 900, "60 min": 3600}
# per-second points for the short window, 10-second points beyond (a tenth of the reads)
RESOLUTION = {300: 1, 900: 10, 3600: 10}
TOTAL = "total_pipeline"
GRAPH_CONFIG = {"displaylogo": False}


def _graph(name: str, lg: int = 6) -> dbc.Col:
    return dbc.Col(dcc.Graph(id=f"latency-{name}-graph", config=GRAPH_CONFIG), lg=lg)


def layout(**_kwargs):
    return html.Div([
        dbc.Row([
            dbc.Col(dbc.RadioItems(id="latency-window", options=list(WINDOWS), value="5 min",
                                   inline=True), width="auto"),
            dbc.Col(dbc.Select(id="latency-stage", value=TOTAL,
                               options=list(DEFAULT_STAGE_THRESHOLDS_MS)), width=3),
        ], className="mb-2 align-items-center"),
        html.Div(id="latency-bottleneck"),
        dbc.Row([_graph("stage"), _graph("p99")]),
        dbc.Row([_graph("cdf"), _graph("breakdown")]),
        dbc.Row([_graph("throughput", lg=12)]),
        html.H5("Stages: target, current, status", className="mt-3"),
        html.Div(id="latency-table"),
        html.H5("Event bus handlers", className="mt-3"),
        html.Div(id="latency-bus-table"),
        html.H5("Compute kernels: the spec's benchmark table, re-measured on this machine", className="mt-3"),
        html.Div(id="latency-kernels"),
    ])


def _series_fallback(_n, _window, _stage):
    return [charts.empty_figure("Redis unreachable")] * 3


@callback(Output("latency-stage-graph", "figure"), Output("latency-p99-graph", "figure"),
          Output("latency-throughput-graph", "figure"),
          Input("shell-interval", "n_intervals"), Input("latency-window", "value"),
          Input("latency-stage", "value"))
@data.guarded(_series_fallback)
def update_series(_n, window, stage):
    client, window_s = data.client(), WINDOWS.get(inputs.scalar(window), 300)
    stats = query.get_latency_statistics(client, window_s=window_s)
    stage = stage if inputs.scalar(stage) in stats else TOTAL
    threshold = (stats.get(stage) or {}).get("threshold_us")
    res = RESOLUTION.get(window_s, 10)
    series = {name: query.stage_series(client, name, window_s, resolution_s=res)
              for name, row in stats.items() if row.get("count")}
    stage_fig = charts.time_series(
        series.get(stage, []), [("p50_us", "p50"), ("p95_us", "p95"), ("p99_us", "p99")],
        f"{stage}: percentiles per {'second' if res == 1 else f'{res} s'}", "µs", log_y=True, threshold=threshold,
        threshold_label=f"threshold {charts.fmt_us(threshold)}")
    trend = query.throughput_trend(client, TOTAL, window_s, resolution_s=res)
    return stage_fig, _p99_all_figure(series), _throughput_figure(series.get(TOTAL, []), trend)


def _p99_all_figure(series: dict[str, list]) -> dict:
    traces = [charts.line(charts.to_datetimes(r["t"] for r in rows), [r["p99_us"] for r in rows],
                          stage, i, line={"width": 1.4, "color": charts.SERIES_COLORS[i % 8]})
              for i, (stage, rows) in enumerate(series.items()) if rows]
    if not traces:
        return charts.empty_figure("p99 per stage: no data yet")
    return charts.figure(traces, "p99 per stage", yaxis={"type": "log", "title": {"text": "µs"}},
                         legend={"font": {"size": 10}})


def _throughput_figure(rows: list[dict], trend: dict) -> dict:
    fig = charts.time_series(rows, [("ops_s", "ticks/s")], "Throughput (total_pipeline)", "ops/s")
    if rows and trend.get("slope_per_s") is not None:
        t = np.array([r["t"] for r in rows], dtype=float)
        y = np.array([r["ops_s"] or 0.0 for r in rows], dtype=float)
        fit = y.mean() + trend["slope_per_s"] * (t - t.mean())
        fig["data"].append(charts.line(charts.to_datetimes(t), fit.tolist(), "trend", 7,
                                       line={"dash": "dot", "color": "#adb5bd"}))
        fig["layout"]["title"]["text"] = (
            f"Throughput (total_pipeline): {trend['direction']}, slope {trend['slope_per_s']:+.3f}/s² "
            f"[95% CI {trend['ci_low']:+.3f}, {trend['ci_high']:+.3f}]")
    return fig


def _details_fallback(_n, _window, _stage):
    msg = dbc.Alert("Redis unreachable.", color="secondary")
    return charts.empty_figure("Redis unreachable"), charts.empty_figure("Redis unreachable"), msg, msg, msg


@callback(Output("latency-cdf-graph", "figure"), Output("latency-breakdown-graph", "figure"),
          Output("latency-bottleneck", "children"), Output("latency-table", "children"),
          Output("latency-bus-table", "children"),
          Input("shell-interval", "n_intervals"), Input("latency-window", "value"),
          Input("latency-stage", "value"))
@data.guarded(_details_fallback)
def update_details(_n, window, stage):
    client, window_s = data.client(), WINDOWS.get(inputs.scalar(window), 300)
    stats = query.get_latency_statistics(client, window_s=window_s)
    stage = stage if inputs.scalar(stage) in stats else TOTAL
    found = query.identify_bottlenecks(stats)
    return (_cdf_figure(client, stage, window_s), _breakdown_figure(found, stats),
            _bottleneck(found), _stage_table(stats),
            _bus_table(schema.read_json_hash(client, schema.BUS_STATS)))


def _cdf_figure(client, stage: str, window_s: int) -> dict:
    dist = query.latency_distribution(client, stage, window_s)
    if not dist["values_us"]:
        return charts.empty_figure(f"{stage}: no samples in the window")
    marks = [charts.hline(q, f"p{q * 100:g}", "#6c757d", style, "right")
             for q, style in ((0.5, "dot"), (0.99, "dash"))]
    trace = charts.line(dist["values_us"], dist["cdf"], stage, 0)
    trace["line"]["shape"] = "hv"
    return charts.figure([trace], f"{stage}: latency distribution (CDF)", uirevision="cdf",
                         xaxis={"type": "log", "title": {"text": "µs"}},
                         yaxis={"title": {"text": "fraction ≤ x"}, "range": [0, 1.02]},
                         shapes=[m[0] for m in marks], annotations=[m[1] for m in marks])


def _breakdown_figure(found: dict, stats: dict) -> dict:
    total = (stats.get(TOTAL) or {}).get("mean_us")
    parts = dict(found.get("per_tick_us") or {})
    if not parts or not total:
        return charts.empty_figure("Stage breakdown: no data yet")
    parts["queueing & other"] = found.get("queueing_us") or 0.0
    names, values = list(parts), list(parts.values())
    bar = {"type": "bar", "orientation": "h", "x": values, "y": names,
           "text": [f"{100 * v / total:.0f}%" for v in values], "textposition": "auto",
           "marker": {"color": charts.SERIES_COLORS[:len(names)]}}
    return charts.figure([bar], f"Where a tick's {charts.fmt_us(total)} goes (mean per tick)",
                         uirevision="breakdown", xaxis={"title": {"text": "µs"}}, showlegend=False)


def _bottleneck(found: dict):
    over = found.get("over_threshold") or []
    if over:
        text = "; ".join(f"{o['stage']} p99 {charts.fmt_us(o['p99_us'])} is {o['excess_ratio']:.1f}× "
                         f"its {charts.fmt_us(o['threshold_us'])} threshold" for o in over)
        return dbc.Alert(f"Over threshold: {text}", color="danger", id="latency-bottleneck-alert")
    if not found.get("dominant_stage"):
        return dbc.Alert("No latency data in this window yet.", color="secondary", id="latency-bottleneck-alert")
    stage_text = f"{found['dominant_stage']} ({100 * found['dominant_share']:.0f}% of the mean tick-to-order time)"
    if (found.get("queueing_share") or 0) > found["dominant_share"]:
        text = (f"Bottleneck: queueing and scheduling delay, {100 * found['queueing_share']:.0f}% of the "
                f"mean tick-to-order time (the clock starts at each tick's scheduled time, so CPU "
                f"contention and late wake-ups count); the costliest stage is {stage_text}")
    else:
        text = f"Bottleneck: {stage_text}"
    return dbc.Alert(text + ". All stages within thresholds.", color="info", id="latency-bottleneck-alert")


def _stage_table(stats: dict):
    head = html.Thead(html.Tr([html.Th(h) for h in (
        "Stage", "Target", "p50", "p95", "p99", "p99.9", "max", "ops/s", "Status")]))
    rows = []
    for stage, s in stats.items():
        status = ("no data" if not s.get("count") else "over" if s.get("over_threshold") else "ok")
        color = {"ok": "success", "over": "danger"}.get(status, "secondary")
        rows.append(html.Tr([html.Td(stage), html.Td(charts.fmt_us(s.get("threshold_us")))]
                            + [html.Td(charts.fmt_us(s.get(k))) for k in
                               ("p50_us", "p95_us", "p99_us", "p999_us", "max_us")]
                            + [html.Td(charts.fmt_rate(s.get("ops_s"), "")),
                               html.Td(dbc.Badge(status, color=color))]))
    return dbc.Table([head, html.Tbody(rows)], size="sm", striped=True, hover=True, id="latency-stage-table")


def _bus_table(bus: dict):
    if not bus:
        return html.P("No event bus statistics yet.", className="text-body-secondary")
    head = html.Thead(html.Tr([html.Th(h) for h in (
        "Handler", "Event", "events/s", "queue", "p50", "p99", "errors", "last error")]))
    rows = [html.Tr([html.Td(name), html.Td(s.get("event_type")),
                     html.Td(charts.fmt_rate(s.get("events_per_s"), "")), html.Td(s.get("queue_depth")),
                     html.Td(charts.fmt_us(s.get("latency_p50_us"))), html.Td(charts.fmt_us(s.get("latency_p99_us"))),
                     html.Td(s.get("errors")), html.Td(s.get("last_error") or "")])
            for name, s in sorted(bus.items())]
    return dbc.Table([head, html.Tbody(rows)], size="sm", striped=True, hover=True, id="latency-bus-table-el")


# ---- compute kernels (issue 3): written by the kernels.optimize task ------------------------
@callback(Output("latency-kernels", "children"), Input("shell-interval", "n_intervals"))
@data.guarded(lambda _n: dbc.Alert("Redis unreachable.", color="secondary"))
def update_kernels(_n):
    client = data.client()
    bench, sel, model, status = client.mget(schema.KERNELS_BENCH, schema.KERNELS_SELECTION,
                                            schema.MODEL_METRICS, schema.PIPELINE_STATUS)
    return kernels_table.kernels_section(schema.loads(bench), schema.loads(sel), schema.loads(model),
                                         schema.loads(status))
