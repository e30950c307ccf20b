"""Publishing through the real broker: every event type in both wire formats comes back equal, and
`amb publish` of a 100,000-row CSV with 1% bad rows delivers exactly the 99,000 good ones.

The Confluent wire format is exercised with confluent_kafka's MockSchemaRegistryClient (a
``mock://`` registry URL): there is no Schema Registry server here. The serializer, the framing
(magic 0 + 4-byte schema id) and the deserializer are the real confluent_kafka ones.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from amb.codec import Codec, default_codec
from amb.config import Settings
from amb.publisher import TrustPublisher
from amb.topics import TopicSpec, ensure_topics
from domain.events import Event, EventType, format_time
from domain.validation import INTERCHANGE_FIELDS, parse_record, to_record

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"


def consume_all(bootstrap: str, topic: str, expected: int, group: str, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic`` (waits until ``expected`` arrived, then a little longer for extras)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "log_level": 3})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            for msg in batch:
                assert msg.error() is None, msg.error()
                out.append(msg)
            if len(out) >= expected:
                quiet_until = quiet_until or time.monotonic() + 2.0  # anything beyond expected would be a bug
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return out


def examples(now: int) -> list[Event]:
    import json

    out = []
    for t in EventType:
        e = parse_record(json.loads((EXAMPLES / f"{t.value}.json").read_text()), now_ms=now)
        assert isinstance(e, Event)
        out.append(e)
    return out


def variants(events: list[Event], n: int) -> list[Event]:
    """``n`` copies of each event with fresh ids and incidents spread over keys."""
    out = []
    for i in range(n):
        for e in events:
            inc = f"{e.incident_id}-{i}"
            out.append(replace(e, event_id=str(uuid.uuid4()), incident_id=inc,
                               call_id=inc if e.call_id is not None else None))
    return out


@pytest.mark.kafka
@pytest.mark.parametrize("wire", ["single", "confluent"])
def test_every_event_type_round_trips_through_the_broker(
    wire: str, stack_settings: Settings, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    topic = new_topic(partitions=4)
    now = int(time.time() * 1000)
    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"}) if wire == "confluent" else None
    codec = Codec(wire, registry)  # type: ignore[arg-type]
    events = variants(examples(now), 20)
    with TrustPublisher(stack_settings, "RX7", topic=topic, codec=codec) as pub:
        assert pub.publish_events(events) == len(events)
    assert pub.stats.delivered == len(events) and pub.stats.failed == 0 and pub.stats.rejected == 0

    messages = consume_all(stack_settings.bootstrap, topic, len(events), new_group())
    assert len(messages) == len(events)
    frame = b"\x00" if wire == "confluent" else codec.header
    assert all(m.value().startswith(frame) for m in messages)
    back = {}
    for m in messages:
        e = codec.decode_and_validate(m.value(), int(time.time() * 1000), topic, trust="RX7")
        assert isinstance(e, Event), e
        assert m.key() == e.key.encode()
        assert e.produced_time is not None and now <= e.produced_time <= int(time.time() * 1000)
        back[e.event_id] = e
    assert {e.event_id: replace(e, produced_time=back[e.event_id].produced_time) for e in events} == back
    assert {e.event_type for e in back.values()} == set(EventType)
    # one incident, one partition (the key is trust:incident)
    parts: dict[bytes, set[int]] = {}
    for m in messages:
        parts.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in parts.values())


def build_csv(path: Path, n: int, bad_every: int, now: int) -> tuple[set[str], dict[int, str]]:
    """``n`` data rows; every ``bad_every``-th is broken in one of several ways. Returns the event ids
    of the good rows and {line number: expected reason code} of the bad ones."""
    base = [to_record(e) for e in examples(now)]
    breakers: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("bad_time", lambda r: r.update(event_time="2025-13-45T99:00:00Z")),
        ("wrong_trust", lambda r: r.update(trust="RRU")),
        ("missing_field", lambda r: r.update(incident_id="")),
        ("unknown_enum", lambda r: r.update(event_type="incident_reopened")),
        ("future_time", lambda r: r.update(event_time=format_time(now + 3 * 86_400_000))),
        ("malformed_field", lambda r: r.update(event_id="not-a-uuid")),
    ]
    good: set[str] = set()
    bad: dict[int, str] = {}
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, INTERCHANGE_FIELDS)
        w.writeheader()
        for i in range(n):
            r = dict(base[i % len(base)])
            r["event_id"] = str(uuid.UUID(int=i + 1, version=4))
            r["incident_id"] = f"INC-{i:07d}"
            if r["event_type"] == "call_111":
                r["call_id"] = r["incident_id"]
            line = i + 2
            if (i + 1) % bad_every == 0:
                code, breaker = breakers[(i // bad_every) % len(breakers)]
                breaker(r)
                bad[line] = code
            else:
                good.add(str(r["event_id"]))
            w.writerow({k: ("true" if v is True else "false" if v is False else v) for k, v in r.items()})
    return good, bad


@pytest.mark.kafka
@pytest.mark.slow
def test_100k_row_csv_with_1pct_bad_rows(
    tmp_path: Path, kafka_bootstrap: str, new_group: Callable[[], str]
) -> None:
    """The acceptance run: `amb publish` as a user runs it, then count what reached the broker."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topic = f"{prefix}.events.RX7"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 4, "test")])
    try:
        now = int(time.time() * 1000)
        good, bad = build_csv(tmp_path / "export.csv", 100_000, 100, now)
        assert len(good) == 99_000 and len(bad) == 1_000
        from amb import columnar

        if columnar.load_native() is not None:  # then this run takes the columnar fast path
            assert not isinstance(columnar.read_csv((tmp_path / "export.csv").read_bytes()), tuple)
        env = {**os.environ, "AMB_BOOTSTRAP_SERVERS": kafka_bootstrap, "AMB_TOPIC_PREFIX": prefix,
               "AMB_SCHEMA_REGISTRY_URL": ""}
        proc = subprocess.run(
            [sys.executable, "-m", "amb.cli", "publish", "--trust", "RX7", str(tmp_path / "export.csv"),
             "--rejects", str(tmp_path / "rejects.csv")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "99,000 of 100,000 records published to " + topic in proc.stdout
        assert "delivered 99,000, delivery failed 0" in proc.stdout
        assert "rejected 1,000 records" in proc.stdout
        assert "1,000 rejected of 100,000 records" in proc.stderr
        for code in set(bad.values()):
            assert code in proc.stdout

        with (tmp_path / "rejects.csv").open() as f:
            rejects = {int(r["line"]): r["code"] for r in csv.DictReader(f)}
        assert rejects == bad

        messages = consume_all(kafka_bootstrap, topic, len(good), new_group(), timeout=120)
        codec = default_codec()
        ids = []
        check_now = int(time.time() * 1000)
        for m in messages:
            e = codec.decode_and_validate(m.value(), check_now, trust="RX7")
            assert isinstance(e, Event), e
            ids.append(e.event_id)
        assert len(ids) == len(good), "duplicates or losses on the way"
        assert set(ids) == good
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([topic])


@pytest.mark.kafka
def test_publisher_counts_failed_deliveries_instead_of_losing_them(stack_settings: Settings) -> None:
    """A topic the broker refuses (an invalid name) fails every delivery: counted, not dropped."""
    topic = f"not a topic {uuid.uuid4().hex[:6]}!"
    events = variants(examples(int(time.time() * 1000)), 2)
    pub = TrustPublisher(stack_settings, "RX7", topic=topic, producer_config={"log_level": 0})
    pub.publish_events(events)
    pub.close(timeout=30)
    assert pub.stats.sent == len(events)
    assert pub.stats.failed == len(events) and pub.stats.delivered == 0
    assert sum(pub.stats.failures.values()) == len(events)
    assert any("Invalid topic" in err for err in pub.stats.failures)

