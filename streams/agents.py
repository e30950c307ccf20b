"""The Faust wiring of the worker: one agent over every trust's events topic, around streams.pipeline.

    events topics (co-partitioned, key trust:incident)
      -> Faust's consumer, records of each fetch in bulk (streams.bulk), batches of up to
         batch_size gathered within batch_within seconds, one batch in flight
      -> channel -> agent "incidents"
      -> BatchStep.process: decode, validate, fold, attribute, facts   (streams.pipeline, no Kafka)
      -> table "incident-state" (changelogged; rocksdict or memory)     (TableStore below)
      -> changelog records, <prefix>.incident-facts and <prefix>.dlq through one librdkafka
         producer (:class:`Output`), every one delivered (broker-acked) before the batch returns
      -> the worker commits the offsets it processed and delivered (at most every second, and
         before a rebalance revokes partitions or the worker stops)

Five deliberate departures from plain Faust idiom:

- The events reach the agent as whole batches of records, not through Faust's per-message
  stream (``stream.take_events``), whose per-message cost capped the worker near 3,800 events/s
  whatever the agent did (streams.bulk has the measurements). The events topics are declared
  with ``acks=False``: Faust neither tracks nor commits them, the worker does (:meth:`StreamWorker.commit`).
- A Faust table finds the partition of a read or write from "the current event". Inside a
  batch that is not the message being handled, so :class:`TableStore` sets the
  current event to the message's own (topic, partition) around each table access. Every
  incident's events share a key, hence a partition, so its row always lives in the changelog
  partition of the messages that made it.
- :class:`TableStore` writes the local store and sends the changelog records itself, awaited
  with the facts, instead of ``table[key] = value`` (see its docstring for the bug this avoids).
- Output goes through confluent-kafka, not Faust's aiokafka producer (see :class:`Output`).
- Any unexpected exception in the agent exits the process at once (exit code 70) instead of
  letting Faust restart the agent: nothing of the failed batch is committed, it is read again by
  the next worker to own the partitions (at-least-once), and a supervisor (systemd, the test,
  `amb demo`) starts the process again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
from faust.streams import _current_event
from faust.types import TP

from amb import topics
from amb.config import Settings
from amb.dlq import dead_letter
from domain.facts import Attributor, Hierarchy
from domain.incident import DAY_MS
from streams import metrics
from streams.bulk import BulkRoute
from streams.live import LiveView
from streams.pipeline import BatchResult, BatchStep
from streams.state import read_header, trust_of_key

log = logging.getLogger("amb.worker")

CRASH_EXIT = 70
TABLE_NAME = "incident-state"
LIVE_SEED_MS = 4 * DAY_MS
"""On a rebalance, incidents whose last event is this recent (against the newest restored one) seed
the live view, which then prunes what is not today's: generous because one outlier event (a
correction days later, a clock up to a day fast) can make the newest far from today."""


class Geography(Attributor, Hierarchy, Protocol):
    """Both halves of the fact builder's geography (streams.geo.IndexGeo is one)."""


@dataclass
class WorkerOptions:
    """How one `amb worker` process runs (the CLI flags)."""

    batch_size: int = 10_000
    batch_within: float = 0.2
    max_messages: int | None = None
    idle_timeout: float | None = None
    naive: bool = False
    """Faust's per-event stream, one message a batch, the Python step: the benchmark's baseline, not for
    production."""
    commit_every: float = 1.0
    """Seconds between offset commits while busy (a crash re-reads at most this much, as duplicates)."""


@dataclass
class WorkerStats:
    messages: int = 0
    events: int = 0
    duplicates: int = 0
    facts: int = 0
    dead: int = 0
    expired: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    first_message: float | None = None
    last_message: float | None = None
    wait_s: float = 0.0  # between batches: the consumer gathering the next batch, or no input
    process_s: float = 0.0  # the batch step
    send_s: float = 0.0  # producing and awaiting delivery
    dead_by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        busy = (self.last_message or 0) - (self.first_message or 0)
        rate = f", {self.messages / busy:,.0f} msg/s while busy" if busy > 0 else ""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_by_reason.items()))
        per = (f"; per message: {1e6 * self.wait_s / self.messages:.0f} us waiting for the batch (or input), "
               f"{1e6 * self.process_s / self.messages:.0f} us processing, {1e6 * self.send_s / self.messages:.0f} us "
               "sending") if self.messages else ""
        return (f"{self.messages:,} messages in {self.batches:,} batches{rate}: {self.events:,} events "
                f"({self.duplicates:,} duplicates), {self.facts:,} facts, {self.dead:,} dead letters"
                f"{f' ({reasons})' if reasons else ''}, {self.expired:,} states expired{per}")


