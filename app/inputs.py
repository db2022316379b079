"""Callback arguments as the browser should send them, whatever a request actually carries.

Dash hands a callback whatever JSON the /_dash-update-component request holds: a crafted or
stale request can put a number where a text box's string belongs, or a dict where a dropdown's
value does. These helpers turn such a value into "absent", so the callback shows its empty or
default state (or its usual validation message) instead of raising, which would be a 500.
"""
from __future__ import annotations

import base64
import binascii

_SCALARS = (str, int, float, bool, type(None))


def text(value) -> str:
    """`value` when it is a string, else "" (a text box left empty)."""
    return value if isinstance(value, str) else ""


def scalar(value):
    """`value` when it is a JSON scalar (str, number, bool, None), else None: safe as a dict
    key or in an `in` test (a dict or list would raise "unhashable type")."""
    return value if isinstance(value, _SCALARS) else None


def mapping(value) -> dict:
    """`value` when it is a dict (a dcc.Store's data), else {}."""
    return value if isinstance(value, dict) else {}


def upload_bytes(contents) -> bytes:
    """The file of a dcc.Upload's `contents` (a base64 data URL); ValueError when `contents`
    is not one (absent, not text, no comma, bad base64)."""
    try:
        return base64.b64decode(text(contents).split(",", 1)[1], validate=True)
    except (IndexError, ValueError, binascii.Error):
        raise ValueError("not a base64 data URL") from None
