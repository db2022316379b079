"""Runtime settings: the validation matrix, atomic versioned writes with audit, reset, export /
import, the per-process listener, and each group's consumer reading the value live."""
from __future__ import annotations

import json
import threading
from dataclasses import fields

import pytest

from core import audit, runtime_config as rc, schema
from core.settings import Settings, load_settings
from tests.conftest import wait_for

DB = 2


@pytest.fixture
def url(redis_url):
    return redis_url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def live(own_db, url):
    cfg = rc.LiveConfig(url, "test", poll_s=0.2).start()
    yield cfg
    cfg.stop()


def _state(client) -> tuple:
    """Everything a settings write may touch."""
    return (client.get(schema.CONFIG_VERSION), client.hgetall(schema.CONFIG_VALUES),
            client.xlen(schema.CONFIG_HISTORY), client.xlen(schema.AUDIT))


# ---- registry and validation matrix ---------------------------------------------------------
def test_every_default_is_valid_and_settings_backed_keys_are_settings_fields():
    values = rc.defaults()
    clean, errors = rc.validate(values)
    assert errors == {} and clean == values
    names = {f.name for f in fields(Settings)}
    for t in rc.TUNABLES:
        assert "." in t.key or t.key in names, t.key
        assert t.group in rc.GROUPS and t.description
    assert {t.key for t in rc.TUNABLES if not t.hot} == {"flush_interval_s", "guard_heartbeat_s"}


MATRIX = [
    # key, submitted value, error fragment (None: accepted)
    ("stage_ms.total_pipeline", "abc", "must be a number"),
    ("stage_ms.total_pipeline", "0", "between 0.001 and 60,000 ms"),
    ("stage_ms.total_pipeline", "60001", "between 0.001 and 60,000 ms"),
    ("stage_ms.total_pipeline", "nan", "finite"),
    ("stage_ms.total_pipeline", float("inf"), "finite"),
    ("stage_ms.total_pipeline", True, "must be a number"),
    ("stage_ms.total_pipeline", "", "required"),
    ("stage_ms.total_pipeline", None, "required"),
    ("stage_ms.total_pipeline", [1], "must be a number"),
    ("stage_ms.total_pipeline", " 0.5 ", None),
    ("alerts.cpu_pct", "101", "between 1 and 100 %"),
    ("alerts.latency_for_s", "-1", "between 0 and 86,400 s"),
    ("alerts.latency_for_s", 0, None),
    ("alerts.console_memory_budget_mib", "2.5", "whole number"),
    ("alerts.console_memory_budget_mib", "1e3", None),
    ("cache_max_entries", "0", "between 1 and 10,000,000 entries"),
    ("cache_max_entries", 10**400, "between 1 and 10,000,000"),
    ("cache_ttl_s", 10**400, "finite"),
    ("cache_ttl_s", "1" * 100, "must be a number"),
    ("limits.max_leverage", "0", "> 0 and <= 1,000×"),
    ("limits.max_leverage", "", None),                      # blank = no limit
    ("limits.max_daily_loss_fraction", "1.5", "> 0 and <= 1 fraction"),
    ("safety.daily_loss_fraction", "1", "> 0 and < 1 fraction"),
    ("safety.latency_windows", "0", "between 1 and 3,600 windows"),
    ("safety.latency_action", "STOP", "must be one of alert, REDUCING, HALTED"),
    ("safety.latency_stage", "gpu", "must be one of"),
    ("safety.auto_resume_loss", "maybe", "true or false"),
    ("safety.auto_resume_loss", "on", None),
    ("numba_enabled", 1, "true or false"),
    ("max_workers", "0", "between 1 and 1,024 threads"),
    ("metrics_interval_s", "0.1", "between 0.2 and 60 s"),
    ("no_such_setting", 1, "unknown setting"),
]


@pytest.mark.parametrize("key,raw,fragment", MATRIX)
def test_validation_matrix_gives_the_message_beside_the_field(key, raw, fragment):
    clean, errors = rc.validate({key: raw})
    if fragment is None:
        assert errors == {} and key in clean
    else:
        assert fragment in errors[key], errors


