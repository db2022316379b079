"""The shell's emergency-stop pieces: the button, its confirmation dialog, the HALTED banner
with the operator's Resume control and its confirmation. Ids carry the `shell-` prefix."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import html


def stop_button() -> dbc.Button:
    return dbc.Button("Emergency stop", id="shell-estop-open", color="danger", size="sm",
                      className="ms-3 fw-bold")


def stop_modal() -> dbc.Modal:
    return dbc.Modal([
        dbc.ModalHeader(dbc.ModalTitle("Halt all trading?")),
        dbc.ModalBody([
            html.P("Trading stops at once, open orders are cancelled and every position is "
                   "liquidated (reduce-only). Trading stays halted until an operator resumes it."),
            dbc.Input(id="shell-estop-reason", placeholder="Reason (recorded in the audit trail)",
                      maxLength=500, type="text"),
            html.Div(id="shell-estop-msg", className="text-danger small mt-2"),
        ]),
        dbc.ModalFooter([
            dbc.Button("Cancel", id="shell-estop-cancel", color="secondary"),
            dbc.Button("Halt trading now", id="shell-estop-confirm", color="danger"),
        ]),
    ], id="shell-estop-modal", is_open=False, centered=True)


def resume_modal() -> dbc.Modal:
    return dbc.Modal([
        dbc.ModalHeader(dbc.ModalTitle("Resume trading?")),
        dbc.ModalBody(["Strategies start submitting orders again.",
                       html.Div(id="shell-resume-msg", className="text-danger small mt-2")]),
        dbc.ModalFooter([
            dbc.Button("Cancel", id="shell-resume-cancel", color="secondary"),
            dbc.Button("Resume trading", id="shell-resume-confirm", color="success"),
        ]),
    ], id="shell-resume-modal", is_open=False, centered=True)


def state_banner() -> dbc.Alert:
    return dbc.Alert([
        html.Strong(id="shell-trading-title", children="TRADING HALTED"),
        html.Span(id="shell-trading-detail", className="ms-2"),
        dbc.Button("Resume trading", id="shell-resume-open", color="light", size="sm",
                   className="ms-3"),
    ], id="shell-trading-banner", color="danger", is_open=False, className="mb-3")