@dataclass(slots=True)
class Batch:
    """What the bulk route puts on the agent's channel: records, the consumer generation they were
    fetched in, and the futures the agent sets when it takes them and when it is done with them."""

    records: list[Any]
    generation: int
    started: asyncio.Future[None]
    done: asyncio.Future[None]


class _Message:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _At:
    """Stands in for Faust's current event: tables read ``event.message.topic/partition`` only."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


_ABSENT: Any = object()


class TableStore:
    """streams.pipeline.StateStore over a Faust table, each access in its message's partition.

    Writes go to the table's local store at once and their changelog records are sent by
    :meth:`send_changelog`, whose delivery (broker acks included) the agent awaits before it
    returns the batch for acking. Faust's own ``table[key] = value`` queues the record in a producer buffer
    whose pre-commit flush gives up after 0.1 s without progress, so under load a commit could
    include offsets whose state change never reached the changelog; after a kill -9, restoring
    from that changelog lost events (seen in the kill -9 test). The persisted changelog offset is
    advanced only after delivery, exactly as Faust's own callback does.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._at: dict[tuple[str, int], _At] = {}
        self.pending: list[tuple[bytes, bytes | None, int]] = []
        from faust.stores.rocksdb import Store as RocksStore

        # RocksDB keeps one database per partition: read and write it directly (the partition is
        # known), skipping the current-event lookup and key index of Faust's Store methods, and
        # write a batch's rows in one WriteBatch per partition (:meth:`flush`), reading unflushed
        # rows from memory meanwhile.
        self._db_for = table.data._db_for_partition if isinstance(table.data, RocksStore) else None
        self._unflushed: dict[bytes, bytes | None] = {}

    def _enter(self, topic: str, partition: int) -> Any:
        at = self._at.get((topic, partition))
        if at is None:
            at = self._at[(topic, partition)] = _At(topic, partition)
        return _current_event.set(weakref.ref(at))  # type: ignore[arg-type]

    def get(self, key: bytes, topic: str, partition: int) -> bytes | None:
        if self._db_for is not None:
            value = self._unflushed.get(key, _ABSENT)
            if value is _ABSENT:
                value = self._db_for(partition).get(key)
            return value if value else None
        token = self._enter(topic, partition)
        try:
            value = self.table.data.get(key)
            return value if value else None
        finally:
            _current_event.reset(token)

    def put(self, key: bytes, value: bytes, topic: str, partition: int) -> None:
        if self._db_for is not None:
            self._unflushed[key] = value
        else:
            token = self._enter(topic, partition)
            try:
                self.table.data[key] = value
            finally:
                _current_event.reset(token)
        self.pending.append((key, value, partition))

    def delete(self, key: bytes, topic: str, partition: int) -> None:
        if self._db_for is not None:
            self._unflushed[key] = None
        else:
            token = self._enter(topic, partition)
            try:
                self.table.data.pop(key, None)
            finally:
                _current_event.reset(token)
        self.pending.append((key, None, partition))

    def flush(self) -> None:
        """Write the batch's rows to RocksDB: one WriteBatch per partition (in the order written)."""
        if not self._unflushed:
            return
        from rocksdict import WriteBatch

        batches: dict[int, Any] = {}
        for key, _value, partition in self.pending:
            if key in self._unflushed and partition not in batches:
                batches[partition] = WriteBatch(raw_mode=True)
        rows = self._unflushed
        for key, value, partition in self.pending:
            if key in rows:
                wb = batches[partition]
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)
        for partition, wb in batches.items():
            self._db_for(partition).write(wb)  # type: ignore[misc]
        self._unflushed = {}

    def send_changelog(self, output: Output) -> None:
        """Write the batch's rows locally and hand its changelog records to the producer (delivery:
        :meth:`Output.drain`)."""
        self.flush()
        topic = self.table.changelog_topic.get_topic_name()
        output.changelog_topic = topic
        for key, value, partition in self.pending:
            output.produce(topic, key, value, partition)
        self.pending = []

    def delivered(self, offsets: dict[int, int]) -> None:
        """Record the highest changelog offset delivered per partition (what recovery starts after)."""
        topic = self.table.changelog_topic.get_topic_name()
        for partition, offset in offsets.items():
            self.table.data.set_persisted_offset(TP(topic, partition), offset)


