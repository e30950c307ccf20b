"""The dead-letter topic against the real broker: what the worker will do with a refused message
(decode_and_validate -> dead_letter), reading it back, `amb dlq show`, and replaying it unchanged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amb.cli import cli
from amb.codec import decode_and_validate, default_codec
from amb.dlq import H_REPLAYS, dead_letter, read_dead_letters, replay
from amb.topics import TopicSpec, ensure_topics
from domain.events import Event, EventType
from domain.validation import Rejection, parse_record

from .test_publish_roundtrip import consume_all

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 3})


def an_event(now: int, **changes: object) -> Event:
    e = parse_record(json.loads((EXAMPLES / "handover.json").read_text()), now_ms=now)
    assert isinstance(e, Event)
    return replace(e, event_id=str(uuid.uuid4()), **changes)  # type: ignore[arg-type]


def refuse_like_the_worker(prod: Producer, source: str, dlq: str, values: list[bytes], now: int) -> list[Rejection]:
    """What the stream worker will do: decode+validate each message, dead-letter the refused ones."""
    refused = []
    for offset, value in enumerate(values):
        result = decode_and_validate(value, now, trust="RX7")
        if isinstance(result, Rejection):
            refused.append(result)
            dead_letter(prod, value, f"k{offset}".encode(), result, source, offset % 4, offset,
                        [("traceparent", b"00-abc-01")], dlq_topic=dlq)
    assert prod.flush(30) == 0
    return refused


@pytest.mark.kafka
def test_refused_messages_keep_their_bytes_and_say_why(
    kafka_bootstrap: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    source, dlq = new_topic(), new_topic()
    now = int(time.time() * 1000)
    codec = default_codec()
    good = codec.encode(an_event(now), now)
    values = [good, b"", b"junk", good[:30], codec.encode(an_event(now, trust="RRU"), now),
              codec.encode(an_event(now, handover_at=1), now)]
    refused = refuse_like_the_worker(producer(kafka_bootstrap), source, dlq, values, now)
    assert [r.code for r in refused] == ["empty_message", "bad_magic", "undecodable", "wrong_trust", "ancient_time"]

    letters = list(read_dead_letters(kafka_bootstrap, dlq))
    assert len(letters) == 5
    by_offset = {letter.source_offset: letter for letter in letters}
    for offset in range(1, 6):
        letter = by_offset[offset]
        assert (letter.value or b"") == values[offset]
        assert letter.key == f"k{offset}".encode()
        assert letter.source_topic == source and letter.source_partition == offset % 4
        assert letter.headers == [("traceparent", b"00-abc-01")]
        assert letter.message and letter.time.endswith("Z") and letter.replays == 0
    assert by_offset[4].reason == "wrong_trust" and by_offset[4].reasons == ("wrong_trust",)
    assert [x.source_offset for x in read_dead_letters(kafka_bootstrap, dlq, reason="undecodable")] == [3]
    assert list(read_dead_letters(kafka_bootstrap, dlq, reason="no_such_reason")) == []

    # Replay the wrong-trust one: same bytes, same key, its own headers, replay count 1.
    report = replay(kafka_bootstrap, dlq, reason="wrong_trust")
    assert report.total == 1 and report.replayed == {source: 1} and report.failed == 0
    [msg] = consume_all(kafka_bootstrap, source, 1, new_group(), timeout=30)
    assert msg.value() == values[4] and msg.key() == b"k4"
    assert msg.headers() == [("traceparent", b"00-abc-01"), (H_REPLAYS, b"1")]

    # It fails again on the way in: it comes back with its replay count.
    again = decode_and_validate(msg.value(), now, trust="RX7")
    assert isinstance(again, Rejection)
    p = producer(kafka_bootstrap)
    dead_letter(p, msg.value(), msg.key(), again, source, msg.partition(), msg.offset(), msg.headers(), dlq_topic=dlq)
    assert p.flush(30) == 0
    replays = [x.replays for x in read_dead_letters(kafka_bootstrap, dlq, reason="wrong_trust")]
    assert sorted(replays) == [0, 1]


@pytest.mark.kafka
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=200), min_size=50, max_size=50))
def test_nothing_refused_is_lost(kafka_bootstrap: str, new_topic: Callable[..., str], garbage: list[bytes]) -> None:
    """Hypothesis-made garbage: every message is either an event or a dead letter, none vanish."""
    source, dlq = new_topic(), new_topic()
    now = int(time.time() * 1000)
    refused = refuse_like_the_worker(producer(kafka_bootstrap), source, dlq, garbage, now)
    assert len(refused) == sum(not isinstance(decode_and_validate(v, now), Event) for v in garbage)
    assert len(list(read_dead_letters(kafka_bootstrap, dlq))) == len(refused)


@pytest.fixture
def prefixed(kafka_bootstrap: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A private topic prefix with its dlq and RX7 events topics, and the env that selects it."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topics = [f"{prefix}.dlq", f"{prefix}.events.RX7"]
    ensure_topics(kafka_bootstrap, [TopicSpec(t, 2, "test") for t in topics])
    yield prefix, {"AMB_BOOTSTRAP_SERVERS": kafka_bootstrap, "AMB_TOPIC_PREFIX": prefix}
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(topics)


@pytest.mark.kafka
def test_dlq_commands(prefixed: tuple[str, dict[str, str]], kafka_bootstrap: str) -> None:
    prefix, env = prefixed
    source = f"{prefix}.events.RX7"
    now = int(time.time() * 1000)
    codec = default_codec()
    p = producer(kafka_bootstrap)
    future = codec.encode(an_event(now, event_time=now + 5 * 86_400_000), now)
    # No dlq_topic: derived from the events topic name (<prefix>.events.RX7 -> <prefix>.dlq).
    for i, value in enumerate([b"\xc3\x01" + b"\x00" * 12, future, future]):
        dead_letter(p, value, b"RX7:X", decode_and_validate(value, now, trust="RX7"), source, 0, i)  # type: ignore[arg-type]
    assert p.flush(30) == 0

    runner = CliRunner()
    shown = runner.invoke(cli, ["dlq", "show", "--limit", "1"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"{prefix}.dlq: 3 dead letters (showing 1): future_time 2, unknown_schema 1" in shown.output
    only = runner.invoke(cli, ["dlq", "show", "--reason", "future_time", "--json"], env=env)
    rows = [json.loads(line) for line in only.output.splitlines()]
    assert [r["reason"] for r in rows] == ["future_time", "future_time"]
    assert bytes.fromhex(rows[0]["value_hex"]) == future
    text = runner.invoke(cli, ["dlq", "show", "--reason", "future_time"], env=env).output
    assert f"{EventType.HANDOVER.value} " in text and "more than 1 day in the future" in text

    dry = runner.invoke(cli, ["dlq", "replay", "--reason", "future_time", "--dry-run"], env=env)
    assert dry.exit_code == 0 and f"would replay 2 dead letters with reason future_time from {prefix}.dlq: {source} 2" in dry.output
    done = runner.invoke(cli, ["dlq", "replay", "--reason", "future_time"], env=env)
    assert done.exit_code == 0 and f"replayed 2 dead letters with reason future_time from {prefix}.dlq: {source} 2" in done.output
    values = [m.value() for m in consume_all(kafka_bootstrap, source, 2, f"g-{uuid.uuid4().hex}", timeout=30)]
    assert values == [future, future]

    empty = runner.invoke(cli, ["dlq", "show", "--reason", "wrong_trust"], env=env)
    assert empty.exit_code == 0 and "no dead letters with reason wrong_trust" in empty.output
    assert "Example" in runner.invoke(cli, ["dlq", "show", "--help"]).output
    assert "Example" in runner.invoke(cli, ["dlq", "replay", "--help"]).output
