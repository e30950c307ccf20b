"""`amb worker` on the real broker, as a subprocess: a simulated day of several trusts in, incident
facts out, compared fact by fact with the batch oracle; a kill -9 mid-stream; two workers sharing
the partitions; malformed messages in the dead-letter topic with their reason."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from amb import config
from amb.codec import default_codec
from amb.config import Settings, to_environ
from amb.dlq import read_dead_letters
from amb.geo.index import GeoIndex
from amb.publisher import TrustPublisher
from amb.simulate_io import load_pool
from amb.stack import process
from amb.topics import dlq_topic, ensure_topics, events_topic, incident_facts_topic, project_topics
from domain.events import Event, EventType
from domain.oracle import compute, latest
from domain.simulate import Mess, SimConfig, clean_events
from streams.fact_codec import FactMessage, decode
from streams.geo import IndexGeo

pytestmark = pytest.mark.kafka

TRUSTS = ("RX6", "R1F", "RYE")
MESSY = Mess(dup=0.05, late=0.05, shuffle=0.1, correction=0.1, retriage=0.05, unplaceable=0.02)
# `amb worker` through the real CLI, registered here if amb/cli.py does not list it yet.
AMB = ("from amb import cli; from amb.commands import worker; "
       "cli.cli.commands.get('worker') or cli.cli.add_command(worker.command); cli.main()")


@pytest.fixture(scope="module")
def geo() -> IndexGeo:
    index_dir = config.load().geo_index_dir
    try:
        return IndexGeo(GeoIndex(index_dir))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the worker tests need the geography index ({exc}): run `amb geo build`", pytrace=False)


@pytest.fixture
def world(stack_settings: Settings, tmp_path: Path) -> Settings:
    """The session broker with this test's own topic prefix (so its own consumer group) and geography."""
    s = dataclasses.replace(stack_settings, topic_prefix=f"w{uuid.uuid4().hex[:10]}", data_dir=tmp_path,
                            geo_dir=config.load().geo_index_dir)
    ensure_topics(s.bootstrap, project_topics(s))
    return s




def simulated_day(seed: int, scale: float) -> list[Event]:
    cfg = SimConfig(start=date(2025, 10, 1), days=1, trusts=TRUSTS, seed=seed, scale=scale, mess=MESSY)
    return list(clean_events(cfg, load_pool(config.load(), "sample")))


def publish(s: Settings, events: Sequence[Event]) -> None:
    pubs = {t: TrustPublisher(s, t) for t in TRUSTS}
    try:
        for e in events:
            assert pubs[e.trust].publish(e)
    finally:
        for p in pubs.values():
            p.close()


def publish_malformed(s: Settings, sample: Event) -> dict[str, int]:
    """Bytes no valid publisher sends, straight onto the events topics; expected reason counts."""
    codec, now = default_codec(), int(time.time() * 1000)
    p = Producer({"bootstrap.servers": s.bootstrap, "log_level": 3})
    rx6, rye = events_topic(s, "RX6"), events_topic(s, "RYE")
    good = dataclasses.replace(sample, trust="RX6", incident_id="INC-bad", event_id=str(uuid.uuid4()))
    p.produce(rx6, b'{"event_type": "incident_created"}', b"RX6:INC-bad")  # JSON, not Avro
    p.produce(rx6, b"", b"RX6:INC-bad")
    p.produce(rye, codec.encode(good, now), good.key.encode())  # an RX6 event on RYE's topic
    p.produce(rx6, codec.encode(good, now), b"RX6:INC-other")  # keyed for another incident
    future = dataclasses.replace(good, event_id=str(uuid.uuid4()), event_time=now + 3 * 86_400_000)
    p.produce(rx6, codec.encode(future, now), future.key.encode())
    assert p.flush(30) == 0
    return {"bad_magic": 1, "empty_message": 1, "wrong_trust": 1, "wrong_key": 1, "future_time": 1}


def read_facts(s: Settings) -> list[FactMessage]:
    topic = incident_facts_topic(s)
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "log_level": 3})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end])
        left = {p for p, end in ends.items() if end}
        out: list[FactMessage] = []
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for m in c.consume(2000, 1.0):
                assert m.error() is None, m.error()
                out.append(decode(m.value()))
                if m.offset() + 1 >= ends[m.partition()]:
                    left.discard(m.partition())
        assert not left, "could not read the facts topic to its end"
        return out
    finally:
        c.close()


def facts_written(s: Settings) -> int:
    topic = incident_facts_topic(s)
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": "peek", "log_level": 3})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def assert_facts_match_oracle(s: Settings, events: Sequence[Event], geo: IndexGeo) -> None:
    report = compute(events, geo, geo)
    facts = read_facts(s)
    incidents = latest([f.incident for f in facts if f.incident])
    assert len(incidents) == len(report.incidents) > 100
    assert incidents == list(report.incidents)
    assert latest([f.handover for f in facts if f.handover]) == list(report.handovers)
    assert latest([f.call for f in facts if f.call]) == list(report.calls)