class Output:
    """The worker's producers (librdkafka) for changelog records, facts and dead letters.

    Not Faust's aiokafka producer: its Python send path cost ~70 us a message (murmur2 and batch
    building in Python) against ~3 us here, and the batch must be delivered before it is acked
    anyway, which :meth:`drain` waits for in a thread without blocking the event loop.

    Two producers: the changelog's reports every delivery (the highest delivered offset per
    partition is what table recovery starts after), the facts' and dead letters' reports only
    failures (``delivery.report.only.error``), which spares a Python callback per fact; a
    failure on either fails the batch.
    """

    def __init__(self, bootstrap: str, client_id: str, login: Mapping[str, str] | None = None) -> None:
        """``login``: SASL properties (amb.security.client_config), empty when security is off."""
        from confluent_kafka import Producer

        self.errors: list[str] = []
        self.changelog_topic = ""
        self._offsets: dict[int, int] = {}
        common = {
            "bootstrap.servers": bootstrap, "log_level": 3,
            "enable.idempotence": True,  # acks=all, retries keep per-partition order
            "linger.ms": 5, "batch.num.messages": 10_000, "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": 120_000, "compression.type": "lz4", **(login or {}),
        }
        self.changelog = Producer({**common, "client.id": f"{client_id}-changelog", "on_delivery": self._on_delivery})
        self.producer = Producer({**common, "client.id": client_id, "delivery.report.only.error": True,
                                  "on_delivery": self._on_failure})

    def _on_delivery(self, err: Any, msg: Any) -> None:
        # One call per changelog record: kept minimal. An idempotent producer reports each
        # partition's deliveries in order, so the last report is the highest offset.
        if err is None:
            self._offsets[msg.partition()] = msg.offset()
        else:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _on_failure(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """One message (a changelog record with its partition, a fact by key); waits while the
        producer's queue is full. Positional arguments only: keywords cost a microsecond a call."""
        producer = self.changelog if topic == self.changelog_topic else self.producer
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value, key)
                else:
                    producer.produce(topic, value, key, partition)
                return
            except BufferError:
                producer.poll(0.05)

    async def drain(self, timeout: float = 120.0) -> dict[int, int]:
        """Wait until everything produced so far is delivered (or raise); returns and resets the
        highest delivered changelog offset per partition.

        Delivery reports are served here, on the event loop's thread, with ``poll(0)`` between
        short sleeps: served from a flushing thread instead, each report's Python callback had to
        win the GIL from the busy agent (up to the 5 ms switch interval each), which made a
        batch's delivery slower than the next batch's processing."""
        producers = (self.changelog, self.producer)
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            for p in producers:
                p.poll(0)
            if not any(len(p) for p in producers) or time.monotonic() > deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.01)
        left = sum(len(p) for p in producers)
        if left or self.errors:
            raise RuntimeError(f"{left} messages undelivered after {timeout:g} s; errors: {self.errors[:5]}")
        offsets, self._offsets = self._offsets, {}
        return offsets


