"""domain.validation: the interchange format's "Invalid" rules, shared by publisher and stream side.

Also home of the hypothesis strategies for Events that test_codec and test_publish reuse
(``valid_events``, ``any_events``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from domain.events import (
    CONVEYED,
    TRUSTS,
    Category,
    Disposition,
    Event,
    EventType,
    Location,
    Source,
    format_time,
    parse_time,
)
from domain.validation import (
    DAY_MS,
    INTERCHANGE_FIELDS,
    MIN_TIME_MS,
    Code,
    Rejection,
    check_event,
    parse_record,
    surely_valid,
    to_record,
    unknown_fields,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
NOW = parse_time("2026-01-01T00:00:00Z")
EXAMPLE_NOW = parse_time("2025-01-16T00:00:00Z")

# ----------------------------------------------------------------------------- strategies

def utf8_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=max_size)


text_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=64).filter(
    lambda s: not s.isspace())
ascii_ids = st.from_regex(r"[A-Za-z0-9\-/]{1,64}", fullmatch=True)
sites = st.from_regex(r"[A-Z0-9]{3,8}", fullmatch=True)
valid_times = st.integers(MIN_TIME_MS, NOW + DAY_MS)
uuids = st.uuids().map(str)


@st.composite
def locations(draw: st.DrawFn) -> Location | None:
    # A blank postcode is indistinguishable from none in the interchange format (empty cell = absent).
    postcode = draw(st.none() | st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                                        min_size=1, max_size=16).filter(lambda p: not p.isspace()))
    latlon = draw(st.none() | st.tuples(st.floats(49.0, 61.5), st.floats(-9.0, 2.5)))
    en = draw(st.none() | st.tuples(st.floats(0, 700_000), st.floats(0, 1_300_000)))
    if postcode is None and latlon is None and en is None:
        return None
    return Location(postcode, *(latlon or (None, None)), *(en or (None, None)))


@st.composite
def valid_events(draw: st.DrawFn, trust: str | None = None, now: int = NOW) -> Event:
    """Events every rule accepts (relative to ``now``), of every type, with optional fields drawn."""
    et = draw(st.sampled_from(list(EventType)))
    trust = trust or draw(st.sampled_from(TRUSTS))
    times = st.integers(MIN_TIME_MS, now + DAY_MS)
    maybe_time = st.none() | times
    kw: dict[str, Any] = dict(
        event_id=draw(uuids), event_type=et, trust=trust, incident_id=draw(ascii_ids | text_ids),
        event_time=draw(times), produced_time=draw(maybe_time),
    )
    if et is EventType.INCIDENT_CREATED:
        kw.update(clock_start=draw(times), category=draw(st.sampled_from(list(Category))),
                  source=draw(st.sampled_from(list(Source))), location=draw(locations()))
    elif et is EventType.CATEGORY_CHANGED:
        kw.update(category=draw(st.sampled_from(list(Category))))
    elif et is EventType.DISPOSITION:
        d = draw(st.sampled_from(list(Disposition)))
        kw.update(disposition=d, destination_site=draw(sites) if d in CONVEYED else draw(st.none() | sites))
    elif et is EventType.HANDOVER:
        arrived = draw(times)
        later = st.none() | st.integers(arrived, now + DAY_MS)
        kw.update(site=draw(sites), arrived_at_hospital=arrived, handover_at=draw(later), clear_at=draw(later))
    elif et is EventType.CALL_111:
        kw.update(call_id=kw["incident_id"], disposition_ambulance=draw(st.booleans()),
                  linked_incident_id=draw(st.none() | ascii_ids), location=draw(locations()))
    return Event(**kw)


@st.composite
def any_events(draw: st.DrawFn) -> Event:
    """Events of any shape the Event type allows (valid or not, every field set or not): for codecs."""
    i64 = st.integers(-(2**63), 2**63 - 1)
    opt_time = st.none() | i64
    opt_text = st.none() | utf8_text(80)
    opt_float = st.none() | st.floats(allow_nan=False)
    loc = st.none() | st.builds(Location, opt_text, opt_float, opt_float, opt_float, opt_float)
    return Event(
        event_id=draw(uuids | utf8_text(40)),
        event_type=draw(st.sampled_from(list(EventType))),
        trust=draw(st.sampled_from(TRUSTS) | utf8_text(6)),
        incident_id=draw(utf8_text(70)),
        event_time=draw(i64), produced_time=draw(opt_time), schema_version=draw(st.integers(-(2**31), 2**31 - 1)),
        clock_start=draw(opt_time), category=draw(st.none() | st.sampled_from(list(Category))),
        source=draw(st.none() | st.sampled_from(list(Source))), location=draw(loc),
        disposition=draw(st.none() | st.sampled_from(list(Disposition))), destination_site=draw(opt_text),
        site=draw(opt_text), arrived_at_hospital=draw(opt_time), handover_at=draw(opt_time), clear_at=draw(opt_time),
        call_id=draw(opt_text), disposition_ambulance=draw(st.none() | st.booleans()),
        linked_incident_id=draw(opt_text),
    )


def example(name: str) -> dict[str, Any]:
    data = json.loads((EXAMPLES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def codes(result: Event | Rejection) -> set[str]:
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    return {str(r.code) for r in result.reasons}


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_every_example_is_valid_and_round_trips(event_type: str) -> None:
    record = example(event_type)
    event = parse_record(record, now_ms=EXAMPLE_NOW, trust="RX7")
    assert isinstance(event, Event), event
    assert event.event_type.value == event_type
    assert parse_record(to_record(event), now_ms=EXAMPLE_NOW, trust="RX7") == event
    # Every field of the example is carried into the event (nothing dropped on the way in).
    assert set(record) <= set(to_record(event))


def test_example_values_are_carried_exactly() -> None:
    e = parse_record(example("incident_created"), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    assert e.event_time == parse_time("2025-01-15T08:02:11.250Z")
    assert format_time(e.event_time) == "2025-01-15T08:02:11.250Z"
    assert e.location == Location("M13 9WL", 53.4668, -2.2339, 384707.0, 396912.0)
    assert e.source is Source.CALL_999 and e.category is Category.C2
    h = parse_record(example("handover"), now_ms=EXAMPLE_NOW)
    assert isinstance(h, Event) and h.handover_at is not None and h.arrived_at_hospital is not None
    assert h.handover_at - h.arrived_at_hospital == (27 * 60 + 27) * 1000


def test_invalid_examples_give_their_reasons() -> None:
    data = json.loads((EXAMPLES / "invalid.json").read_text())
    now = parse_time(data["now"])
    for case in data["cases"]:
        result = parse_record(case["record"], now_ms=now, trust=data["trust"])
        assert set(case["expect"]) <= codes(result), (case, result)


# ----------------------------------------------------------------------------- each rule


BASE = {"event_id": "0B6E3C1E-5D0A-4A43-9A43-1D3F0D8B2C11", "event_type": "response_arrived", "trust": "RX7",
        "incident_id": "INC-1", "event_time": "2025-12-31T23:00:00Z"}


def check(**changes: Any) -> Event | Rejection:
    record = {**BASE, **changes}
    return parse_record({k: v for k, v in record.items() if v is not ...}, now_ms=NOW, trust="RX7")


def test_base_record_is_valid_and_event_id_is_canonicalised() -> None:
    e = check()
    assert isinstance(e, Event)
    assert e.event_id == "0b6e3c1e-5d0a-4a43-9a43-1d3f0d8b2c11"
    assert e.key == "RX7:INC-1"


@pytest.mark.parametrize("field", ["event_id", "event_type", "trust", "incident_id", "event_time"])
@pytest.mark.parametrize("absent", [..., "", "   ", None])
def test_missing_common_field(field: str, absent: Any) -> None:
    result = check(**{field: absent})
    assert Code.MISSING_FIELD in codes(result)
    assert any(r.field == field for r in result.reasons)  # type: ignore[union-attr]


@pytest.mark.parametrize(("changes", "code"), [
    ({"event_id": "123"}, Code.MALFORMED_FIELD),
    ({"event_id": "0b6e3c1e5d0a4a439a431d3f0d8b2c11"}, Code.MALFORMED_FIELD),
    ({"event_type": "incident_deleted"}, Code.UNKNOWN_ENUM),
    ({"event_type": "INCIDENT_CREATED"}, Code.UNKNOWN_ENUM),
    ({"trust": "RX8"}, Code.WRONG_TRUST),
    ({"incident_id": "x" * 65}, Code.BAD_LENGTH),
    ({"event_time": "2025-12-31 23:00"}, Code.BAD_TIME),
    ({"event_time": "yesterday"}, Code.BAD_TIME),
    ({"event_time": 1767222000000}, Code.BAD_TIME),
    ({"event_time": "2026-01-02T00:00:00.001Z"}, Code.FUTURE_TIME),
    ({"event_time": "1999-12-31T23:59:59.999Z"}, Code.ANCIENT_TIME),
    ({"event_time": "0001-01-01T00:00:00Z"}, Code.ANCIENT_TIME),
    ({"event_time": "9999-12-31T23:59:59Z"}, Code.FUTURE_TIME),
    ({"event_type": "category_changed", "category": "C0"}, Code.UNKNOWN_ENUM),
    ({"event_type": "category_changed"}, Code.MISSING_FIELD),
    ({"event_type": "incident_created", "clock_start": "2025-12-31T22:59:00Z", "category": "C1"}, Code.MISSING_FIELD),
    ({"event_type": "incident_created", "clock_start": "2025-12-31T22:59:00Z", "category": "C1", "source": "112"},
     Code.UNKNOWN_ENUM),
    ({"event_type": "disposition", "disposition": "conveyed_ed"}, Code.CONVEYED_WITHOUT_DESTINATION),
    ({"event_type": "disposition", "disposition": "conveyed_elsewhere", "destination_site": ""},
     Code.CONVEYED_WITHOUT_DESTINATION),
    ({"event_type": "disposition", "disposition": "taken_by_taxi"}, Code.UNKNOWN_ENUM),
    ({"event_type": "disposition", "disposition": "see_and_treat", "destination_site": "R0A 07"}, Code.MALFORMED_FIELD),
    ({"event_type": "handover", "site": "R0A07"}, Code.MISSING_FIELD),
    ({"event_type": "handover", "site": "R0A07", "arrived_at_hospital": "2025-12-31T22:00:00Z",
      "handover_at": "2025-12-31T21:59:59.999Z"}, Code.HANDOVER_BEFORE_ARRIVAL),
    ({"event_type": "handover", "site": "R0A07", "arrived_at_hospital": "2025-12-31T22:00:00Z",
      "clear_at": "2025-12-31T21:00:00Z"}, Code.CLEAR_BEFORE_ARRIVAL),
    ({"event_type": "handover", "site": "R0A07", "arrived_at_hospital": "2025-12-31T22:00:00Z",
      "handover_at": "2026-01-03T00:00:00Z"}, Code.FUTURE_TIME),
    ({"event_type": "call_111", "call_id": "INC-2", "disposition_ambulance": "true"}, Code.CALL_ID_MISMATCH),
    ({"event_type": "call_111", "call_id": "INC-1", "disposition_ambulance": "yes"}, Code.MALFORMED_FIELD),
    ({"event_type": "call_111", "call_id": "INC-1"}, Code.MISSING_FIELD),
    ({"lat": "53.1"}, Code.INCOMPLETE_LOCATION),
    ({"easting": "1", "northing": ""}, Code.INCOMPLETE_LOCATION),
    ({"lat": "53.1", "lon": "200"}, Code.OUT_OF_RANGE),
    ({"lat": "-53.1", "lon": "-2"}, Code.OUT_OF_RANGE),
    ({"lat": "nan", "lon": "-2"}, Code.MALFORMED_FIELD),
    ({"lat": "inf", "lon": "-2"}, Code.MALFORMED_FIELD),
    ({"lat": "fifty", "lon": "-2"}, Code.MALFORMED_FIELD),
    ({"easting": "-1", "northing": "5"}, Code.OUT_OF_RANGE),
    ({"easting": "700000.1", "northing": "5"}, Code.OUT_OF_RANGE),
    ({"postcode": "x" * 17}, Code.BAD_LENGTH),
    ({"location": "M1 1AA"}, Code.MALFORMED_FIELD),
])
def test_rule(changes: dict[str, Any], code: Code) -> None:
    assert code in codes(check(**changes))


def test_unknown_trust_without_a_publishing_trust() -> None:
    result = parse_record({**BASE, "trust": "XYZ"}, now_ms=NOW)
    assert codes(result) == {Code.UNKNOWN_TRUST}
    assert isinstance(parse_record({**BASE, "trust": "RRU"}, now_ms=NOW), Event)


def test_every_problem_is_reported_at_once() -> None:
    result = check(event_type="handover", trust="RRU", event_time="2027-01-01T00:00:00Z",
                   arrived_at_hospital="2025-12-31T22:00:00Z", handover_at="2025-12-31T21:00:00Z",
                   lat="53", lon="99")
    assert {Code.WRONG_TRUST, Code.FUTURE_TIME, Code.MISSING_FIELD, Code.HANDOVER_BEFORE_ARRIVAL,
            Code.OUT_OF_RANGE} <= codes(result)
    assert isinstance(result, Rejection)
    assert result.event_id == "0b6e3c1e-5d0a-4a43-9a43-1d3f0d8b2c11" and result.incident_id == "INC-1"
    assert all(r.message for r in result.reasons)


def test_a_present_but_unreadable_field_is_reported_once_as_malformed() -> None:
    result = check(event_type="category_changed", category="C7")
    assert isinstance(result, Rejection)
    assert [r.code for r in result.reasons] == [Code.UNKNOWN_ENUM]


def test_json_types_and_avro_datetimes_are_accepted() -> None:
    e = parse_record({**BASE, "event_type": "call_111", "incident_id": 12345, "call_id": "12345",
                      "disposition_ambulance": True, "lat": 53, "lon": -2.5,
                      "event_time": datetime(2025, 12, 31, 23, 0, 0, 125000, tzinfo=UTC)}, now_ms=NOW)
    assert isinstance(e, Event)
    assert e.incident_id == "12345" and e.disposition_ambulance is True
    assert e.event_time == parse_time("2025-12-31T23:00:00.125Z")
    assert e.location == Location(None, 53.0, -2.5)
    naive = check(event_time=datetime(2025, 12, 31))
    assert Code.BAD_TIME in codes(naive)
    assert Code.UNKNOWN_ENUM in codes(check(event_type="category_changed", category=True))
    nested = parse_record({**BASE, "location": {"postcode": "M1 1AA"}}, now_ms=NOW)
    assert isinstance(nested, Event) and nested.location == Location("M1 1AA")


def test_csv_style_strings_with_empty_cells() -> None:
    row = {f: "" for f in INTERCHANGE_FIELDS} | {**BASE, "event_type": "call_111", "call_id": "INC-1",
                                                 "disposition_ambulance": "FALSE"}
    e = parse_record(row, now_ms=NOW, trust="RX7")
    assert isinstance(e, Event)
    assert e.disposition_ambulance is False and e.location is None and e.linked_incident_id is None


def test_postcode_is_kept_exactly_as_sent() -> None:
    e = check(postcode=" m1  1aa ")
    assert isinstance(e, Event) and e.location is not None and e.location.postcode == " m1  1aa "


def test_time_limits_are_relative_to_now() -> None:
    exactly = format_time(NOW + DAY_MS)
    assert isinstance(check(event_time=exactly), Event)
    assert Code.FUTURE_TIME in codes(check(event_time=format_time(NOW + DAY_MS + 1)))
    assert isinstance(check(event_time="2000-01-01T00:00:00Z"), Event)


def test_blank_incident_id_is_refused() -> None:
    assert Code.MISSING_FIELD in codes(check(incident_id="   "))


def test_unknown_fields_are_named() -> None:
    assert unknown_fields(["event_id", "colour", "produced_time", "Trust"]) == ["Trust", "colour"]


# ----------------------------------------------------------------------------- properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events())
def test_generated_valid_events_pass_and_round_trip_through_the_interchange_format(e: Event) -> None:
    assert check_event(e, now_ms=NOW) == []
    assert surely_valid(e, NOW, None)
    again = parse_record(to_record(e), now_ms=NOW, trust=e.trust)
    assert again == replace(e, produced_time=None)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(valid_events(), any_events()), st.sampled_from([None, "RX7"]))
def test_fast_check_agrees_with_the_full_rules(e: Event, trust: str | None) -> None:
    """The fast path must never wave through what the full rules reject, nor reject the valid."""
    full = check_event(e, now_ms=NOW, trust=trust)
    assert surely_valid(e, NOW, trust) == (full == []), full
    result = validate(e, now_ms=NOW, trust=trust)
    assert (result is e) == (full == [])


json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | \
    st.datetimes(timezones=st.none() | st.just(UTC))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*INTERCHANGE_FIELDS, "location", "schema_version", "produced_time", "x"]),
                       json_values | st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
def test_arbitrary_records_never_crash_the_parser(record: dict[str, Any]) -> None:
    result = parse_record(record, now_ms=NOW, trust="RX7")
    if isinstance(result, Rejection):
        assert result.reasons and all(isinstance(r.code, Code) and r.message for r in result.reasons)
    else:
        assert check_event(result, now_ms=NOW, trust="RX7") == []


@settings(max_examples=200)
@given(valid_events(trust="RX7"), st.sampled_from(["event_time", "clock_start", "arrived_at_hospital"]),
       st.integers(-(10**15), 10**15))
def test_absurd_times_are_rejected(e: Event, field: str, ms: int) -> None:
    assume(not MIN_TIME_MS <= ms <= NOW + DAY_MS)
    bad = replace(e, **{field: ms})  # type: ignore[arg-type]
    reasons = check_event(bad, now_ms=NOW, trust="RX7")
    assert any(r.code in (Code.FUTURE_TIME, Code.ANCIENT_TIME) and r.field == field for r in reasons)
