"""Cache: hit rate and latency per tier, size and evictions, TTL policy with the optimizer's
recommendations, the query optimizer's findings, Redis's own figures, and "Optimize now"."""
from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html, no_update

from app import data
from app.components import charts
from app.components import optimizations
from app.components.optimizations import history_table
from core import cache, memory, schema

dash.register_page(__name__, path="/cache", name="Cache", order=6)

TIERS = (("l1", "L1 memory"), ("l2", "L2 Redis"), ("l3", "L3 database"))
HIT_RATE_TARGET = 0.90


def layout(**_kwargs):
    return html.Div([
        dbc.Row([
            dbc.Col(html.H4("Cache"), width="auto"),
            dbc.Col(dbc.Button("Optimize now", id="cache-optimize-button", color="primary", size="sm"),
                    width="auto"),
            dbc.Col(html.Div(id="cache-optimize-result"), className="small"),
        ], className="mb-2 align-items-center"),
        dcc.Store(id="cache-task-id"),
        dcc.Interval(id="cache-task-poll", interval=700, disabled=True),
        dbc.Row([dbc.Col(html.Div(id="cache-redis-info"), lg=12)], className="mb-2"),
        dbc.Row([dbc.Col(dcc.Graph(id="cache-hit-rate-graph", config={"displaylogo": False}), lg=7),
                 dbc.Col(html.Div(id="cache-tier-table"), lg=5)]),
        html.H5("TTL per prefix", className="mt-3"),
        html.Div(id="cache-policy-table"),
        html.H5("Query optimizer", className="mt-3"),
        html.Div(id="cache-query-findings"),
        html.H5("Optimization history", className="mt-3"),
        html.Div(id="cache-history"),
    ])


@callback(Output("cache-task-id", "data"), Output("cache-task-poll", "disabled"),
          Output("cache-optimize-result", "children", allow_duplicate=True),
          Input("cache-optimize-button", "n_clicks"), prevent_initial_call=True)
def optimize_now(n_clicks):
    if not n_clicks:
        return no_update, no_update, no_update
    return optimizations.enqueue("cache.optimize")


def _poll_fallback(_n, _task_id):
    return html.Div("Result unavailable: Redis unreachable.", className="text-warning"), no_update


@callback(Output("cache-optimize-result", "children"), Output("cache-task-poll", "disabled", allow_duplicate=True),
          Input("cache-task-poll", "n_intervals"), State("cache-task-id", "data"), prevent_initial_call=True)
@data.guarded(_poll_fallback)
def poll_task(_n, task_id):
    return optimizations.poll(task_id)


def _tier_fallback(_n):
    msg = html.P("Redis unreachable.", className="text-warning")
    return charts.empty_figure("Redis unreachable"), msg, msg


@callback(Output("cache-hit-rate-graph", "figure"), Output("cache-tier-table", "children"),
          Output("cache-redis-info", "children"), Input("shell-interval", "n_intervals"))
@data.guarded(_tier_fallback)
def update_tiers(_n):
    client = data.client()
    series = [s for s in schema.read_series(client, schema.CACHE_STATS_SERIES, 0) if isinstance(s, dict)]
    fig = charts.time_series(series, [("multitier_hit_rate", "multi-tier"), ("l1_hit_rate", "L1"),
                                      ("l2_hit_rate", "L2")], "Hit rate per tier", "hit rate",
                             threshold=HIT_RATE_TARGET, threshold_label="90% target")
    merged = cache.merge_statistics(cache.read_statistics(client))
    rows = []
    for t, label in TIERS:
        v = merged["tiers"][t]
        rows.append(html.Tr([html.Td(label), html.Td(f"{v['hits']:,}"), html.Td(f"{v['misses']:,}"),
                             html.Td("–" if v["hit_rate"] is None else f"{v['hit_rate']:.1%}"),
                             html.Td(charts.fmt_us(v["p50_us"])), html.Td(charts.fmt_us(v["p99_us"]))]))
    table = html.Div([
        dbc.Table([html.Thead(html.Tr([html.Th(h) for h in ("Tier", "Hits", "Misses", "Hit rate",
                                                            "p50", "p99")])), html.Tbody(rows)],
                  size="sm", striped=True, id="cache-tier-stats"),
        html.P(f"L1 entries {merged['l1_size']:,} · evictions {merged['l1_evictions']:,} · "
               f"p50/p99: the slowest process", className="small")])
    rate = merged["multitier_hit_rate"]
    live = f"{rate:.1%} (target ≥ {HIT_RATE_TARGET:.0%})" if rate is not None else "– (no cache traffic)"
    info = client.info()
    hits, misses = info.get("keyspace_hits", 0), info.get("keyspace_misses", 0)
    redis_row = dbc.Row([dbc.Col(html.Div([html.Div(label, className="small text-body-secondary"),
                                           html.Div(value, className="fs-5")]), width="auto")
                         for label, value in (
                             ("Multi-tier hit rate", live),
                             ("Redis used memory", charts.fmt_bytes(info.get("used_memory"))),
                             ("Redis ops/s", charts.fmt_rate(info.get("instantaneous_ops_per_sec"), "ops/s")),
                             ("Keyspace hits", f"{hits:,}"), ("Keyspace misses", f"{misses:,}"),
                             ("Keyspace hit rate", "–" if not hits + misses else f"{hits / (hits + misses):.1%}"))],
                        id="cache-redis-figures")
    return fig, table, redis_row