class Worker:
    """One `amb worker` subprocess."""

    def __init__(self, s: Settings, worker_id: str, tmp: Path, *args: str) -> None:
        self.metrics_port = process.free_ports(1)[0]
        self.log = tmp / f"worker-{worker_id}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-c", AMB, "worker", "--worker-id", worker_id, "--workers-dir", str(tmp),
                "--metrics-port", str(self.metrics_port), "--web-port", "0", *args]
        self.proc = subprocess.Popen(argv, env=to_environ(s), stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("w"), start_new_session=True)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker did not stop in {timeout} s:\n{self.output()[-3000:]}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def processed(self) -> int:
        last = [ln for ln in self.output().splitlines() if " messages in " in ln][-1]
        return int(last.split(": ", 1)[1].split(" messages", 1)[0].replace(",", ""))


@pytest.fixture
def workers(world: Settings, tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def test_facts_match_the_oracle_and_malformed_messages_are_dead_lettered(
        world: Settings, geo: IndexGeo, workers: list[Worker], tmp_path: Path) -> None:
    events = simulated_day(seed=11, scale=0.3)
    publish(world, events)
    expected_dead = publish_malformed(world, next(e for e in events if e.event_type == EventType.INCIDENT_CREATED))
    w = Worker(world, "a", tmp_path, "--timeout", "4")
    workers.append(w)
    assert w.wait() == 0, w.output()[-3000:]
    assert w.processed() == len(events) + sum(expected_dead.values())
    assert_facts_match_oracle(world, events, geo)
    dead = list(read_dead_letters(world.bootstrap, dlq_topic(world)))
    by_reason: dict[str, int] = {}
    for d in dead:
        by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        assert d.source_topic.startswith(f"{world.topic_prefix}.events.") and d.source_offset is not None
        assert d.message
    assert by_reason == expected_dead


def test_kill_9_mid_stream_and_restart_still_gives_exactly_the_oracles_facts(
        world: Settings, geo: IndexGeo, workers: list[Worker], tmp_path: Path) -> None:
    """Killed twice: once before its first commit, once after several (commits every 2.8 s)."""
    events = simulated_day(seed=12, scale=0.3)
    third = len(events) // 3

    def kill_when(w: Worker, facts: int, after_s: float = 0.0) -> None:
        started = time.monotonic()
        while facts_written(world) < facts or time.monotonic() - started < after_s:
            assert w.proc.poll() is None, w.output()[-3000:]
            assert time.monotonic() - started < 90, "the worker made no progress within 90 s"
            time.sleep(0.05)
        os.killpg(w.proc.pid, signal.SIGKILL)
        assert w.proc.wait(10) == -signal.SIGKILL

    publish(world, events[:third])
    first = Worker(world, "a", tmp_path, "--batch-size", "100", "--batch-within", "0.05")
    workers.append(first)
    kill_when(first, 50)  # state written, nothing committed yet
    publish(world, events[third:2 * third])
    second = Worker(world, "a", tmp_path, "--batch-size", "100", "--batch-within", "0.05")
    workers.append(second)
    kill_when(second, facts_written(world) + 500, after_s=4.0)  # after at least one commit
    publish(world, events[2 * third:])
    last = Worker(world, "a", tmp_path, "--timeout", "4")
    workers.append(last)
    assert last.wait() == 0, last.output()[-3000:]
    assert_facts_match_oracle(world, events, geo)


def test_two_workers_share_the_partitions(world: Settings, geo: IndexGeo, workers: list[Worker],
                                          tmp_path: Path) -> None:
    events = simulated_day(seed=13, scale=0.3)
    # idle long enough that neither stops before the publishing below reaches its partitions
    one = Worker(world, "a", tmp_path, "--timeout", "15")
    two = Worker(world, "b", tmp_path, "--timeout", "15")
    workers += [one, two]
    deadline = time.monotonic() + 90
    while not all((w.metric("amb_worker_assigned_partitions") or 0) > 0 for w in (one, two)):
        assert one.proc.poll() is None and two.proc.poll() is None, one.output()[-2000:] + two.output()[-2000:]
        assert time.monotonic() < deadline, "the two workers did not both get partitions within 90 s"
        time.sleep(0.2)
    publish(world, events)
    assert one.wait() == 0, one.output()[-3000:]
    assert two.wait() == 0, two.output()[-3000:]
    assert one.processed() > 0 and two.processed() > 0
    assert one.processed() + two.processed() >= len(events)
    assert_facts_match_oracle(world, events, geo)
