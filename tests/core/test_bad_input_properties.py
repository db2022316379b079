"""Property-based bad input: whatever a user or a peer sends, public core functions answer with
their documented error (or a value), never another exception."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from core import alerting, users
from core.settings import SettingsError, load_settings
from core.telemetry.histogram import Histogram, HistogramDecodeError

ENV_NAMES = ["PORT", "REDIS_URL", "DATABASE_URL", "CONSOLE_SYMBOLS", "CONSOLE_TICK_RATE",
             "CONSOLE_FLUSH_INTERVAL", "CONSOLE_LOG_LEVEL", "CONSOLE_SECURE_COOKIES",
             "CONSOLE_SECRET_KEY", "CONSOLE_ALERT_WEBHOOK_URL", "CONSOLE_SESSION_HOURS"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=40), max_size=6))
def test_any_environment_gives_settings_or_a_settings_error_naming_the_variable(env):
    try:
        s = load_settings(env)
    except SettingsError as exc:
        assert any(name in str(exc) for name in env)
    else:
        assert 1 <= s.port <= 65535 and s.tick_rate >= 1 and s.symbols >= 1


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_histogram_or_a_decode_error(blob):
    try:
        hist = Histogram.decode(blob)
    except HistogramDecodeError:
        return
    assert hist.count >= 0


@FAST
@given(st.text(max_size=40), st.text(max_size=300), st.text(max_size=12))
def test_any_user_fields_are_accepted_or_refused_with_a_user_error(name, password, role):
    try:
        users._validate(name, password, role)
    except users.UserError as exc:
        assert str(exc).split(":")[0] in ("username", "password", "role")


@FAST
@given(st.text(max_size=20), st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
       st.floats(min_value=-10, max_value=1e6), st.text(max_size=10))
def test_any_alert_rule_fields_build_a_rule_or_raise_value_error(metric, op, threshold, for_s, severity):
    try:
        alerting.Rule("r", metric, op, threshold, for_s, severity, "s")
    except ValueError:
        pass
