"""The minimal alert channel: validation, dedupe, ordering, cursor polling, capping, outage."""
from __future__ import annotations

import time

import pytest

from core import schema
from core.alerts import (SEVERITIES, alerts_after, last_alert_id, raise_alert, recent_alerts)
from tests.conftest import free_port


@pytest.fixture
def client(isolated_client):
    return isolated_client


def test_every_spec_severity_is_stored_with_source_message_and_time(client):
    for i, severity in enumerate(SEVERITIES):
        raise_alert(client, severity, "tests", f"message {i}", ts=1000.0 + i)
    got = recent_alerts(client)
    assert [(a["severity"], a["source"], a["message"], a["ts"]) for a in got] == [
        (s, "tests", f"message {i}", 1000.0 + i) for i, s in reversed(list(enumerate(SEVERITIES)))]
    assert set(got[0]) == {"id", "ts", "severity", "source", "message"}


@pytest.mark.parametrize("severity", ["error", "WARNING", "", None])
def test_unknown_severity_is_a_clear_value_error(client, severity):
    with pytest.raises(ValueError, match="unknown alert severity .* expected one of"):
        raise_alert(client, severity, "tests", "x")
    assert client.xlen(schema.ALERTS) == 0


@pytest.mark.parametrize("source,message", [("", "m"), ("s", "  "), ("s", None), (3, "m")])
def test_empty_source_or_message_is_rejected(client, source, message):
    with pytest.raises(ValueError, match="must be a non-empty string"):
        raise_alert(client, "info", source, message)


def test_default_time_is_now(client):
    before = time.time()
    raise_alert(client, "info", "tests", "now")
    assert before <= recent_alerts(client)[0]["ts"] <= time.time()


def test_dedupe_key_suppresses_repeats_within_the_window_only(client):
    first = raise_alert(client, "warning", "tests", "hot", dedupe_key="hot", dedupe_s=0.3)
    repeat = raise_alert(client, "warning", "tests", "hot", dedupe_key="hot", dedupe_s=0.3)
    other = raise_alert(client, "warning", "tests", "cold", dedupe_key="cold", dedupe_s=0.3)
    assert first and other and repeat is None
    time.sleep(0.4)
    assert raise_alert(client, "warning", "tests", "hot", dedupe_key="hot", dedupe_s=0.3)
    assert [a["message"] for a in recent_alerts(client)] == ["hot", "cold", "hot"]


def test_alerts_after_polls_oldest_first_from_a_cursor(client):
    cursor = last_alert_id(client)
    assert cursor == "0-0" and alerts_after(client, cursor) == []
    ids = [raise_alert(client, "info", "tests", f"m{i}") for i in range(5)]
    page = alerts_after(client, cursor, limit=3)
    assert [a["message"] for a in page] == ["m0", "m1", "m2"]
    rest = alerts_after(client, page[-1]["id"], limit=3)
    assert [a["id"] for a in rest] == ids[3:]
    assert alerts_after(client, last_alert_id(client)) == []


def test_alerts_after_without_cursor_gives_the_newest_oldest_first(client):
    for i in range(5):
        raise_alert(client, "info", "tests", f"m{i}")
    assert [a["message"] for a in alerts_after(client, None, limit=2)] == ["m3", "m4"]


@pytest.mark.parametrize("cursor", ["abc", "1-2-3", 12, "$"])
def test_alerts_after_rejects_a_malformed_cursor(client, cursor):
    with pytest.raises(ValueError, match="last_id"):
        alerts_after(client, cursor)


@pytest.mark.parametrize("limit", [0, -1, 10_000, 2.5, True])
def test_readers_reject_a_bad_limit(client, limit):
    with pytest.raises(ValueError, match="limit"):
        recent_alerts(client, limit)


def test_stream_is_capped_near_maxlen(client):
    for _ in range(schema.ALERTS_MAXLEN + 600):
        raise_alert(client, "info", "tests", "flood")
    # MAXLEN ~ trims whole stream nodes (100 entries by default), never below the cap
    assert schema.ALERTS_MAXLEN <= client.xlen(schema.ALERTS) < schema.ALERTS_MAXLEN + 200


def test_raising_with_redis_down_logs_and_returns_none(caplog):
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0")
    assert raise_alert(dead, "critical", "tests", "lost", dedupe_key="k") is None
    assert "alert not stored" in caplog.text and "lost" in caplog.text


def test_bad_severity_is_rejected_even_with_redis_down():
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ValueError):
        raise_alert(dead, "fatal", "tests", "x")
