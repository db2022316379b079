"""Users (admin only): add users, change roles, reset passwords, delete, issue API tokens."""
from __future__ import annotations

from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, html, no_update

from app import auth, data, inputs
from core import users
from core.audit import write_audit

dash.register_page(__name__, path="/users", name="Users", order=90, min_role="admin")


def layout(**_kwargs):
    denied = auth.require_role("admin")
    if denied:
        return dbc.Alert(denied, color="danger", id="users-denied")
    field = dict(className="mb-2")
    return html.Div([
        html.H4("Users"),
        html.Div(id="users-table"),
        dbc.Card(dbc.CardBody([
            html.H6("Add or change a user"),
            dbc.Row([
                dbc.Col(dbc.Input(id="users-name", placeholder="username", **field), md=3),
                dbc.Col(dbc.Input(id="users-password", type="password",
                                  placeholder="password (blank: keep)", **field), md=3),
                dbc.Col(dbc.Select(id="users-role", options=list(users.ROLES), value="viewer", **field), md=2),
                dbc.Col([dbc.Button("Add", id="users-add", color="primary", className="me-2"),
                         dbc.Button("Update", id="users-update", color="secondary", className="me-2"),
                         dbc.Button("Delete", id="users-delete", color="danger", className="me-2"),
                         dbc.Button("New API token", id="users-token", color="info")], md=4),
            ]),
            html.Div(id="users-result", className="mt-2"),
        ]), className="mt-3"),
    ])


def _table():
    rows = [html.Tr([html.Td(u["username"]), html.Td(u["role"]),
                     html.Td(datetime.fromtimestamp(u["created"] or 0, timezone.utc).strftime("%Y-%m-%d %H:%M"))])
            for u in users.list_users(data.client())]
    return dbc.Table([html.Thead(html.Tr([html.Th("User"), html.Th("Role"), html.Th("Created (UTC)")])),
                      html.Tbody(rows)], size="sm", striped=True, id="users-table-el")


def _unavailable(*_args):
    return dbc.Alert("Redis unreachable.", color="secondary"), no_update


@callback(Output("users-result", "children"), Output("users-table", "children"),
          Input("users-add", "n_clicks"), Input("users-update", "n_clicks"),
          Input("users-delete", "n_clicks"), Input("users-token", "n_clicks"),
          State("users-name", "value"), State("users-password", "value"), State("users-role", "value"))
@data.guarded(_unavailable)
def change_user(_add, _update, _delete, _token, name, password, role):
    denied = auth.require_role("admin")  # checked on the server for every call
    if denied:
        return dbc.Alert(denied, color="danger"), no_update
    action = dash.ctx.triggered_id
    if action is None:
        return no_update, _table()
    name, me = inputs.text(name).strip().lower(), auth.current_user()["username"]
    client = data.client()
    try:
        message = _apply(client, action, name, inputs.text(password) or None, inputs.scalar(role), me)
    except users.UserError as exc:
        return dbc.Alert(str(exc), color="warning", id="users-error"), no_update
    write_audit(client, f"user_{action.removeprefix('users-')}", me, "web", name, {"role": role})
    return dbc.Alert(message, color="success", id="users-ok"), _table()


def _apply(client, action: str, name: str, password: str | None, role: str, me: str) -> str:
    if action == "users-add":
        users.create_user(client, name, password or "", role)
        return f"User {name} added as {role}."
    if action == "users-update":
        users.update_user(client, name, password=password, role=role)
        return f"User {name} updated."
    if action == "users-delete":
        if name == me:
            raise users.UserError("you cannot delete yourself")
        users.delete_user(client, name)
        return f"User {name} deleted."
    token = users.issue_api_token(client, name)
    return f"API token for {name} (shown once, acts with the user's role): {token}"