def test_cross_field_rules_name_the_field_the_user_changed():
    _, errors = rc.validate({"gc_threshold_pct": 85})
    assert "below the memory threshold (80 %)" in errors["gc_threshold_pct"]
    _, errors = rc.validate({"memory_threshold_pct": 60})
    assert "must be below the memory threshold (60 %)" in errors["memory_threshold_pct"]
    _, errors = rc.validate({"gc_threshold_pct": 50, "memory_threshold_pct": 60})
    assert errors == {}
    _, errors = rc.validate("not a mapping")
    assert "object" in errors[""]


def test_the_environment_obeys_the_same_gc_below_memory_rule():
    from core.settings import SettingsError
    with pytest.raises(SettingsError, match="must be below"):
        load_settings({"CONSOLE_GC_THRESHOLD_PCT": "80", "CONSOLE_MEMORY_THRESHOLD_PCT": "80"})


def test_parsed_values_have_the_settings_types():
    clean, errors = rc.validate({"max_workers": "3", "cache_ttl_s": "7", "numba_enabled": "false",
                                 "limits.max_daily_loss": " "})
    assert errors == {}
    assert clean == {"max_workers": 3, "cache_ttl_s": 7.0, "numba_enabled": False, "limits.max_daily_loss": None}
    assert type(clean["max_workers"]) is int and type(clean["cache_ttl_s"]) is float


# ---- writes: atomic, versioned, audited ---------------------------------------------------------
def test_apply_commits_values_version_history_audit_and_a_message(own_db):
    pubsub = own_db.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(schema.CONFIG_EVENTS)
    result = rc.apply(own_db, {"cache_ttl_s": "60", "alerts.cpu_pct": 90}, "olga", reason="tuning")
    assert result["version"] == 1
    assert {(c["key"], c["old"], c["new"]) for c in result["changes"]} == {("cache_ttl_s", 300.0, 60.0),
                                                                           ("alerts.cpu_pct", 80.0, 90.0)}
    assert rc.current(own_db)["cache_ttl_s"] == 60.0
    msg = wait_for(lambda: pubsub.get_message(timeout=0.2), 5, what="the change published")
    assert json.loads(msg["data"]) == {"version": 1}
    [entry] = rc.history(own_db)
    assert entry["user"] == "olga" and entry["version"] == 1 and len(entry["changes"]) == 2
    [record] = audit.recent_audit(own_db)
    assert record["action"] == "settings_change" and record["user"] == "olga"
    assert record["details"]["version"] == 1 and record["reason"] == "tuning"
    assert rc.apply(own_db, {"cache_ttl_s": 60}, "olga") == {"version": 1, "changes": []}   # no change
    assert own_db.xlen(schema.AUDIT) == 1
    pubsub.close()


def test_a_value_equal_to_its_default_is_not_stored(own_db):
    rc.apply(own_db, {"cache_ttl_s": 60}, "olga")
    rc.apply(own_db, {"cache_ttl_s": 300}, "olga")
    assert own_db.hgetall(schema.CONFIG_VALUES) == {} and rc.read_overrides(own_db)[0] == 2


def test_a_rejected_change_writes_nothing(own_db):
    rc.apply(own_db, {"cache_ttl_s": 60}, "olga")
    before = _state(own_db)
    with pytest.raises(rc.ConfigError) as exc:
        rc.apply(own_db, {"cache_ttl_s": 30, "max_workers": "many"}, "olga")
    assert set(exc.value.errors) == {"max_workers"}
    assert _state(own_db) == before


