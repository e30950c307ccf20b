"""Fuzzing the decoders that take outside bytes: the event codec with validation (what the worker
runs on every message), the interchange-record parser (what `amb publish` runs on every line), the
fact codec (what the sink runs) and the SQL guard (what `amb serve` runs on analyst SQL).

Each property is "no crash": bad input becomes the surface's own refusal (a Rejection, a
ValueError, SQLRefused), never another exception. Examples are bounded so the file stays fast;
`make fuzz` (tests/fuzz/atheris_targets.py) runs the same targets unbounded under atheris.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import event_sets

from amb.codec import DecodeError, default_codec
from domain import access
from domain.events import Event
from domain.facts import CALL_COLUMNS, HANDOVER_COLUMNS, INCIDENT_COLUMNS
from domain.validation import Rejection, parse_record, to_record
from streams import fact_codec

NOW = int(time.time() * 1000)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODEC = default_codec()


def _check_event_or_rejection(out: object) -> None:
    assert isinstance(out, Event | Rejection), type(out)
    if isinstance(out, Rejection):
        assert out.reasons and all(r.message for r in out.reasons)


# --- the event codec ------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["amb.events.RX6", "amb.events.RYE", "other", ""]))
def test_random_bytes_are_refused_with_a_reason(value: bytes, topic: str) -> None:
    _check_event_or_rejection(CODEC.decode_and_validate(value, NOW, topic, topic.rpartition(".")[2] or None))


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid single-object encoding, then truncated, bit-flipped, spliced or extended."""
    events = draw(event_sets(max_incidents=2, max_calls=1))
    value = bytearray(CODEC.encode(draw(st.sampled_from(events)), NOW))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        i = draw(st.integers(0, max(0, len(value) - 1)))
        if op == "flip" and value:
            value[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del value[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            value[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif value:
            value[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    return bytes(value)


@FUZZ
@given(mutated_encodings())
def test_mutated_valid_events_never_crash_the_decoder(value: bytes) -> None:
    _check_event_or_rejection(CODEC.decode_and_validate(value, NOW, "amb.events.RX6", None))
    try:
        CODEC.decode(value)
    except DecodeError as exc:
        assert str(exc)


# --- interchange records (amb publish) ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A real record with some fields replaced, removed or added with arbitrary JSON values."""
    events = draw(event_sets(max_incidents=2, max_calls=1))
    rec: dict[str, Any] = json.loads(json.dumps(to_record(draw(st.sampled_from(events))), default=str))
    keys = list(rec) + ["extra", "location", "postcode", "lat", "event_time", "category"]
    for _ in range(draw(st.integers(0, 4))):
        k = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            rec[k] = draw(json_values)
        else:
            rec.pop(k, None)
    return rec


@FUZZ
@given(records(), st.sampled_from([None, "RX6", "RYE"]))
def test_record_parser_refuses_with_reasons_never_crashes(record: dict[str, Any], trust: str | None) -> None:
    _check_event_or_rejection(parse_record(record, now_ms=NOW, trust=trust))


@FUZZ
@given(st.dictionaries(st.text(max_size=20), json_values, max_size=12))
def test_arbitrary_objects_are_refused(record: dict[str, Any]) -> None:
    _check_event_or_rejection(parse_record(record, now_ms=NOW))


@FUZZ
@given(st.dictionaries(st.sampled_from(["event_id", "event_type", "trust", "incident_id", "event_time",
                                         "clock_start", "category", "source", "postcode", "lat", "lon",
                                         "easting", "northing", "disposition", "site", "handover_at"]),
                       st.text(max_size=30), max_size=16))
def test_csv_rows_of_any_text_are_refused_or_parsed(record: dict[str, str]) -> None:
    _check_event_or_rejection(parse_record(record, now_ms=NOW))


# --- the fact codec (the sink's input) --------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fact_codec_refuses_garbage_with_value_error(value: bytes) -> None:
    with contextlib.suppress(ValueError):
        fact_codec.decode(value)


@st.composite
def fact_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([fact_codec.KIND_INCIDENT, fact_codec.KIND_CALL, "other"]))
    cols = CALL_COLUMNS if kind == fact_codec.KIND_CALL else INCIDENT_COLUMNS
    body: dict[str, Any] = {"f": draw(st.sampled_from([fact_codec.FORMAT, 0, "x"])), "kind": kind}
    fact = {c: draw(json_values) for c in cols if draw(st.integers(0, 9))}
    body["call" if kind == fact_codec.KIND_CALL else "incident"] = fact
    if draw(st.booleans()):
        body["handover"] = {c: draw(json_values) for c in HANDOVER_COLUMNS}
    return json.dumps(body).encode()


@FUZZ
@given(fact_messages())
def test_fact_codec_refuses_structured_garbage_with_value_error(value: bytes) -> None:
    with contextlib.suppress(ValueError):
        fact_codec.decode(value)


def test_fact_codec_accepts_every_value_the_loader_can_load() -> None:
    """Every fact the codec encodes decodes to an equal fact that the loader accepts."""
    from sinks.loader import INCIDENTS, to_arrow

    body = {"f": fact_codec.FORMAT, "kind": fact_codec.KIND_INCIDENT,
            "incident": {c: None for c in INCIDENT_COLUMNS}}
    fm = fact_codec.decode(json.dumps(body).encode())
    assert fm.incident is not None
    to_arrow(INCIDENTS, [fm.incident])  # all-None: nullable in Arrow; the store refuses NULL trust


def test_a_fact_with_a_wrong_type_is_refused_by_decode() -> None:
    from sinks.loader import INCIDENTS, to_arrow

    body = {"f": fact_codec.FORMAT, "kind": fact_codec.KIND_INCIDENT,
            "incident": {c: None for c in INCIDENT_COLUMNS}}
    body["incident"]["version"] = "x"  # type: ignore[index]
    with pytest.raises(ValueError, match="IncidentFact.version is str"):
        fact_codec.decode(json.dumps(body).encode())  # refused: the sink dead-letters it
    body["incident"]["version"] = 3  # type: ignore[index]
    fm = fact_codec.decode(json.dumps(body).encode())
    assert fm.incident is not None
    to_arrow(INCIDENTS, [fm.incident])


# --- the SQL guard (amb serve) ----------------------------------------------------------------------

VIEWS = ("dispositions_icb_day", "handover_site_day", "response_region_month")
SQL_WORDS = ["SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "LIMIT", "UNION", "ALL", "WITH", "AS", "JOIN",
             "ON", "IN", "NOT", "AND", "OR", "FORMAT", "JSON", "INSERT", "INTO", "DROP", "TABLE", "SETTINGS",
             "system.tables", "file", "url", "remote", "*", ",", "(", ")", ";", "=", "'x'", "\"q\"", "`b`", "--",
             "/*", "*/", "1", "count()", "sum(a)", "icb", "period", "\\", "'", "\"", "`", "$$", "{p:String}",
             *VIEWS]


@FUZZ
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=25).map(" ".join) | st.text(max_size=120))
def test_sql_guard_accepts_or_refuses_never_crashes(sql: str) -> None:
    try:
        checked = access.check_sql(sql, VIEWS)
    except access.SQLRefused as exc:
        assert str(exc) and exc.name
        return
    assert checked.views <= set(VIEWS)