def _lists_fallback(_n):
    msg = html.P("Redis unreachable.", className="text-warning")
    return msg, msg, msg


def _seconds(value) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "–"


@callback(Output("cache-policy-table", "children"), Output("cache-query-findings", "children"),
          Output("cache-history", "children"), Input("shell-interval", "n_intervals"))
@data.guarded(_lists_fallback)
def update_lists(_n):
    client = data.client()
    policy = schema.read_json_hash(client, schema.CACHE_POLICY)
    last = schema.loads(client.get(schema.opt_last("cache"))) or {}
    rec = (last.get("recommendation") or {}).get("ttl_s", {})
    profile = last.get("profile") or {}
    prefixes = sorted(set(policy) | set(rec))
    if prefixes:
        policy_view = dbc.Table([html.Thead(html.Tr([html.Th(h) for h in (
            "Prefix", "TTL now", "Recommended", "Re-read p90", "Working set", "Skips Redis")])),
            html.Tbody([html.Tr([html.Td(p), html.Td(_seconds((policy.get(p) or {}).get("ttl_s"))),
                                 html.Td(f"{rec[p]:.1f} s" if p in rec else "–"),
                                 html.Td(f"{profile.get(p, {}).get('interval_p90_s') or 0:.2f} s"),
                                 html.Td(f"{profile.get(p, {}).get('working_set', '–')}"),
                                 html.Td(str((policy.get(p) or {}).get("skip_l2", False)))])
                        for p in prefixes])], size="sm", striped=True)
    else:
        policy_view = html.P("No prefix tuned yet (default TTL applies).", className="text-body-secondary")
    findings = schema.loads(client.get(schema.DB_FINDINGS)) or {}
    items = []
    for q in findings.get("queries", []):
        a = q.get("analysis") or {}
        rw = q.get("rewrite") or {}
        notes = [f"full scan of {', '.join(a['full_scans'])}" if a.get("full_scans") else None,
                 "temporary b-tree" if a.get("temp_btrees") else None,
                 f"unused indexes: {', '.join(a['unused_indexes'])}" if a.get("unused_indexes") else None]
        notes += [f"suggest {s['ddl']}" for s in q.get("suggestions", [])]
        if rw.get("applied"):
            notes.append(f"rewrite ({'; '.join(rw['rules'])}): {rw['before_ms']:.2f} → {rw['after_ms']:.2f} ms")
        items.append(html.Tr([html.Td(q.get("name")), html.Td(f"{q.get('median_ms', 0):.2f} ms"),
                              html.Td(html.Ul([html.Li(n) for n in notes if n], className="mb-0 small"))]))
    findings_view = (dbc.Table([html.Thead(html.Tr([html.Th("Query"), html.Th("Median"), html.Th("Findings")])),
                                html.Tbody(items)], size="sm", striped=True, id="cache-findings-table")
                     if items else html.P("database.analyze has not run yet.", className="text-body-secondary"))
    return policy_view, findings_view, history_table(memory.read_history(client, "cache"), "cache-history-table")
