"""Chaos scenarios on the real parts: the Kafka broker, `amb worker` (Faust), `amb sink` (chDB) and
`amb archive` as separate processes, killed with SIGKILL at seeded random moments while simulated
England traffic (duplicates, late, shuffled and corrected events) and 1% poison messages flow.

At the end, with everything drained (the worker and sink groups' committed offsets and the
archive's positions at the ends of their topics), a scenario checks:

- zero lost, zero double counted: the store's facts and every `amb query` table equal the batch
  oracle over the events the trusts sent (amb.rebuild.compare_facts/compare_tables);
- the raw archive holds every accepted event: `amb reconcile` (store vs recompute from archive)
  finds no difference, and the archive's distinct event ids are exactly those sent;
- every poison message is in the DLQ with a reason (matched by source topic and offset).

Everything random comes from ``random.Random(seed)``: the traffic, the poison bytes, which fault
comes when and how long after a publish it strikes. Process timing is the machine's, so a seed
reproduces the schedule, not the exact instant a SIGKILL lands.

Used by tests/chaos/test_chaos_small.py (in `make test`) and tests/chaos/run_chaos.py (`make chaos`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from amb import config
from amb.config import Settings, to_environ
from amb.dlq import read_dead_letters
from amb.topics import dlq_topic, ensure_topics, events_topic, project_topics
from domain.events import Event

# `amb archive` through the real CLI, registered here until amb/cli.py lists it.
AMB = ("from amb import cli; from amb.commands import archive; "
       "cli.cli.commands.get('archive') or cli.cli.add_command(archive.command); cli.main()")
# `amb sink` exactly as shipped, with a 10 s consumer session (as the worker has) instead of
# librdkafka's 45 s, so a sink killed with -9 stalls its partitions 10 s, not 45 s.
SINK = ("import sinks.sink as s; _c = s.consumer_config; "
        "s.consumer_config = lambda b, g: {**_c(b, g), 'session.timeout.ms': 10000, 'heartbeat.interval.ms': 2000}; "
        "from amb import cli; cli.main()")

FAULTS = ("kill_worker", "kill_sink", "kill_archive", "restart_broker", "two_workers")


class Proc:
    """One supervised `amb` subprocess (its own session, so SIGKILL takes its children too)."""

    def __init__(self, name: str, code: str, args: Sequence[str], settings: Settings, logs: Path) -> None:
        self.name, self.code, self.args, self.settings, self.logs = name, code, list(args), settings, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        log = self.logs / f"{self.name}-{time.monotonic_ns()}.log"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", self.code, *self.args], env=to_environ(self.settings),
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (finish the batch), then wait; SIGKILL if it does not stop."""
        assert self.proc is not None
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            raise AssertionError(f"{self.name} did not finish in {timeout:.0f} s; log {self.log}:\n"
                                 f"{self.output()[-2000:]}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def supervise(self) -> bool:
        """Restart it if it died (a supervisor's job: the worker exits 70 on a broker error)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.restarts += 1
            self.start()
            return True
        return False


@dataclass
class ChaosReport:
    name: str
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # events the trusts sent (with their duplicates)
    distinct: int = 0  # distinct event ids sent
    accepted: int = 0  # distinct event ids in the raw archive
    poison: int = 0
    dead_lettered: int = 0  # poison messages found in the DLQ with a reason
    differences: int = 0  # fact/table rows differing from the oracle or the archive
    crash_restarts: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.differences == 0 and self.accepted == self.distinct and self.dead_lettered == self.poison


def poison_messages(rng: random.Random, n: int, trusts: Sequence[str], sample: Event) -> list[tuple[str, bytes, bytes]]:
    """(trust, key, value) of ``n`` messages no trust publisher would send: random bytes, JSON,
    empty values, truncated or padded Avro, a wrong key, another trust's event, a far-future event."""
    from amb.codec import default_codec

    codec, now = default_codec(), int(time.time() * 1000)
    out = []
    for i in range(n):
        trust = rng.choice(trusts)
        other = next((t for t in trusts if t != trust), None)
        ev = dataclasses.replace(sample, trust=trust, incident_id=f"POISON-{i}", event_id=str(uuid.UUID(int=rng.getrandbits(128))))
        good = codec.encode(ev, now)
        kind = rng.randrange(7 if other else 6)
        key = ev.key.encode()
        if kind == 0:
            value = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
            value = b"\x07" + value  # never a valid magic
        elif kind == 1:
            value = b'{"event_type": "incident_created", "n": %d}' % i
        elif kind == 2:
            value = b""
        elif kind == 3:
            value = good[: rng.randint(10, len(good) - 1)]
        elif kind == 4:
            value = good + b"\x00\x01"
        elif kind == 5:
            value, key = good, f"{trust}:SOMETHING-ELSE".encode()
        else:
            value = codec.encode(dataclasses.replace(ev, trust=str(other)), now)  # another trust's event
            key = f"{other}:{ev.incident_id}".encode()
        out.append((trust, key, value))
    return out


def _lag(consumer: Any, group_topics: Sequence[str], ends_only: dict[tuple[str, int], int] | None = None) -> int:
    from confluent_kafka import TopicPartition

    tps = []
    for t in group_topics:
        meta = consumer.list_topics(t, timeout=10).topics[t]
        tps += [TopicPartition(t, p) for p in meta.partitions]
    done = consumer.committed(tps, timeout=10) if ends_only is None else [
        TopicPartition(tp.topic, tp.partition, ends_only.get((tp.topic, tp.partition), 0)) for tp in tps]
    lag = 0
    for tp in done:
        _low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
        lag += max(0, high - max(tp.offset, 0))
    return lag


def drained(s: Settings, trusts: Sequence[str]) -> bool:
    """Worker (group <prefix>-worker) and sink (<prefix>-sink, and its raw and dead-letter archives)
    have committed everything on their input topics, and the file archive's own positions are at
    the events topics' ends."""
    from confluent_kafka import Consumer

    from amb.archive import archive_dir, positions
    from amb.topics import incident_facts_topic

    events = [events_topic(s, t) for t in trusts]
    from amb.topics import dlq_topic

    checks = ((f"{s.topic_prefix}-worker", events, None), (f"{s.topic_prefix}-sink", [incident_facts_topic(s)], None),
              (f"{s.topic_prefix}-raw-archive", events, None), (f"{s.topic_prefix}-dead-letters", [dlq_topic(s)], None),
              (f"{s.topic_prefix}-peek", events, positions(archive_dir(s))))
    for group, topics, ends in checks:
        c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": group, "enable.auto.commit": False,
                      "log_level": 0})
        try:
            if _lag(c, topics, ends):
                return False
        except Exception:  # noqa: BLE001 - broker restarting: not drained yet
            return False
        finally:
            c.close()
    return True


