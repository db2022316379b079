"""The Settings page in a real browser against the whole console: a bad value gets its message
beside the field and changes nothing; lowering total_pipeline's threshold (and its rule's
for-duration) on the page makes the live alert fire and its toast appear; a risk limit saved
there reaches the running pipeline; export, reset and import; admins only, on the server too."""
from __future__ import annotations

import json
import time

import pytest

from core import audit, runtime_config as rc, schema, users
from tests.app.conftest import login
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def client(redis_url):
    """The console's database, at the default settings before and after each test."""
    c = schema.connect(redis_url)
    rc.reset(c, "tests")
    yield c
    rc.reset(c, "tests")


def _row(key: str) -> str:
    return f"#settings-row-{key.replace('.', '-')}"


def _rule_state(client, rule: str) -> str:
    return (schema.read_json_hash(client, schema.ALERTING_STATE).get(rule) or {}).get("state", "ok")


def _save(page, expect: str = "Saved as version") -> None:
    page.click("#settings-save")
    page.wait_for_selector(f"#settings-ok :text('{expect}')", timeout=15000)


def test_lowering_a_latency_threshold_fires_the_alert_and_its_toast(console, page, client):
    wait_for(lambda: _rule_state(client, "latency_total_pipeline") != "firing", 60, 0.5,
             "latency_total_pipeline resolved at the default threshold")
    page.goto(console + "/settings")
    page.wait_for_selector("#settings-group-latency")
    time.sleep(2.5)                                   # the shell's toast cursor has started
    version = rc.read_overrides(client)[0]
    field = _row("stage_ms.total_pipeline") + " input"
    page.fill(field, "abc")
    page.click("#settings-save")
    page.wait_for_selector(_row("stage_ms.total_pipeline") + " .invalid-feedback:text('must be a number')")
    assert page.is_visible("#settings-error") and rc.read_overrides(client)[0] == version

    page.fill(field, "0.001")                         # 1 µs: the live pipeline is always slower
    page.fill(_row("alerts.latency_for_s") + " input", "0")
    _save(page)
    assert rc.current(client)["stage_ms.total_pipeline"] == 0.001
    page.wait_for_selector("#shell-toasts :text('total_pipeline p99 over its 0.001 ms threshold')", timeout=30000)
    assert "CRITICAL" in page.inner_text("#shell-toasts")
    record = next(r for r in audit.recent_audit(client, 50) if r["action"] == "settings_change")
    assert record["user"] == "admin"
    assert {(c["key"], c["old"], c["new"]) for c in record["details"]["changes"]} == \
        {("stage_ms.total_pipeline", 100.0, 0.001), ("alerts.latency_for_s", 15.0, 0.0)}
    page.wait_for_selector("#settings-history-table :text('stage_ms.total_pipeline')")
    assert not page.console_errors, page.console_errors


def _leverage_limit(client):
    doc = schema.loads(client.get(schema.LIMITS_STATUS)) or {}
    return next((r["limit"] for r in doc.get("limits", []) if r["name"] == "leverage"), None)


def test_a_risk_limit_saved_on_the_page_reaches_the_running_pipeline(console, page, client):
    wait_for(lambda: _leverage_limit(client) == 2.0, 30, 0.5, "the pipeline's default leverage limit")
    page.goto(console + "/settings")
    page.fill(_row("limits.max_leverage") + " input", "1.5")
    _save(page)
    wait_for(lambda: _leverage_limit(client) == 1.5, 20, 0.5, "the pipeline enforcing leverage 1.5")
    version = rc.read_overrides(client)[0]
    page.wait_for_selector(f"#settings-applied-table tr:has-text('pipeline'):has-text('v{version}')", timeout=15000)


def test_export_reset_and_import_from_the_page(console, page, client, tmp_path):
    rc.apply(client, {"cache_ttl_s": 77, "safety.latency_action": "HALTED"}, "tests")
    page.goto(console + "/settings")
    page.wait_for_selector("#settings-group-cache")
    with page.expect_download() as download:
        page.click("#settings-export")
    exported = json.loads(open(download.value.path()).read())
    assert exported["values"]["cache_ttl_s"] == 77 and exported["format"] == rc.EXPORT_FORMAT

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Reset to defaults")
    page.wait_for_selector("#settings-ok :text('Reset as version')")
    assert page.input_value(_row("cache_ttl_s") + " input") == "300"
    assert rc.current(client)["safety.latency_action"] == "REDUCING"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**exported, "values": {**exported["values"], "cache_max_entries": -5}}))
    before = rc.read_overrides(client)
    page.set_input_files("#settings-upload input[type=file]", str(bad))
    page.wait_for_selector(_row("cache_max_entries") + " .invalid-feedback:text('between 1 and')")
    assert rc.read_overrides(client) == before                      # nothing half-applied
    good = tmp_path / "good.json"
    good.write_text(json.dumps(exported))
    page.set_input_files("#settings-upload input[type=file]", str(good))
    page.wait_for_selector("#settings-ok :text('Imported as version')")
    assert page.input_value(_row("cache_ttl_s") + " input") == "77"
    assert rc.current(client)["safety.latency_action"] == "HALTED"
    assert not page.console_errors, page.console_errors


EXPORT_CALL = """async () => {
  const body = {output: '..settings-download.data...settings-export-msg.children..',
                outputs: [{id: 'settings-download', property: 'data'}, {id: 'settings-export-msg', property: 'children'}],
                inputs: [{id: 'settings-export', property: 'n_clicks', value: 1}],
                changedPropIds: ['settings-export.n_clicks'], state: []};
  const r = await fetch('/_dash-update-component', {method: 'POST', body: JSON.stringify(body),
                        headers: {'Content-Type': 'application/json'}});
  return [r.status, await r.text()];
}"""


def test_a_viewer_can_neither_open_the_page_nor_call_its_callbacks(console, page, anonymous_page, client):
    client.hdel(schema.USERS, "sven")
    users.create_user(client, "sven", "sven-password", "viewer")
    login(anonymous_page, console, "sven", "sven-password")
    assert "Settings" not in anonymous_page.inner_text("nav")
    anonymous_page.goto(console + "/settings")
    anonymous_page.wait_for_selector("#settings-denied")
    status, body = anonymous_page.evaluate(EXPORT_CALL)
    assert status == 200 and "Not allowed" in body and "exported_at" not in body
    page.goto(console + "/settings")                  # the same request as an admin exports
    page.wait_for_selector("#settings-group-latency")
    status, body = page.evaluate(EXPORT_CALL)
    assert status == 200 and "exported_at" in body and "Not allowed" not in body
