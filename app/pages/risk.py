"""Risk: VaR / CVaR by method, drawdown, P&L, positions with limit utilization, concentration,
model risk, and the trading state with its history.

Reads what the workers wrote: schema.RISK_LATEST (risk.compute), schema.LIMITS_STATUS and
schema.TRADING_STATE / TRADING_HISTORY (the safety side), in one Redis round trip; the
sections are built by app/components/risk_view.py. Every key may be absent ("no data yet").
"""
from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, callback, dcc, html

from app import data
from app.components import charts
from app.components.risk_view import (CARDS, cards, concentration_figure, history_table,
                                      limits_table, model_panel, no_data, pnl_figure,
                                      positions_table, underwater_figure, utc, var_table)
from core import schema

dash.register_page(__name__, path="/risk", name="Risk", order=3)

HISTORY_ROWS = 20
GRAPH_CONFIG = {"displaylogo": False}


def _card(card_id: str, title: str) -> dbc.Col:
    return dbc.Col(dbc.Card(dbc.CardBody([
        html.Div(title, className="text-body-secondary small text-uppercase"),
        html.Div("–", id=f"{card_id}-value", className="fs-4 fw-semibold"),
        html.Div("", id=f"{card_id}-detail", className="small text-body-secondary"),
    ]), className="h-100"), xs=12, sm=6, lg=4, xl=2, className="mb-3")


def layout(**_kwargs):
    return html.Div([
        dbc.Row([_card(card_id, title) for card_id, title in CARDS]),
        html.Div(id="risk-asof", className="small text-body-secondary mb-2"),
        dbc.Row([
            dbc.Col([html.H5("Value at risk (1 day)"), html.Div(id="risk-var-table")], lg=6),
            dbc.Col([html.H5("Model risk"), html.Div(id="risk-model")], lg=6),
        ], className="mb-3"),
        dbc.Row([dbc.Col(dcc.Graph(id="risk-underwater-graph", config=GRAPH_CONFIG), lg=6),
                 dbc.Col(dcc.Graph(id="risk-pnl-graph", config=GRAPH_CONFIG), lg=6)]),
        dbc.Row([dbc.Col([html.H5("Positions and exposure", className="mt-3"),
                          html.Div(id="risk-positions")], lg=7),
                 dbc.Col(dcc.Graph(id="risk-concentration-graph", config=GRAPH_CONFIG), lg=5)]),
        dbc.Row([dbc.Col([html.H5("Limits", className="mt-3"), html.Div(id="risk-limits")], lg=6),
                 dbc.Col([html.H5("Trading state history", className="mt-3"),
                          html.Div(id="risk-state-history")], lg=6)]),
    ])


# ---- callbacks -----------------------------------------------------------------------------
CARD_OUTPUTS = [Output(f"{card_id}-{part}", "children") for card_id, _ in CARDS
                for part in ("value", "detail")]


def _fallback(_n):
    down = charts.empty_figure("Redis unreachable")
    msg = no_data("Redis unreachable.")
    return (["–", "Redis unreachable"] * len(CARDS) + ["", msg, msg, down, down, msg, down, msg, msg])


@callback(*CARD_OUTPUTS, Output("risk-asof", "children"), Output("risk-var-table", "children"),
          Output("risk-model", "children"), Output("risk-underwater-graph", "figure"),
          Output("risk-pnl-graph", "figure"), Output("risk-positions", "children"),
          Output("risk-concentration-graph", "figure"), Output("risk-limits", "children"),
          Output("risk-state-history", "children"),
          Input("shell-interval", "n_intervals"))
@data.guarded(_fallback)
def update_risk(_n):
    client = data.client()
    pipe = client.pipeline(transaction=False)
    pipe.get(schema.RISK_LATEST)
    pipe.get(schema.LIMITS_STATUS)
    pipe.get(schema.TRADING_STATE)
    pipe.xrevrange(schema.TRADING_HISTORY, count=HISTORY_ROWS)
    raw_doc, raw_limits, raw_state, raw_history = pipe.execute()
    doc, limits = _loads(raw_doc), _loads(raw_limits)
    doc = doc if isinstance(doc, dict) else None
    limits = limits if isinstance(limits, dict) else None
    state = None if raw_state is None else _text(raw_state)
    entries = [{_text(k): _text(v) for k, v in fields.items()} for _id, fields in raw_history]
    asof = (f"Risk computed {utc(doc['ts'])} UTC" if doc
            else "Risk: no data yet (risk.compute runs every few seconds).")
    return (*cards(doc, state), asof, var_table(doc), model_panel(doc), underwater_figure(doc),
            pnl_figure(doc), positions_table(doc, limits), concentration_figure(doc),
            limits_table(limits), history_table(entries))


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _loads(raw):
    try:
        return schema.loads(raw)
    except ValueError:
        return None
