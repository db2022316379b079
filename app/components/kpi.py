"""KPI cards: a value against its target, coloured by status."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import html

STATUS_COLOR = {"ok": "success", "warn": "warning", "fail": "danger", "unknown": "secondary"}


def kpi_card(card_id: str, title: str) -> dbc.Col:
    return dbc.Col(dbc.Card(dbc.CardBody([
        html.Div(title, className="text-body-secondary small text-uppercase"),
        html.Div("–", id=f"{card_id}-value", className="fs-3 fw-semibold"),
        html.Div("", id=f"{card_id}-target", className="small text-body-secondary"),
    ]), id=f"{card_id}-card", className="h-100 border-2"), xs=12, sm=6, lg=4, xl=2, className="mb-3")


def status_class(status: str) -> str:
    return f"h-100 border-2 border-{STATUS_COLOR.get(status, 'secondary')}"


def against(value: float | None, limit: float, warn_fraction: float = 0.8) -> str:
    """'ok' below warn_fraction * limit, 'warn' up to the limit, 'fail' above, 'unknown' if None."""
    if value is None:
        return "unknown"
    if value > limit:
        return "fail"
    return "warn" if value > warn_fraction * limit else "ok"


def severity_color(severity: str) -> str:
    """Bootstrap colour of an alert severity."""
    return {"critical": "danger", "degraded": "warning", "warning": "warning"}.get(severity, "info")