class StreamWorker:
    """Declares the topics, table, agent and timer of one worker on ``app``."""

    def __init__(self, settings: Settings, app: faust.App, geo: Geography,
                 options: WorkerOptions | None = None, *, store: str = "rocksdb") -> None:
        self.settings = settings
        self.app = app
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.events_topics = topics.events_topics(settings)
        self._events_set = frozenset(self.events_topics)
        self._topic_of_trust = {t.rsplit(".", 1)[1]: t for t in self.events_topics}
        self.facts_topic = topics.incident_facts_topic(settings)
        self.dlq_topic = topics.dlq_topic(settings)
        # acks=False: Faust neither tracks nor commits these; the worker commits what it delivered.
        self.source = app.topic(*self.events_topics, key_type=bytes, value_type=bytes,
                                key_serializer="raw", value_serializer="raw", acks=False)
        table_kwargs: dict[str, Any] = {}
        if store == "rocksdb":
            # Faust's defaults (64 MB write buffers x3 and a 2 GB block cache, per partition) are
            # sized for a big dedicated host; these keep a worker's RSS in the hundreds of MB.
            table_kwargs["options"] = {"driver": "rocksdict", "write_buffer_size": 16 << 20,
                                       "max_write_buffer_number": 2, "block_cache_size": 64 << 20,
                                       "block_cache_compressed_size": 16 << 20}
        self.table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, default=None,
                               partitions=settings.kafka_partitions,
                               help="Incident and 111-call state (streams.state), keyed trust:kind:id.",
                               **table_kwargs)
        self.live = LiveView()
        self.store = TableStore(self.table)
        from amb.security import client_config

        self.output = Output(settings.bootstrap, f"{app.conf.id}-{id(self):x}", client_config(settings, "worker"))
        warm = getattr(geo, "warm", None)
        if warm is not None:
            warm()
        self.step = BatchStep(geo, geo, self.store, horizon_ms=settings.late_horizon_days * DAY_MS,
                              live=self.live, native=False if self.options.naive else None)
        self._assigned: set[tuple[str, int]] = set()
        self._generation: int | None = None
        self._stopping = False
        self._busy = False
        self._batch_end: float | None = None
        self._ready_at: float | None = None
        self._offsets_reader: Any = None
        self._next_offset: dict[tuple[str, int], int] = {}
        """Per events partition: the next offset whose message is not yet processed AND delivered;
        advanced only over contiguous offsets. What the worker commits (see :meth:`_guard_commits`)."""
        self._holes: set[tuple[str, int]] = set()
        self._committed_by_us: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._delivery: asyncio.Future[None] | None = None
        self._last_report = time.monotonic()
        self._reported_messages = 0
        self.lag = metrics.ConsumerLag(self.events_topics)  # amb_worker_consumer_lag, set by _tick
        if self.options.naive:
            self.agent = app.agent(self.source, name="incidents")(self._agent_fun())
        else:
            self.batches = app.channel()
            app.topics.add(self.source)  # subscribed, though its records come through the bulk route
            app.bulk_route = BulkRoute(frozenset(self.events_topics), self._deliver, self.settle,  # type: ignore[attr-defined]
                                       batch_size=self.options.batch_size, batch_within=self.options.batch_within)
            self.agent = app.agent(self.batches, name="incidents")(self._agent_fun())
        app.timer(0.5)(self._tick)

    # -------------------------------------------------------------------------------- agent
    def _agent_fun(self) -> Any:
        opts = self.options

        async def incidents(stream: faust.StreamT[Any]) -> None:
            """Incident events of every trust -> state, facts and dead letters, a batch at a time."""
            try:
                if opts.naive:
                    async for event in stream.events():
                        await self.handle([event.message])
                else:
                    async for batch in stream:
                        batch.started.set_result(None)
                        try:
                            if batch.generation == self.app.consumer_generation_id:
                                await self.handle(batch.records)
                            # else fetched before a rebalance: sought back and read again after it
                        finally:
                            batch.done.set_result(None)
            except asyncio.CancelledError:
                if self._busy:  # stopped inside a batch (Faust normally waits for it): do not ack it
                    self._crash("cancelled in the middle of a batch")
                raise
            except Exception:  # see the module docstring: never ack a failed batch
                self._crash("the incidents agent failed")

        return incidents

    def _crash(self, why: str) -> None:
        sys.stderr.write(f"amb worker: error: {why}; exiting without committing its batch (it will be "
                         "read again):\n" + traceback.format_exc())
        sys.stderr.flush()
        os._exit(CRASH_EXIT)

    async def _deliver(self, records: list[Any], generation: int
                       ) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        """The bulk route's hand-off: one batch on the agent's channel; (taken, done) futures."""
        loop = asyncio.get_running_loop()
        batch = Batch(records, generation, loop.create_future(), loop.create_future())
        # A channel yields a put value that is not an Event as it is: no serialising, no acks.
        await self.batches.put(batch)  # type: ignore[arg-type]
        return batch.started, batch.done

    async def handle(self, msgs: Sequence[Any]) -> BatchResult:
        """One batch of records (``topic``, ``partition``, ``offset``, ``key``, ``value``,
        ``headers``: aiokafka's ConsumerRecord, Faust's Message, InMessage) through the batch step,
        then send its output. ``_busy`` stays set if this raises: the agent then exits without
        committing (see the module docstring).

        Deliveries overlap the next batch: this returns once the output is handed to the
        producers, and :meth:`_complete` waits for the broker's acks (then advances the offsets
        the worker may commit, and commits when due) while the next batch is decoded and folded.
        That batch waits for it before it sends anything, so at most one batch is undelivered
        and nothing is committed before it is delivered."""
        self._busy = True
        self._idle.clear()
        t0 = time.perf_counter()
        self.stats.first_message = self.stats.first_message or time.monotonic()
        if self._batch_end is not None:
            self.stats.wait_s += t0 - self._batch_end
        self._check_assignment()
        result = self.step.process(msgs, int(time.time() * 1000))
        t1 = time.perf_counter()
        await self._completed()
        self._send(result)
        self._delivery = asyncio.ensure_future(self._complete(msgs, result, t1 - t0))
        self._batch_end = t2 = time.perf_counter()
        self.stats.process_s += t1 - t0
        self.stats.send_s += t2 - t1
        self._busy = False
        return result

    async def _completed(self) -> None:
        """Wait for the previous batch's delivery (and its offset bookkeeping) to finish."""
        task, self._delivery = self._delivery, None
        if task is not None:
            await task

    async def _complete(self, msgs: Sequence[Any], result: BatchResult, seconds: float) -> None:
        try:
            self.store.delivered(await self.output.drain())
            holes = self._advance(msgs)
            if holes:
                await self._reread(holes)
            self._account(len(msgs), result, seconds)
            if time.monotonic() - self._last_commit >= self.options.commit_every:
                await self.commit()
        except Exception:  # a batch that was not delivered must never be committed: see the module docstring
            self._crash("a batch's output could not be delivered")
        if not self._busy:
            self._idle.set()

    def _send(self, result: BatchResult) -> None:
        """Changelog, facts and dead letters of one batch to the producers (delivery: :meth:`_complete`)."""
        out = self.output
        self.store.send_changelog(out)
        produce = out.produce
        topic = self.facts_topic
        for f in result.facts:
            produce(topic, f.key, f.value)
        for d in result.dead:
            m = d.message
            dead_letter(out.producer, m.value, m.key, d.reason, m.topic, m.partition, m.offset, list(m.headers),
                        dlq_topic=self.dlq_topic)

    def _account(self, n: int, r: BatchResult, seconds: float) -> None:
        s = self.stats
        now = time.monotonic()
        s.first_message = s.first_message or now
        s.last_message = now
        s.messages += n
        s.batches += 1
        s.events += sum(r.events.values())
        s.duplicates += sum(r.duplicates.values())
        s.facts += len(r.facts)
        s.dead += len(r.dead)
        s.expired += r.expired
        for (etype, trust), k in r.events.items():
            metrics.EVENTS.labels(etype, trust).inc(k)
        for trust, k in r.duplicates.items():
            metrics.DUPLICATES.labels(trust).inc(k)
        for d in r.dead:
            metrics.DLQ.labels(d.code).inc()
            s.dead_by_reason[d.code] = s.dead_by_reason.get(d.code, 0) + 1
        kinds: dict[str, int] = {}
        for f in r.facts:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        for kind, k in kinds.items():
            metrics.FACTS.labels(kind).inc(k)
        for status, k in r.attributed.items():
            metrics.ATTRIBUTED.labels(status).inc(k)
        if r.expired:
            metrics.EXPIRED.inc(r.expired)
        metrics.BATCH_SIZE.observe(n)
        metrics.BATCH_SECONDS.observe(seconds)
        if r.max_event_time:
            metrics.EVENT_LAG.set(max(0.0, time.time() - r.max_event_time / 1000))
        metrics.LAST_BATCH.set(time.time())
        metrics.STATE_INCIDENTS.set(self.step.states_held)
        opts = self.options
        if opts.max_messages is not None and s.messages >= opts.max_messages:
            self.stop(f"--max-messages {opts.max_messages} reached")

    def topic_of_key(self, key: bytes) -> str:
        return self._topic_of_trust[trust_of_key(key)]

    # ------------------------------------------------------------------------------- commits
    def _advance(self, msgs: Sequence[Any]) -> dict[tuple[str, int], int]:
        """Move each partition's next offset over this batch's messages, all delivered by now.
        Returns the holes found: partition -> the offset the worker must read again from.

        A message that starts past the next offset is a hole: messages Faust never handed to the
        agent (known upstream races around rebalances and recovery, e.g. faust-streaming#216 and
        #221: a fetch resumed before the seek to the committed offset, then the re-read dropped as
        already read). The partition's offset stays at the hole, so no commit passes it, and the
        caller seeks back there; the messages after it come again and are duplicates by then."""
        nxt, holes = self._next_offset, self._holes
        found: dict[tuple[str, int], int] = {}
        for m in msgs:
            tp = (m.topic, m.partition)
            cur = nxt.get(tp)
            if cur is None:
                start = self._start_offset(m.topic, m.partition)
                cur = m.offset if start is None else start
            if m.offset == cur:
                nxt[tp] = cur + 1
                holes.discard(tp)
            elif m.offset > cur:
                nxt[tp] = cur
                if tp not in holes:
                    holes.add(tp)
                    found[tp] = cur
        return found

    async def _reread(self, holes: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), offset in holes.items():
            log.warning("%s[%d]: Faust skipped messages from offset %d; seeking back to read them (commits stay "
                        "there until they are processed)", topic, partition, offset)
            metrics.HOLES.inc()
            await self.app.consumer.seek(TP(topic, partition), offset)

    def _start_offset(self, topic: str, partition: int) -> int | None:
        """The group's committed offset as Faust read it at assignment (None: none, or 0)."""
        committed = getattr(self.app.consumer, "_committed_offset", {})
        value = committed.get(TP(topic, partition)) if hasattr(committed, "get") else None
        return value if isinstance(value, int) else None

    async def commit(self) -> bool:
        """Commit, for each assigned events partition that moved, the next offset this worker has
        processed AND delivered (contiguously: never past a hole), through Faust's consumer (which
        also tells the tables). Faust commits nothing of these topics itself (``acks=False``)."""
        self._last_commit = time.monotonic()
        ours = {TP(t, p): offset for (t, p), offset in self._next_offset.items()
                if (t, p) in self._assigned and self._committed_by_us.get((t, p)) != offset}
        if not ours:
            return False
        done = bool(await self.app.consumer._commit_offsets(ours))  # type: ignore[attr-defined]
        if done:
            for tp, offset in ours.items():
                self._committed_by_us[(tp.topic, tp.partition)] = offset
        return done

    async def settle(self) -> None:
        """Before Faust revokes partitions or stops: let the batch in flight finish and be
        delivered, then commit."""
        await self._idle.wait()
        try:
            await self.commit()
        except Exception as exc:  # noqa: BLE001 - uncommitted offsets are read again: duplicates, harmless
            log.warning("commit before the rebalance failed (the next owner re-reads from the last commit): %s", exc)

    # ---------------------------------------------------------------------------- rebalances
    def _check_assignment(self) -> None:
        """After a rebalance: forget revoked partitions, adopt the restored rows of new ones."""
        gen = self.app.consumer_generation_id
        if gen == self._generation:
            return
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in self._events_set}
        revoked = self._assigned - assigned
        new = assigned - self._assigned
        self.step.forget(revoked)
        for tp in revoked:
            self._next_offset.pop(tp, None)
            self._committed_by_us.pop(tp, None)
            self._holes.discard(tp)
        if new:
            parts = {p for _, p in new}
            n = self.step.adopt(self._rows_of(new, parts), self.topic_of_key)
            newest = max((wm for _, wm in self.step.watermarks.items()), default=0)
            if newest:  # a second pass over the recent rows only seeds the live view
                since = newest - LIVE_SEED_MS
                self.step.adopt(self._rows_of(new, parts, since), self.topic_of_key, live_since_ms=since)
                self.live.prune()
            log.info("partitions %s assigned: %d states adopted", sorted(parts), n)
        self._assigned = assigned
        self._generation = gen
        metrics.PARTITIONS.set(len(assigned))
        metrics.STATE_INCIDENTS.set(self.step.states_held)

    def _rows_of(self, new: set[tuple[str, int]], parts: set[int], since: int | None = None
                 ) -> Iterable[tuple[bytes, bytes]]:
        for key, value in self.table.data.items():
            if not value:
                continue
            head = read_header(value)
            if head.partition in parts and (self.topic_of_key(key), head.partition) in new and (
                    since is None or head.last_event_time >= since):
                yield key, value

    # ------------------------------------------------------------------------------- timer
    async def _tick(self) -> None:
        app = self.app
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        if self._ready_at is None and app.consumer.assignment() is not None:
            self._ready_at = time.monotonic()
        if not self._busy:
            self._check_assignment()
        now = time.monotonic()
        await self.lag.update(app.consumer, now, self._next_offset)
        if now - self._last_report >= 10 and self.stats.messages > self._reported_messages:
            rate = (self.stats.messages - self._reported_messages) / (now - self._last_report)
            log.info("%s (%.0f msg/s over the last %.0f s)", self.stats.summary(), rate, now - self._last_report)
            self._last_report, self._reported_messages = now, self.stats.messages
        idle = self.options.idle_timeout
        if idle is not None and self._ready_at is not None and not self._busy:
            last = max(self._ready_at, self.stats.last_message or 0)
            if now - last >= idle and await self._caught_up():
                self.stop(f"no message for {idle:g} s and every assigned events partition processed to its end "
                          "(--timeout)")

    async def _caught_up(self) -> bool:
        """True when every events partition this worker holds has been processed to its end offset.

        "No message for N s" alone is not "done": a slow first batch after a rebalance, or a
        partition still held by a killed member until its session expires, also look idle, and
        stopping then left events unprocessed. Processed, not committed: Faust's commit of a
        partition can crawl an offset at a time after a restart (duplicate offsets in its acked
        list), and what it has not committed is read again as duplicates, which change nothing."""
        assigned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in self._events_set]
        if not assigned:
            return False
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._processed_to_end, assigned)
        except Exception as exc:  # noqa: BLE001 - an unanswered question is "not yet"
            log.warning("could not read the end offsets of the events topics: %s", exc)
            return False

    def _processed_to_end(self, assigned: list[tuple[str, int]]) -> bool:
        from confluent_kafka import Consumer, TopicPartition

        if self._offsets_reader is None:
            from amb.security import client_config

            self._offsets_reader = Consumer({"bootstrap.servers": self.settings.bootstrap, "group.id": self.app.conf.id,
                                             "enable.auto.commit": False, "log_level": 3,
                                             **client_config(self.settings, "worker")})
        reader = self._offsets_reader
        tps = [TopicPartition(t, p) for t, p in assigned]
        committed = {(tp.topic, tp.partition): tp.offset for tp in reader.committed(tps, timeout=10)}
        for t, p in assigned:
            _low, high = reader.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            done = max(self._next_offset.get((t, p), 0), committed[(t, p)])
            if done < high:
                log.info("not caught up: %s[%d] at offset %d of %d", t, p, done, high)
                return False
        return True

    def stop(self, why: str) -> None:
        """Finish cleanly (as on SIGTERM): commit what was processed, then exit."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: %s", why)
        os.kill(os.getpid(), signal.SIGTERM)
