"""Every registered Dash callback answers malformed payloads without a 500 (issue 8, bad input).

In-process: the app is built with `create_app()` on this module's own Redis database (data
reads and the Celery broker both point there, so a fuzzed Run / Optimize button can never
reach the live console's worker), an admin session is signed into a Flask test client, and
each callback of the app's callback map gets a /_dash-update-component request per malformed
value (every input and state replaced at once, the first input marked as the trigger).
Pattern-matching ids (ALL / MATCH) are expanded to one concrete element. A 2xx (placeholders),
204 (no update) or 4xx with a message passes; a 500 fails with the callback and the value.
"""
from __future__ import annotations

import importlib
import json
import sys

import pytest

from app import data
from core import schema, users
from tests.conftest import ADMIN_PASSWORD

DB = 11          # tests/core/test_trading_guard.py's: modules run one after the other

JUNK_VALUES = {
    "none": None,
    "long-string": "x" * 100_000,
    "number": 12345,
    "dict": {"junk": [1, 2]},
    "list-of-junk": ["junk", 1, None, {"a": 1}],
    "negative": -1,
    "huge": 10**18,
    "nan-string": "NaN",
    "inf-string": "inf",
}
WILDCARDS = ('["ALL"]', '["MATCH"]', '["ALLSMALLER"]')
OWN_PACKAGES = ("app", "pages")        # use_pages imports app/pages/*.py as pages.<name>
SHELL_OUTPUT = "..shell-redis-banner.is_open...shell-health.children.."


def _concrete(id_text: str):
    """A wildcard id ('{"key":["ALL"],"type":"x"}') made concrete: wildcards become "fuzz"."""
    if not id_text.startswith("{"):
        return id_text
    return {k: ("fuzz" if isinstance(v, list) else v) for k, v in json.loads(id_text).items()}


def _is_all(id_text: str) -> bool:
    return id_text.startswith("{") and ('["ALL"]' in id_text or '["ALLSMALLER"]' in id_text)


def _output_spec(key: str):
    """The renderer's `outputs` entry for a callback-map key (multi-output: a list)."""
    def one(part: str):
        id_text, prop = part.rsplit(".", 1)
        spec = {"id": _concrete(id_text), "property": prop.split("@", 1)[0]}
        return [spec] if _is_all(id_text) else spec
    if key.startswith(".."):
        return [one(p) for p in key[2:-2].split("...")]
    return one(key)


def _arg(dep: dict, value):
    entry = {"id": _concrete(dep["id"]), "property": dep["property"], "value": value}
    return [entry] if _is_all(dep["id"]) else entry


def _prop_id(dep: dict) -> str:
    concrete = _concrete(dep["id"])
    text = json.dumps(concrete, sort_keys=True, separators=(",", ":")) if isinstance(concrete, dict) else concrete
    return f"{text}.{dep['property']}"


def payload(key: str, spec: dict, value, trigger: int = 0) -> dict:
    """A /_dash-update-component body for callback `key` with every input and state = value,
    input number `trigger` marked as the one that changed."""
    return {"output": key, "outputs": _output_spec(key),
            "inputs": [_arg(d, value) for d in spec["inputs"]],
            "state": [_arg(d, value) for d in spec.get("state", [])],
            "changedPropIds": [_prop_id(spec["inputs"][trigger])]}


@pytest.fixture(scope="module")
def fuzz_redis(redis_url):
    client = schema.connect(redis_url.rsplit("/", 1)[0] + f"/{DB}")
    client.flushdb()
    users.create_user(client, "admin", ADMIN_PASSWORD, "admin")
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def app(fuzz_redis, redis_url):
    """The console app on the fuzz database, its Celery broker redirected there too."""
    from celery_config import celery_app
    patch = pytest.MonkeyPatch()
    patch.setattr(data, "client", lambda: fuzz_redis)
    own_url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    patch.setattr(celery_app.conf, "broker_url", own_url)
    patch.setattr(celery_app, "_pool", None)
    patch.setattr(celery_app.amqp, "_producer_pool", None)
    if "app.main" in sys.modules:   # an earlier create_app() in this process took its shell callbacks
        importlib.reload(sys.modules["app.main"])
    from app.main import create_app
    dash_app = create_app()
    yield dash_app
    patch.undo()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(scope="module")
def admin_client(app):
    client = app.server.test_client()
    with client.session_transaction() as session:
        session["user"] = {"username": "admin", "role": "admin"}
    return client


def _own_callbacks(app) -> dict:
    """The console's own server-side callbacks: clientside ones have no server code, and the
    library's (Dash's page router, dash_bootstrap_templates' theme widgets, which the console
    never shows) are not ours to fix."""
    return {k: v for k, v in app.callback_map.items()
            if "callback" in v and v["callback"].__module__.split(".")[0] in OWN_PACKAGES}


def test_the_callback_map_holds_every_page_and_the_shell(app):
    callbacks = _own_callbacks(app)
    modules = {getattr(v["callback"], "__module__", "") for v in callbacks.values()}
    assert SHELL_OUTPUT in callbacks and len(callbacks) >= 40, sorted(callbacks)
    assert {"app.main"} <= modules


@pytest.mark.parametrize("variant", sorted(JUNK_VALUES))
def test_every_callback_answers_a_malformed_value_without_a_500(app, admin_client, variant):
    crashes = []
    for key, spec in sorted(_own_callbacks(app).items()):
        for trigger in range(len(spec["inputs"])):          # every branch: each input as the trigger
            body = payload(key, spec, JUNK_VALUES[variant], trigger)
            response = admin_client.post("/_dash-update-component", json=body,
                                         headers={"Origin": "http://localhost"})
            if response.status_code >= 500:
                crashes.append(f"{spec['callback'].__module__}.{spec['callback'].__name__} "
                               f"(trigger {spec['inputs'][trigger]['id']})")
            elif response.status_code >= 400:
                assert response.get_data(as_text=True).strip(), f"{key}: {response.status_code} without a message"
    assert not crashes, f"{variant}: {len(crashes)} callbacks answered 500:\n" + "\n".join(crashes)


def test_the_fuzz_reaches_the_callbacks_it_claims(app, admin_client):
    """The harness itself: a well-formed shell poll is a 200 with both outputs."""
    body = payload(SHELL_OUTPUT, app.callback_map[SHELL_OUTPUT], 1)
    response = admin_client.post("/_dash-update-component", json=body, headers={"Origin": "http://localhost"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert set(response.get_json()["response"]) == {"shell-redis-banner", "shell-health"}
