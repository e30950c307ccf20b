"""The sink's archivers on the real broker (sinks.raw): every trust's events topic -> raw_events (each
accepted event id once, refused ones left to the DLQ), the DLQ topic -> dead_letters (every dead
letter with its reasons), offsets committed after the insert, and a restart that re-reads from the
last commit (a crash between insert and commit) adds nothing."""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_archive import DAY, TRUSTS  # noqa: E402

from amb import config  # noqa: E402
from amb.codec import default_codec  # noqa: E402
from amb.config import Settings  # noqa: E402
from amb.dlq import dead_letter  # noqa: E402
from amb.simulate_io import load_pool  # noqa: E402
from amb.topics import dlq_topic, ensure_topics, events_topic, project_topics  # noqa: E402
from domain.simulate import Mess, SimConfig, clean_events  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks.raw import TopicArchiver, dead_letter_archiver, raw_archiver  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402


@pytest.fixture
def world(stack_settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, ChdbStore]]:
    s = dataclasses.replace(stack_settings, topic_prefix=f"r{uuid.uuid4().hex[:10]}", data_dir=tmp_path,
                            geo_dir=config.load().geo_index_dir)
    ensure_topics(s.bootstrap, project_topics(s))
    store = ChdbStore(tmp_path / "chdb")
    mig.migrate(store)
    yield s, store
    store.close()


def drain(archivers: list[TopicArchiver], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sum(a.step() for a in archivers)
        if not got and all(a.caught_up() for a in archivers):
            return
    raise AssertionError("the archivers did not catch up")


@pytest.mark.kafka
def test_sink_archivers_keep_every_accepted_event_once_and_every_dead_letter(
        world: tuple[Settings, ChdbStore]) -> None:
    s, store = world
    cfg = SimConfig(start=DAY, days=1, trusts=TRUSTS, seed=5, scale=0.02, mess=Mess(dup=0.1, late=0.05))
    events = list(clean_events(cfg, load_pool(config.load(), "sample")))
    codec = default_codec()
    p = Producer({"bootstrap.servers": s.bootstrap, "log_level": 0})
    now = int(time.time() * 1000)
    for e in events:
        topic = events_topic(s, e.trust)
        p.produce(topic, codec.encode(e, now, topic), e.key.encode())
    # poison: not Avro, and an event under another trust's key; the worker dead-letters them
    p.produce(events_topic(s, "RX6"), b'{"not": "avro"}', b"RX6:x")
    p.produce(events_topic(s, "RX6"), codec.encode(events[0], now, events_topic(s, "RX6")), b"RX6:wrong-key")
    for i in range(3):
        dead_letter(p, b"\x00junk", f"RX6:{i}".encode(), ("bad_magic", "not Avro"), events_topic(s, "RX6"), 0, i,
                    None, dlq_topic=dlq_topic(s))
    p.flush(30)

    raw, dead = raw_archiver(s, store, batch_size=150), dead_letter_archiver(s, store)
    drain([raw, dead])
    distinct = {e.event_id for e in events}
    assert store.query("SELECT count(), uniqExact(event_id) FROM raw_events FINAL").rows[0] == (
        len(distinct), len(distinct))
    assert raw.stats.refused == 2 and raw.stats.batches > 1
    rows = store.query("SELECT trust, reason, reasons, source_offset FROM dead_letters FINAL ORDER BY dlq_offset").rows
    assert rows == [("RX6", "bad_magic", "bad_magic", i) for i in range(3)]
    raw.close()
    dead.close()

    # A restart of the group re-reads nothing already committed; a new group (a replay from the
    # start, as after a crash before the commit) re-inserts, and FINAL still holds each event once.
    again = raw_archiver(s, store)
    drain([again])
    assert again.stats.rows == 0
    again.close()
    replay = raw_archiver(s, store, group=f"replay-{uuid.uuid4().hex[:8]}")
    drain([replay])
    assert replay.stats.rows == len(events)
    assert store.query("SELECT count() FROM raw_events FINAL").scalar() == len(distinct)
    replay.close()
