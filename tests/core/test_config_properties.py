"""Property tests for bad input: any value in any settings field, any JSON import. A value is
accepted inside its range with the setting's type, or rejected with a message for that field;
an import is applied whole or not at all; nothing ever raises anything but ConfigError."""
from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from core import runtime_config as rc, schema

DB = 2
KEYS = sorted(rc.REGISTRY)
WORDS = ["true", "false", "on", "no", "HALTED", "REDUCING", "alert", "total_pipeline", "", " ", "nan",
         "inf", "-inf", "1e309", "0x10", "1_000", "١٢", "NaN"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=40) | st.sampled_from(WORDS)
           | st.from_regex(r"[-+]?[0-9]{0,7}(\.[0-9]{0,5})?([eE][-+]?[0-9]{1,3})?", fullmatch=True))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _in_range(t: rc.Tunable, value) -> bool:
    if value is None:
        return t.optional
    if t.kind == "bool":
        return type(value) is bool
    if t.kind == "choice":
        return value in t.choices
    if t.kind == "int" and type(value) is not int or t.kind == "float" and type(value) is not float:
        return False
    ok_lo = value > t.lo if t.lo_open else value >= t.lo
    ok_hi = value < t.hi if t.hi_open else value <= t.hi
    return math.isfinite(value) and ok_lo and ok_hi


@settings(max_examples=1500, deadline=None)
@given(key=st.sampled_from(KEYS), raw=json_values)
def test_any_value_in_any_field_is_typed_and_in_range_or_rejected_beside_that_field(key, raw):
    clean, errors = rc.validate({key: raw})
    if errors:
        assert set(errors) <= {key, ""} and all(isinstance(m, str) and m for m in errors.values())
        return
    value = clean[key]
    assert _in_range(rc.REGISTRY[key], value), (key, raw, value)
    assert rc.validate({key: value}) == ({key: value}, {})          # accepted values are stable


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), json_values, max_size=6))
def test_any_change_set_validates_without_raising(changes):
    clean, errors = rc.validate(changes)
    assert set(clean) <= set(rc.REGISTRY) and all(isinstance(m, str) for m in errors.values())


def _state(client) -> tuple:
    return (client.get(schema.CONFIG_VERSION), client.hgetall(schema.CONFIG_VALUES),
            client.xlen(schema.CONFIG_HISTORY), client.xlen(schema.AUDIT))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(KEYS + ["bogus"]), json_values, max_size=6))
def test_an_import_is_applied_whole_or_not_at_all(own_db, values):
    text = json.dumps({"format": rc.EXPORT_FORMAT, "values": values})
    before, current = _state(own_db), rc.current(own_db)
    try:
        rc.import_json(own_db, text, "prop")
    except rc.ConfigError as exc:
        assert exc.errors and _state(own_db) == before
        return
    after = rc.current(own_db)
    for key, raw in values.items():
        assert after[key] == rc.parse(rc.REGISTRY[key], raw)
    assert {k for k in after if after[k] != current[k]} <= set(values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_uploaded_bytes_are_rejected_with_a_reason_never_a_crash(own_db, blob):
    before = _state(own_db)
    try:
        rc.import_json(own_db, blob, "prop")
    except rc.ConfigError as exc:
        assert exc.errors[""]
    assert _state(own_db) == before
