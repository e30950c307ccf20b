"""The sink (sinks/sink.py): fact messages in, the store's tables equal to the oracle, undecodable
messages in the DLQ, and a full replay (a new consumer group from the start) changes nothing."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from strategies import FAKE_ATTRIBUTOR, FAKE_HIERARCHY  # noqa: E402
from test_oracle import EXAMPLE  # noqa: E402

from amb.dlq import H_REASON  # noqa: E402
from domain.facts import build_facts  # noqa: E402
from domain.incident import apply_any, state_key  # noqa: E402
from domain.oracle import compute  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks import queries  # noqa: E402
from sinks.sink import FactSink, consumer_config, held_message, load_batch  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402
from streams import fact_codec  # noqa: E402


def fact_messages(events: list[Any]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every fact message the worker sends while these events arrive."""
    states: dict[Any, Any] = {}
    out = []
    for e in events:
        k = state_key(e)
        old = states.get(k)
        new = apply_any(old, e)
        if new is old:
            continue
        states[k] = new
        f = build_facts([new], FAKE_ATTRIBUTOR, FAKE_HIERARCHY)
        if f.calls:
            value = fact_codec.encode_call(f.calls[0])
        else:
            value = fact_codec.encode_incident(f.incidents[0], f.handovers[0] if f.handovers else None)
        out.append((f"{e.trust}:{e.incident_id}".encode(), value))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path / "chdb")
    mig.migrate(s)
    yield s
    s.close()


def tables(store: ChdbStore) -> dict[str, list[Any]]:
    return {f"{m}/{lvl}/{by}": queries.run(store, queries.Query(m, lvl, by))
            for m in queries.METRICS for lvl in ("england", "icb", "lsoa") for by in ("hour", "day", "fy")}


def expected() -> dict[str, list[Any]]:
    report = compute(EXAMPLE, FAKE_ATTRIBUTOR, FAKE_HIERARCHY)
    return {f"{m}/{lvl}/{by}": report.table(m, lvl, by)
            for m in queries.METRICS for lvl in ("england", "icb", "lsoa") for by in ("hour", "day", "fy")}


def test_load_batch_loads_every_partition_at_once_and_sets_bad_messages_aside(store: ChdbStore) -> None:
    msgs = fact_messages(EXAMPLE)
    fake = [held_message("facts", i % 2, 100 + i, k, v) for i, (k, v) in enumerate(msgs)]
    fake.append(held_message("facts", 0, 999, b"k", b"not json"))
    dead: list[str] = []
    out = load_batch(store, fake, lambda m, reason: dead.append(reason))
    assert len(dead) == 1 and "not an incident-facts message" in dead[0]
    last_odd = max(i for i in range(len(msgs)) if i % 2 == 1)
    assert out.offsets == {("facts", 0): 1000, ("facts", 1): 100 + last_odd + 1}  # next offset to read
    assert tables(store) == expected()
    again = load_batch(store, fake, lambda m, reason: None)  # a replay: nothing newer
    assert sum(r.applied for r in again.results.values()) == 0
    assert tables(store) == expected()
    assert store.query("SELECT count() FROM call_facts FINAL").scalar() == 2


