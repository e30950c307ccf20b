"""amb.codec: Avro single-object and Confluent framing, the generated encoder/decoder, and the
decode+validate function the stream worker calls on every message (which must never crash)."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import EXAMPLE_NOW, NOW, any_events, example, valid_events

from amb import config
from amb.codec import (
    SINGLE_OBJECT_MAGIC,
    Codec,
    DecodeError,
    crc64_avro,
    decode_and_validate,
    default_codec,
    event_from_avro,
    event_to_avro,
    fingerprint,
    load_schema,
    strip_logical_types,
)
from domain.events import Event, EventType
from domain.validation import Code, Rejection, parse_record

CODEC = default_codec()
PARSED = fastavro.parse_schema(load_schema())  # the real schema: uuid and timestamp-millis logical types
STRIPPED = fastavro.parse_schema(strip_logical_types(load_schema()))


def stamped(e: Event, now: int = NOW) -> Event:
    return e if e.produced_time is not None else replace(e, produced_time=now)


def fastavro_bytes(e: Event, now: int = NOW, schema: Any = STRIPPED) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, event_to_avro(e, now))
    return buf.getvalue()


def registry() -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": "mock://amb-tests"})


# ----------------------------------------------------------------------------- framing


def test_crc64_avro_matches_fastavro_and_the_header_is_the_spec_one() -> None:
    schema = load_schema()
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    assert fingerprint(schema).hex() == fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    assert crc64_avro(b"") == 0xC15D213AA4D7A795  # the empty fingerprint of the spec
    assert fingerprint(strip_logical_types(schema)) == fingerprint(schema)  # logical types do not change it
    assert CODEC.header == b"\xc3\x01" + fingerprint(schema)
    value = CODEC.encode(parse_record(example("disposition"), now_ms=EXAMPLE_NOW), NOW)  # type: ignore[arg-type]
    assert value[:2] == SINGLE_OBJECT_MAGIC and value[2:10] == struct.pack("<Q", crc64_avro(canonical.encode()))


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_every_example_round_trips_and_matches_fastavro(event_type: str) -> None:
    event = parse_record(example(event_type), now_ms=EXAMPLE_NOW, trust="RX7")
    assert isinstance(event, Event)
    value = CODEC.encode(event, EXAMPLE_NOW)
    assert value[10:] == fastavro_bytes(event, EXAMPLE_NOW)
    assert value[10:] == fastavro_bytes(event, EXAMPLE_NOW, schema=PARSED)
    assert CODEC.decode(value) == stamped(event, EXAMPLE_NOW)
    assert decode_and_validate(value, EXAMPLE_NOW) == stamped(event, EXAMPLE_NOW)
    # A plain fastavro reader with the published schema reads what we wrote.
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), PARSED, None)
    assert event_from_avro(record) == stamped(event, EXAMPLE_NOW)  # type: ignore[arg-type]


def test_produced_time_is_kept_when_set_and_stamped_when_not() -> None:
    e = parse_record(example("response_arrived"), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    assert CODEC.decode(CODEC.encode(e, 111)).produced_time == 111
    assert CODEC.decode(CODEC.encode(replace(e, produced_time=222), 111)).produced_time == 222
    assert [CODEC.decode(v).produced_time for v in CODEC.encode_batch([e, e], 333)] == [333, 333]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(valid_events(), any_events()))
def test_generated_encoder_is_byte_identical_to_fastavro(e: Event) -> None:
    value = CODEC.encode(e, NOW)
    assert value[10:] == fastavro_bytes(e)
    assert CODEC.decode(value) == stamped(e)
    # and fastavro's reader agrees with the generated decoder on every shape
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), STRIPPED, None)
    assert event_from_avro(record) == stamped(e)  # type: ignore[arg-type]


def test_nan_and_extreme_numbers_survive() -> None:
    from domain.events import Location

    e = Event("x", EventType.INCIDENT_CREATED, "RX7", "i", -(2**63), produced_time=2**63 - 1,
              location=Location(lat=float("nan"), lon=float("inf"), easting=-0.0, northing=1e308))
    back = CODEC.decode(CODEC.encode(e, 0))
    assert back.event_time == -(2**63) and back.produced_time == 2**63 - 1
    assert back.location is not None and back.location.lat != back.location.lat and back.location.lon == float("inf")
    with pytest.raises(OverflowError):
        CODEC.encode(replace(e, event_time=2**63), 0)


# ----------------------------------------------------------------------------- malformed input


def good_value() -> bytes:
    e = parse_record(example("handover"), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    return CODEC.encode(e, EXAMPLE_NOW)


def reason(value: bytes | None, now: int = EXAMPLE_NOW) -> Code:
    result = decode_and_validate(value, now)
    assert isinstance(result, Rejection), result
    return result.code


def test_specific_wire_failures_have_specific_reasons() -> None:
    v = good_value()
    assert reason(b"") == Code.EMPTY_MESSAGE
    assert reason(None) == Code.EMPTY_MESSAGE
    assert reason(b"{\"event_id\": 1}") == Code.BAD_MAGIC
    assert reason(v[:2] + b"\x00" * 8 + v[10:]) == Code.UNKNOWN_SCHEMA
    assert reason(v[:7]) == Code.UNDECODABLE
    assert reason(v[:-1]) == Code.UNDECODABLE
    assert reason(v + b"\x00") == Code.TRAILING_BYTES
    assert reason(b"\x00\x00\x00\x00\x01" + v[10:]) == Code.NO_REGISTRY
    # event_type index 0 is the schema's "unknown" default: a newer writer's type this reader lacks
    body = bytearray(v[10:])
    assert body[37] == 5 * 2  # after the 36-char uuid and its length byte: handover is symbol 5
    body[37] = 0
    assert reason(v[:10] + bytes(body)) == Code.UNKNOWN_ENUM
    body[37] = 50  # index 25: beyond the symbols
    assert reason(v[:10] + bytes(body)) == Code.UNDECODABLE
    # a valid encoding of an invalid event is a validation reason, not a decoding one
    e = replace(CODEC.decode(v), handover_at=0)
    assert reason(CODEC.encode(e, EXAMPLE_NOW)) == Code.ANCIENT_TIME


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_truncated_and_corrupted_messages_always_yield_a_reason(data: st.DataObject) -> None:
    e = data.draw(valid_events(now=NOW))
    v = CODEC.encode(e, NOW)
    cut = data.draw(st.integers(0, len(v) - 1))
    assert isinstance(decode_and_validate(v[:cut], NOW), Rejection)
    i = data.draw(st.integers(0, len(v) - 1))
    flipped = bytearray(v)
    flipped[i] ^= data.draw(st.integers(1, 255))
    result = decode_and_validate(bytes(flipped), NOW)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reasons and all(isinstance(r.code, Code) for r in result.reasons)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([b"", SINGLE_OBJECT_MAGIC, CODEC.header, b"\x00\x00\x00\x00\x01"]))
def test_random_bytes_never_crash_the_decoder(tail: bytes, head: bytes) -> None:
    result = decode_and_validate(head + tail, NOW)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert isinstance(result.code, Code) and result.message


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(any_events())
def test_well_formed_bytes_of_any_event_decode_then_validate(e: Event) -> None:
    """Absurd times, bad ids, wrong combinations: decoding succeeds, validation gives reasons."""
    result = decode_and_validate(CODEC.encode(e, NOW), NOW)
    if isinstance(result, Event):
        assert result == stamped(e)
    else:
        assert result.reasons


def test_decode_error_is_the_only_exception() -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(b"\xc3\x01" + b"\xff" * 30)
    assert info.value.reason.code in (Code.UNKNOWN_SCHEMA, Code.UNDECODABLE)


def test_batch_decode_keeps_order_and_mixes_results() -> None:
    v = good_value()
    out = CODEC.decode_batch([v, b"junk", v[:20], v], EXAMPLE_NOW)
    assert [type(x).__name__ for x in out] == ["Event", "Rejection", "Rejection", "Event"]
    assert CODEC.decode_batch([v], EXAMPLE_NOW, trust="RRU")[0].code == Code.WRONG_TRUST  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- schema evolution through the codec


def test_an_older_writer_is_read_through_schema_resolution() -> None:
    """A reader with a newer schema (a field added with a default) reads v1 single-object messages
    by their fingerprint, and new messages carry the new fingerprint."""
    newer = json.loads(json.dumps(load_schema()))
    newer["fields"].append({"name": "crew_count", "type": ["null", "int"], "default": None})
    reader = Codec("single", schema=newer)
    assert reader.header != CODEC.header
    e = parse_record(example("incident_created"), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    old_value = CODEC.encode(e, NOW)
    assert reader.decode(old_value) == stamped(e)
    assert reader.decode(reader.encode(e, NOW)) == stamped(e)
    # The old reader does not know the new fingerprint: that is a reason, to be replayed after upgrade.
    assert reason(reader.encode(e, NOW)) == Code.UNKNOWN_SCHEMA


# ----------------------------------------------------------------------------- Confluent wire format


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_confluent_framing_with_a_mock_registry(event_type: str) -> None:
    """Without a registry server here, the Confluent path runs against confluent_kafka's own
    MockSchemaRegistryClient (``mock://`` URL): real AvroSerializer/AvroDeserializer framing."""
    reg = registry()
    codec = Codec("confluent", reg)
    topic = "amb.events.RX7"
    e = parse_record(example(event_type), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    value = codec.encode(e, NOW, topic)
    schema_id = reg.get_latest_version(f"{topic}-value").schema_id
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == schema_id
    assert value[5:] == CODEC.encode(e, NOW)[10:]  # same Avro body, different frame
    assert codec.decode(value, topic) == stamped(e)
    # a single-object codec that knows the registry reads Confluent frames too, and vice versa
    assert Codec("single", reg).decode(value, topic) == stamped(e)
    assert codec.decode(CODEC.encode(e, NOW)) == stamped(e)
    assert codec.decode_and_validate(value, NOW, topic, trust="RX7") == stamped(e)


def test_codec_from_settings_follows_the_registry_url() -> None:
    assert Codec.from_settings(config.load({})).wire == "single"
    codec = Codec.from_settings(config.load({"AMB_SCHEMA_REGISTRY_URL": "mock://from-settings"}))
    assert codec.wire == "confluent"
    e = parse_record(example("category_changed"), now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    assert codec.decode(codec.encode(e, NOW, "t"), "t") == stamped(e)


def test_confluent_frame_with_an_unknown_schema_id_is_a_reason() -> None:
    codec = Codec("confluent", registry())
    result = codec.decode_and_validate(b"\x00\x00\x00\x03\xe7" + good_value()[10:], NOW, "t")
    assert isinstance(result, Rejection) and result.code == Code.UNKNOWN_SCHEMA


def test_an_unreachable_registry_is_an_outage_not_a_dead_letter() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from amb.codec import RegistryUnavailable

    down = SchemaRegistryClient({"url": "http://127.0.0.1:9", "max.retries": 0, "timeout": 2})
    codec = Codec("single", down)
    with pytest.raises(RegistryUnavailable):
        codec.decode_and_validate(b"\x00\x00\x00\x00\x07" + good_value()[10:], NOW, "t")
    e = CODEC.decode(good_value())
    with pytest.raises(RegistryUnavailable):
        Codec("confluent", down).encode(e, NOW, "t")