def run_scenario(
    base: Settings,
    workdir: Path,
    *,
    name: str,
    seed: int,
    trusts: Sequence[str],
    scale: float,
    chunks: int,
    faults: Sequence[str],
    geo: Any,
    stack: Any = None,
    day: date = date(2025, 10, 1),
    echo: Callable[[str], None] = lambda _s: None,
) -> ChaosReport:
    """Run one scenario against the broker in ``base`` (``stack``: the Stack that owns it, needed
    for ``restart_broker``). ``faults`` is the pool the seeded schedule draws from, one per chunk."""
    from confluent_kafka import Producer

    from amb.publisher import TrustPublisher
    from amb.rebuild import compare_facts, compare_tables, reconcile
    from amb.simulate_io import load_pool
    from domain.oracle import compute
    from domain.simulate import Mess, SimConfig, clean_events
    from sinks.store import opened

    started = time.monotonic()
    rng = random.Random(seed)
    rep = ChaosReport(name, seed)
    s = dataclasses.replace(base, topic_prefix=f"chaos{uuid.uuid4().hex[:8]}", data_dir=workdir,
                            geo_dir=config.load().geo_index_dir, worker_metrics_port=0, sink_metrics_port=0,
                            worker_web_port=0, publisher_metrics_port=0)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_topics(s.bootstrap, project_topics(s))
    mess = Mess(dup=0.05, late=0.05, shuffle=0.1, correction=0.1, retriage=0.05, unplaceable=0.02)
    events = list(clean_events(SimConfig(start=day, days=1, trusts=tuple(trusts), seed=seed, scale=scale, mess=mess),
                               load_pool(config.load(), "sample")))
    rep.sent, rep.distinct = len(events), len({e.event_id for e in events})
    poison = poison_messages(rng, max(1, len(events) // 100), trusts, events[0])
    rep.poison = len(poison)
    poison_at: set[tuple[str, int, int]] = set()

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        poison_at.add((msg.topic(), msg.partition(), msg.offset()))

    worker_args = ["worker", "--worker-id", "a", "--workers-dir", str(workdir), "--web-port", "0",
                   "--metrics-port", "0", "--batch-size", "500", "--batch-within", "0.1"]
    worker = Proc("worker", AMB, worker_args, s, logs)
    sink = Proc("sink", SINK, ["sink", "--metrics-port", "0", "--batch-size", "2000", "--batch-seconds", "0.3"], s, logs)
    archiver = Proc("archive", AMB, ["archive", "--batch-seconds", "0.3"], s, logs)
    procs = [worker, sink, archiver]
    second: Proc | None = None
    pubs = {t: TrustPublisher(s, t) for t in trusts}
    raw = Producer({"bootstrap.servers": s.bootstrap, "log_level": 0})
    try:
        size = -(-len(events) // chunks)
        psize = -(-len(poison) // chunks)
        # Each fault at least once (seeded order), then seeded draws for the remaining chunks.
        schedule = rng.sample(list(faults), len(faults))[:chunks]
        schedule += [rng.choice(list(faults)) for _ in range(chunks - len(schedule))]
        for i in range(chunks):
            for e in events[i * size:(i + 1) * size]:
                assert pubs[e.trust].publish(e)
            for trust, key, value in poison[i * psize:(i + 1) * psize]:
                raw.produce(events_topic(s, trust), value, key, on_delivery=delivered)
            for p in pubs.values():
                assert p.flush(120) == 0
            assert raw.flush(60) == 0
            fault = schedule[i]
            delay = rng.uniform(0.2, 2.5)
            time.sleep(delay)
            rep.faults[fault] += 1
            echo(f"  chunk {i + 1}/{chunks}: {fault} after {delay:.1f} s (t={time.monotonic() - started:.0f} s)")
            if fault == "kill_worker":
                worker.kill9()
                worker.start()
            elif fault == "kill_sink":
                sink.kill9()
                sink.start()
            elif fault == "kill_archive":
                archiver.kill9()
                archiver.start()
            elif fault == "restart_broker":
                assert stack is not None, "restart_broker needs the scenario's own Stack"
                stack.down(timeout=30)
                time.sleep(rng.uniform(0.5, 3.0))
                stack.up(timeout=120)
            elif fault == "two_workers":
                if second is None:
                    second = Proc("worker-b", AMB, [*worker_args[:2], "b", *worker_args[3:]], s, logs)
                    procs.append(second)
                else:  # remove one of the two, abruptly
                    victim = rng.choice([worker, second])
                    victim.kill9()
                    procs.remove(victim)
                    if victim is worker:
                        worker = second
                    second = None
            for proc in procs:
                if proc.supervise():
                    echo(f"  {proc.name} had exited; restarted (log {proc.log})")
        for p in pubs.values():
            p.close()
        # Drain: keep supervising until the worker group has committed every event, the sink group
        # every fact and the archive's positions are at the topics' ends; then stop cleanly.
        deadline = time.monotonic() + 600
        while not drained(s, trusts):
            assert time.monotonic() < deadline, "not drained within 600 s: " + " | ".join(
                f"{proc.name}: {proc.output()[-300:]}" for proc in procs)
            for proc in procs:
                if proc.supervise():
                    echo(f"  {proc.name} had exited; restarted (log {proc.log})")
            time.sleep(0.5)
        echo(f"  drained (t={time.monotonic() - started:.0f} s)")
        for proc in procs:
            proc.stop()
        rep.crash_restarts = sum(proc.restarts for proc in procs)
    finally:
        for proc in procs:
            if proc.alive:
                proc.kill9()
        for p in pubs.values():
            p.close()

    # --- checks ----------------------------------------------------------------------------
    echo(f"  stopped; checking (t={time.monotonic() - started:.0f} s)")
    oracle = compute(events, geo, geo)
    with opened(s) as store:
        vs_oracle = compare_facts(store, oracle, None, None) + compare_tables(store, oracle, None, None)
        # `amb reconcile`'s path (facts, England tables); the recompute equal to the oracle in full
        # then makes the store equal to the archive at every level too.
        vs_archive = reconcile(s, geo=geo, store=store, levels=("england",))
    from amb.rebuild import recompute

    again = recompute(s, geo=geo).report
    if (again.rows, again.incidents, again.handovers, again.calls) != (
            oracle.rows, oracle.incidents, oracle.handovers, oracle.calls):
        rep.differences += 1
        rep.details.append("the recompute from the archive differs from the oracle over the events sent")
    for label, diffs in (("oracle", vs_oracle), ("archive", vs_archive.differences)):
        for d in diffs:
            if d.differs:
                rep.differences += d.missing + d.extra + d.changed
                rep.details.append(f"store vs {label}: {d}")
    from amb.archive import archive_dir, iter_records

    rep.accepted = len({r.event_id for r in iter_records(archive_dir(s))})
    prefix = s.topic("events.")
    dead = {(d.source_topic, d.source_partition, d.source_offset): d.reason for d in read_dead_letters(s.bootstrap, dlq_topic(s))
            if d.source_topic and d.source_topic.startswith(prefix)}
    rep.dead_lettered = sum(1 for k in poison_at if dead.get(k))
    if rep.dead_lettered != rep.poison:
        rep.details.append(f"poison not in the DLQ: {sorted(poison_at - set(dead))[:10]}")
    rep.seconds = time.monotonic() - started
    echo(f"  checked (t={rep.seconds:.0f} s)")
    return rep


def format_reports(reports: Sequence[ChaosReport]) -> str:
    from domain.metrics import format_table

    rows = [(r.name, r.seed, ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items())), r.crash_restarts, r.sent,
             r.distinct, r.accepted, r.poison, r.dead_lettered, r.differences, round(r.seconds), "ok" if r.ok else "FAIL")
            for r in reports]
    return format_table(("scenario", "seed", "faults injected", "restarts", "sent", "distinct", "accepted",
                         "poison", "dead-lettered", "differences", "seconds", "result"), rows)