@pytest.mark.kafka
def test_the_sink_loads_from_kafka_once_and_a_full_replay_changes_nothing(
    store: ChdbStore, kafka_bootstrap: str, new_topic: Callable[..., str], new_group: Callable[[], str],
) -> None:
    topic, dlq = new_topic(3), new_topic(1)
    msgs = fact_messages(EXAMPLE)
    rnd = random.Random(5)
    resent = msgs + rnd.sample(msgs, len(msgs) // 2)  # the worker re-sends current versions
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    for k, v in resent:
        producer.produce(topic, v, k)
    producer.produce(topic, b"\x00garbage", b"RX6:INC-X")
    assert producer.flush(30) == 0

    def run(group: str) -> Any:
        consumer = Consumer(consumer_config(kafka_bootstrap, group))
        consumer.subscribe([topic])
        try:
            return FactSink(store, consumer, producer, dlq, batch_size=5, batch_seconds=0.5).run(idle_timeout=5)
        finally:
            consumer.close()

    first = run(new_group())
    assert first.messages == len(resent) + 1 and first.dead == 1
    assert tables(store) == expected()
    replay = run(new_group())
    assert replay.applied == 0 and replay.messages == first.messages
    assert tables(store) == expected()

    reader = Consumer(consumer_config(kafka_bootstrap, new_group()))
    reader.subscribe([dlq])
    got: list[Any] = []
    for _ in range(60):
        got += [m for m in reader.consume(10, timeout=0.5) if m.error() is None]
        if len(got) >= 2:
            break
    reader.close()
    assert len(got) == 2  # once per run: the DLQ keeps what each run refused
    assert dict(got[0].headers())[H_REASON] == b"undecodable" and got[0].value() == b"\x00garbage"


# --- kill -9 of `amb sink` mid-batch ------------------------------------------------------------------


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Messages the sink group has committed on ``topic`` (sum over partitions)."""
    from confluent_kafka import KafkaException, TopicPartition

    c = Consumer(consumer_config(bootstrap, group))  # never subscribes: only reads the group's offsets
    try:
        for _ in range(60):  # the group's coordinator may still be loading (NOT_COORDINATOR)
            try:
                got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
                return sum(max(tp.offset, 0) for tp in got)
            except KafkaException:
                time.sleep(0.5)
        raise AssertionError(f"could not read the committed offsets of {group}")
    finally:
        c.close()


@pytest.mark.kafka
def test_kill_9_mid_batch_then_a_restart_cut_differently_and_a_full_replay_equal_the_oracle(
    stack_settings: Any, tmp_path: Path,
) -> None:
    """`amb sink` as a subprocess, SIGKILLed while it loads (most of its time is inside a load: a
    batch is 5 store statements per kind), restarted with another batch size (so the replayed
    batches are cut differently), then a full replay from offset 0 under a new group: every table
    equals the batch oracle. The test process reads the store only once the sink has exited."""
    import dataclasses
    import os
    import signal
    import subprocess
    import uuid

    from amb.config import to_environ
    from amb.topics import ensure_topics, incident_facts_topic, project_topics

    s = dataclasses.replace(stack_settings, topic_prefix=f"k{uuid.uuid4().hex[:10]}", data_dir=tmp_path)
    ensure_topics(s.bootstrap, project_topics(s))
    topic = incident_facts_topic(s)
    msgs = fact_messages(EXAMPLE)
    rnd = random.Random(9)
    resent = msgs + rnd.sample(msgs, len(msgs) // 2)  # the worker re-sends after its own restarts
    producer = Producer({"bootstrap.servers": s.bootstrap, "log_level": 0})
    for k, v in resent:
        producer.produce(topic, v, k)
    assert producer.flush(30) == 0
    parts = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    assert parts > 1
    amb = ("from amb import cli; from amb.commands import sink; "
           "cli.cli.commands.get('sink') or cli.cli.add_command(sink.command); cli.main()")
    group = f"{s.topic_prefix}-sink"

    def sink(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"sink-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen([sys.executable, "-c", amb, "sink", "--metrics-port", "0", *args],
                                env=to_environ(s), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    for batch in ("3",):
        proc = sink("--batch-size", batch, "--batch-seconds", "0.05")
        try:
            start, deadline = _committed(s.bootstrap, group, topic, parts), time.monotonic() + 90
            while _committed(s.bootstrap, group, topic, parts) <= start + 3:  # a batch or two in
                assert proc.poll() is None and time.monotonic() < deadline, (
                    f"the sink made no progress: {_committed(s.bootstrap, group, topic, parts)} committed\n"
                    + "".join(p.read_text()[-2000:] for p in tmp_path.glob("sink-*.log")))
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    done = _committed(s.bootstrap, group, topic, parts)
    assert done < len(resent)  # killed before the end
    # the restart resumes from the last commit (it waits out the dead member's 10 s session first)
    last = sink("--batch-size", "9", "--max-messages", str(len(resent) - done))
    assert last.wait(180) == 0
    assert _committed(s.bootstrap, group, topic, parts) == len(resent)
    replay = sink("--batch-size", "13", "--max-messages", str(len(resent)), "--group", f"{group}-replay")
    assert replay.wait(180) == 0
    with ChdbStore(s.chdb_dir) as store:
        assert tables(store) == expected()
        from sinks.loader import check

        assert check(store) == []
