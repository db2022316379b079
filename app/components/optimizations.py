"""Pieces the Memory and Cache pages share: the "run it now" button flow and the table of an
optimization area's history with before/after figures."""
from __future__ import annotations

from datetime import datetime, timezone

import dash_bootstrap_components as dbc
from dash import html

from app.components import charts


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if abs(value) >= 1024**2:
            return charts.fmt_bytes(value)
        return f"{value:,.4g}"
    return str(value)


def changes_list(changes: list[dict]) -> html.Ul | html.Span:
    if not changes:
        return html.Span("no change", className="text-body-secondary")
    return html.Ul([html.Li(f"{c.get('what')}: {_fmt(c.get('before'))} → {_fmt(c.get('after'))}")
                    for c in changes], className="mb-0 small")


def history_table(runs: list[dict], table_id: str) -> dbc.Table | html.P:
    if not runs:
        return html.P("No optimization has run yet.", className="text-body-secondary")
    rows = [html.Tr([html.Td(datetime.fromtimestamp(r.get("ts", 0), timezone.utc).strftime("%H:%M:%S")),
                     html.Td(r.get("trigger", "")), html.Td(f"{r.get('duration_s', 0):.2f} s"),
                     html.Td(changes_list(r.get("changes", [])))]) for r in runs]
    return dbc.Table([html.Thead(html.Tr([html.Th("UTC"), html.Th("Trigger"), html.Th("Took"),
                                          html.Th("Changed (before → after)")])), html.Tbody(rows)],
                     size="sm", striped=True, id=table_id)


def task_result(state: str, result) -> html.Div:
    """What the "run now" button shows: the task state, then its outcome."""
    if state != "SUCCESS" or not isinstance(result, dict):
        return html.Div(f"Task {state.lower()}…", className="text-body-secondary")
    status = result.get("status", "?")
    color = {"done": "success", "skipped": "warning"}.get(status, "danger")
    return html.Div([dbc.Badge(status, color=color, className="me-2"),
                     html.Span(result.get("reason", "")),
                     changes_list(result.get("changes", []))])
