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


def enqueue(task_name: str) -> tuple:
    """The "run it now" click: (task id, poll disabled, message). Operators only, checked on the
    server; the request is audited; a broker outage is a message, never a 500."""
    from app import auth, data
    from core.audit import write_audit
    denied = auth.require_role("operator")
    if denied:
        return None, True, dbc.Alert(denied, color="danger", className="py-1 mb-0")
    from celery_config import celery_app
    try:
        result = celery_app.send_task(task_name, kwargs={"trigger": "manual"})
    except Exception as exc:  # noqa: BLE001  (broker down: say so, never a 500)
        return None, True, dbc.Alert(f"Could not enqueue: {exc}", color="danger", className="py-1 mb-0")
    write_audit(data.client(), "optimization", auth.current_user()["username"], "web", task_name,
                {"task_id": result.id})
    return result.id, False, html.Div("Task queued…", className="text-body-secondary")


def poll(task_id) -> tuple:
    """(result view, poll disabled) for a queued task id."""
    if not task_id:
        return html.Span(), True
    if not isinstance(task_id, str) or len(task_id) > 64:
        return html.Div("Unknown task id.", className="text-warning"), True
    from celery_config import celery_app
    res = celery_app.AsyncResult(task_id)
    if res.state == "FAILURE":
        return dbc.Alert(f"Task failed: {res.result}", color="danger", className="py-1 mb-0"), True
    return task_result(res.state, res.result if res.state == "SUCCESS" else None), res.state == "SUCCESS"