def test_concurrent_saves_lose_nothing_and_versions_stay_contiguous(own_db):
    keys = [t.key for t in rc.TUNABLES if t.kind == "float" and t.key.startswith("stage_ms.")]
    threads = [threading.Thread(target=rc.apply, args=(own_db, {k: 7.5}, f"u{i}")) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    version, overrides = rc.read_overrides(own_db)
    assert version == len(keys) and overrides == {k: 7.5 for k in keys}
    assert sorted(h["version"] for h in rc.history(own_db)) == list(range(1, len(keys) + 1))


def test_reset_returns_to_environment_and_builtin_defaults(own_db):
    env = load_settings({"CONSOLE_CACHE_TTL": "42", "CONSOLE_TICK_RATE": "500"})
    rc.apply(own_db, {"cache_ttl_s": 60, "alerts.throughput_target_ops_s": 10, "safety.cooldown_s": 5},
             "olga", settings=env)
    own_db.hset(schema.CONFIG_VALUES, "retired_setting", "1")    # from an older version
    result = rc.reset(own_db, "olga", settings=env)
    values = rc.current(own_db, env)
    assert values["cache_ttl_s"] == 42.0                           # the environment's value
    assert values["alerts.throughput_target_ops_s"] == 450.0      # 90 % of CONSOLE_TICK_RATE
    assert values["safety.cooldown_s"] == 30.0                     # built-in default
    assert own_db.hgetall(schema.CONFIG_VALUES) == {}
    assert audit.recent_audit(own_db)[0]["action"] == "settings_reset" and len(result["changes"]) == 3
    with pytest.raises(rc.ConfigError, match="unknown setting"):
        rc.reset(own_db, "olga", keys=["nope"])


def test_export_then_import_reproduces_every_value(own_db):
    rc.apply(own_db, {"cache_ttl_s": 61, "limits.max_leverage": "", "safety.latency_action": "HALTED"}, "olga")
    text = rc.export_json(own_db)
    values = rc.current(own_db)
    rc.reset(own_db, "olga")
    result = rc.import_json(own_db, text.encode(), "olga")
    assert rc.current(own_db) == values and len(result["changes"]) == 3
    assert audit.recent_audit(own_db)[0]["action"] == "settings_import"


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"), ("{", "not valid JSON"), ("[]", "not a settings export"),
    ('{"values": {}}', "not a settings export"), (b"\xff\xfe", "UTF-8"),
    ("[" * 150_000 + "]" * 150_000, "larger than"), ("[" * 50_000 + "]" * 50_000, "not valid JSON"),
])
def test_malformed_imports_are_rejected_with_a_reason(own_db, text, fragment):
    with pytest.raises(rc.ConfigError, match=fragment):
        rc.import_json(own_db, text, "olga")


def test_an_import_with_one_bad_value_applies_nothing(own_db):
    doc = json.loads(rc.export_json(own_db))
    doc["values"].update({"cache_ttl_s": 5, "gc_threshold_pct": 95})   # GC above memory: cross-field
    before = _state(own_db)
    with pytest.raises(rc.ConfigError) as exc:
        rc.import_json(own_db, json.dumps(doc), "olga")
    assert set(exc.value.errors) == {"gc_threshold_pct"} and _state(own_db) == before


# ---- the listener ---------------------------------------------------------------------------------
def test_listener_adopts_a_change_and_calls_back_with_the_changed_keys(own_db, live):
    seen = []
    live.on_change(lambda values, changed: seen.append((values["cache_ttl_s"], changed)))
    rc.apply(own_db, {"cache_ttl_s": 12}, "olga")
    wait_for(lambda: live.values["cache_ttl_s"] == 12.0, 5, 0.02, "the listener adopting v1")
    assert seen == [(12.0, {"cache_ttl_s"})] and live.version == 1
    reported = schema.read_json_hash(own_db, schema.CONFIG_APPLIED)[live.proc]
    assert reported["version"] == 1 and reported["role"] == "test"
    assert [r["proc"] for r in rc.applied(own_db)] == [live.proc]
    with pytest.raises(TypeError):
        live.values["cache_ttl_s"] = 1          # readers get an immutable snapshot


def test_listener_catches_a_missed_message_by_its_version_check(own_db, live):
    own_db.hset(schema.CONFIG_VALUES, "max_workers", "1")     # written without a PUBLISH
    own_db.incr(schema.CONFIG_VERSION)
    wait_for(lambda: live.values["max_workers"] == 1, 5, 0.05, "the poll picking up v1")


def test_listener_falls_back_to_defaults_when_the_overrides_vanish(own_db, live):
    rc.apply(own_db, {"max_workers": 1}, "olga")
    wait_for(lambda: live.values["max_workers"] == 1, 5, 0.02, "v1")
    own_db.flushdb()
    wait_for(lambda: live.values == rc.defaults(), 5, 0.05, "back to the defaults")


def test_listener_without_redis_keeps_the_defaults_and_never_raises():
    from tests.conftest import free_port
    cfg = rc.LiveConfig(f"redis://127.0.0.1:{free_port()}/0", "test", poll_s=0.2).start(wait_s=2)
    assert cfg.values == rc.defaults() and cfg.version == 0
    cfg.stop()
