"""The sink: ``<prefix>.incident-facts`` (Kafka) -> the store, exactly once in effect.

One loop, in the order the style guide asks for:

    consume a batch (up to ``batch_size`` messages or ``batch_seconds``)
    -> decode (streams.fact_codec); undecodable messages go to the DLQ with the reason
    -> per source partition, load the facts (sinks.loader) with the dedup token
       ``topic:partition:first-last``
    -> flush the DLQ producer -> commit the offsets (synchronously) -> next batch.

Offsets are committed only after every insert of the batch returned, so a crash replays from the
last commit; the loader drops versions not newer than the store's and ClickHouse drops repeated
blocks by token, so a replay never double counts. A failed load is retried with the same batch
and tokens (backoff), then the process exits non-zero and the next start replays. One sink
process owns the store (chDB allows one opener); partitions may be spread over several sinks only
with a ClickHouse server.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import Counter, Gauge, Histogram

from amb.config import SINK_BATCH_MESSAGES
from amb.dlq import dead_letter
from amb.errors import AmbError
from domain.facts import Call111Fact, HandoverFact, IncidentFact
from domain.validation import Code
from sinks.loader import CALLS, HANDOVERS, INCIDENTS, LoadResult, decode_columns, load_facts, to_arrow
from sinks.store import Store, StoreError
from streams import fact_codec

FACTS: Final = Counter("amb_sink_facts_total", "Fact rows read by the sink, by kind and result "
                       "(applied: a new version stored; stale: not newer than the store or the batch).",
                       ["kind", "result"])
DEAD: Final = Counter("amb_sink_dlq_total", "Fact messages the sink could not decode (sent to the DLQ).")
BATCHES: Final = Counter("amb_sink_batches_total", "Batches loaded and committed.")
RETRIES: Final = Counter("amb_sink_retries_total", "Batch loads retried after a store error.")
BATCH_SECONDS: Final = Histogram("amb_sink_batch_seconds", "Time to load one batch into the store (all kinds).",
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG: Final = Gauge("amb_sink_consumer_lag", "Messages in the facts topic not yet loaded and committed "
                   "(high watermark minus committed offset), per partition.", ["topic", "partition"])
FRESHNESS: Final = Histogram(
    "amb_sink_freshness_seconds",
    "Pipeline delay after the worker: seconds from the newest fact message's Kafka timestamp (when the "
    "worker emitted it) to the batch's insert returning, once per batch; excludes the trust's and the "
    "worker's delay (amb_sink_event_freshness_seconds includes them).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
EVENT_FRESHNESS: Final = Histogram(
    "amb_sink_event_freshness_seconds",
    "End-to-end freshness: seconds from the newest event time among a batch's facts (incident "
    "last_event_ms, 111 call time) to the batch's insert returning (queryable), once per batch. "
    "Large on purpose during a replay of old events: the store is that stale.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300, 900, 3600, 21_600, 86_400, 604_800))
BATCH_SIZE: Final = Histogram("amb_sink_batch_size", "Fact messages per loaded batch.",
                              buckets=(1, 10, 100, 1000, 5000, 10_000, 20_000, 50_000, 100_000))
LAST_COMMIT: Final = Gauge("amb_sink_last_commit_timestamp_seconds", "When offsets were last committed "
                           "(Unix time), per partition: a stuck sink shows as a growing age.", ["partition"])


class SinkError(AmbError):
    """The broker reported an error the sink cannot skip."""


class Archive(Protocol):
    """A consumer the sink runs beside its facts (sinks.raw.TopicArchiver)."""

    def step(self) -> int: ...
    def caught_up(self) -> bool: ...


class Message(Protocol):
    """What the sink needs of a Kafka message (confluent_kafka.Message has it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def error(self) -> Any: ...
    def timestamp(self) -> tuple[int, int]: ...


def held_message(topic: str, partition: int, offset: int, key: bytes, value: bytes) -> Message:
    """A fact message held in memory (tests, benches): a real ``confluent_kafka.Message``, so its
    accessors cost what a consumed message's do. No headers, no error, no timestamp."""
    from confluent_kafka import Message as KafkaMessage

    return cast(Message, KafkaMessage(topic=topic, partition=partition, offset=offset, key=key, value=value))


@dataclass
class BatchOutcome:
    """One batch: per-kind load results, undecodable messages, and the offsets to commit."""

    results: dict[str, LoadResult] = field(default_factory=dict)
    dead: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    newest_event_ms: int = 0  # greatest event time among the loaded facts (0: none), for EVENT_FRESHNESS


def partition_token(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}:{partition}:{first}-{last}"


def load_batch(
    store: Store,
    messages: Sequence[Message],
    on_dead: Callable[[Message, str], None],
) -> BatchOutcome:
    """Decode and load ``messages`` (any topics and partitions, in consumption order) in ONE load:
    the loader's identity is its own load id, not the offsets, so one staged load per batch is as
    exact as one per partition and a quarter of the statements (each ~20-70 ms in chDB, whatever
    its size). Undecodable messages go to ``on_dead`` (reason); the token names every partition's
    offset range, for the store's logs."""
    out = BatchOutcome()
    # columnar in Rust/C++ when every message is well formed; else one by one, bad ones to the DLQ
    tables = decode_columns([v or b"" for v in map(_VALUE, messages)])
    if tables is None:
        tables = _decode_each(messages, on_dead, out)
    tokens = []
    for (topic, part), (first, last) in offset_ranges(messages).items():
        tokens.append(partition_token(topic, part, first, last))
        out.offsets[(topic, part)] = last + 1
    incidents, calls = tables[INCIDENTS.name], tables[CALLS.name]
    for kind, res in load_facts(store, ",".join(tokens), incidents, tables[HANDOVERS.name], calls).items():
        acc = out.results.setdefault(kind, LoadResult())
        acc += res
    out.newest_event_ms = max(out.newest_event_ms, pc.max(incidents.column("last_event_ms")).as_py() or 0,
                              pc.max(calls.column("call_time_ms")).as_py() or 0)
    return out


_VALUE: Final = operator.methodcaller("value")
_TOPIC: Final = operator.methodcaller("topic")
_PARTITION: Final = operator.methodcaller("partition")
_OFFSET: Final = operator.methodcaller("offset")


def offset_ranges(messages: Sequence[Message]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (lowest, highest offset) among ``messages``, sorted by partition.
    Vectorised: a 100,000-message batch in milliseconds, not a Python loop of method calls."""
    n = len(messages)
    if n == 0:
        return {}
    try:  # consumed messages always carry both; the generators below cost 15 ms per 100,000
        offsets = np.fromiter(map(_OFFSET, messages), np.int64, n)
        partitions = np.fromiter(map(_PARTITION, messages), np.int64, n)
    except TypeError:
        offsets = np.fromiter((o or 0 for o in map(_OFFSET, messages)), np.int64, n)
        partitions = np.fromiter((p or 0 for p in map(_PARTITION, messages)), np.int64, n)
    topics = list(map(_TOPIC, messages))
    names = sorted(set(topics), key=str)
    which = partitions if len(names) == 1 else (
        np.fromiter(map({t: i for i, t in enumerate(names)}.__getitem__, topics), np.int64, n) << 32) + partitions
    order = np.lexsort((offsets, which))
    grouped = which[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    ends = np.r_[starts[1:], n] - 1
    return {(str(topics[order[a]]), int(partitions[order[a]])): (int(offsets[order[a]]), int(offsets[order[b]]))
            for a, b in zip(starts, ends, strict=True)}


def _decode_each(msgs: Sequence[Message], on_dead: Callable[[Message, str], None], out: BatchOutcome,
                 ) -> dict[str, pa.Table]:
    """Decode one message at a time (``fact_codec.decode``), sending each bad one to ``on_dead``."""
    incidents: list[IncidentFact] = []
    handovers: list[HandoverFact] = []
    calls: list[Call111Fact] = []
    for m in msgs:
        try:
            fm = fact_codec.decode(m.value() or b"")
        except ValueError as exc:
            on_dead(m, str(exc))
            out.dead += 1
            continue
        if fm.incident is not None:
            incidents.append(fm.incident)
        if fm.handover is not None:
            handovers.append(fm.handover)
        if fm.call is not None:
            calls.append(fm.call)
    return {INCIDENTS.name: to_arrow(INCIDENTS, incidents), HANDOVERS.name: to_arrow(HANDOVERS, handovers),
            CALLS.name: to_arrow(CALLS, calls)}


@dataclass
class SinkStats:
    messages: int = 0
    batches: int = 0
    dead: int = 0
    applied: int = 0
    stale: int = 0


class FactSink:
    """The consume -> load -> commit loop around a confluent_kafka Consumer (already subscribed)
    and a Producer for dead letters."""

    def __init__(
        self,
        store: Store,
        consumer: Any,
        producer: Any,
        dlq_topic: str,
        batch_size: int = SINK_BATCH_MESSAGES,
        batch_seconds: float = 1.0,
        retries: int = 5,
        echo: Callable[[str], None] = lambda _s: None,
    ) -> None:
        self.store, self.consumer, self.producer, self.dlq_topic = store, consumer, producer, dlq_topic
        self.batch_size, self.batch_seconds, self.retries, self.echo = batch_size, batch_seconds, retries, echo
        self.stats = SinkStats()
        self.stopping = False

    def stop(self) -> None:
        """Finish the current batch (load and commit), then return from :meth:`run` (SIGTERM)."""
        self.stopping = True

    def _dead(self, m: Message, reason: str) -> None:
        dead_letter(self.producer, m.value(), m.key(), (Code.UNDECODABLE.value, reason), str(m.topic()),
                    int(m.partition() or 0), int(m.offset() or 0), m.headers(), dlq_topic=self.dlq_topic)
        DEAD.inc()

    def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages within ``batch_seconds``; broker errors other than partition EOF raise."""
        return take_batch(self.consumer, limit, self.batch_seconds)

    def step(self, limit: int | None = None) -> int:
        """One batch: take, load (with retries), flush dead letters, commit. Returns messages taken."""
        msgs = self.take(min(self.batch_size, limit) if limit else self.batch_size)
        if not msgs:
            return 0
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                outcome = load_batch(self.store, msgs, self._dead)
                break
            except StoreError as exc:
                if attempt == self.retries:
                    raise
                RETRIES.inc()
                self.echo(f"sink: load failed ({exc}); retrying the same batch ({attempt + 1}/{self.retries})")
                time.sleep(min(30.0, 0.5 * 2**attempt))
        BATCH_SECONDS.observe(time.monotonic() - started)
        BATCH_SIZE.observe(len(msgs))
        newest_ms = max((m.timestamp()[1] for m in msgs), default=0)
        if newest_ms > 0:
            FRESHNESS.observe(max(0.0, time.time() - newest_ms / 1000))
        if outcome.newest_event_ms > 0:
            EVENT_FRESHNESS.observe(max(0.0, time.time() - outcome.newest_event_ms / 1000))
        if outcome.dead:
            self.producer.flush(30)
        self._commit(outcome.offsets)
        for kind, res in outcome.results.items():
            FACTS.labels(kind, "applied").inc(res.applied)
            FACTS.labels(kind, "stale").inc(res.stale)
            self.stats.applied += res.applied
            self.stats.stale += res.stale
        BATCHES.inc()
        self.stats.batches += 1
        self.stats.messages += len(msgs)
        self.stats.dead += outcome.dead
        return len(msgs)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import TopicPartition

        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        now = time.time()
        for (t, p), committed in offsets.items():
            LAST_COMMIT.labels(str(p)).set(now)
            try:  # the high watermark of the consumer's last fetch: no broker round trip per batch
                _low, high = self.consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except Exception:  # noqa: BLE001  (a metric must not stop the sink)
                continue
            if high is not None and high >= 0:
                LAG.labels(t, str(p)).set(max(0, high - committed))

    def run(self, max_messages: int | None = None, idle_timeout: float | None = None,
            archives: Sequence[Archive] = ()) -> SinkStats:
        """Loop until ``max_messages`` were loaded or nothing arrived for ``idle_timeout`` seconds
        (None: forever). ``archives`` (sinks.raw) take a batch each after every fact batch, in this
        thread on this store connection; an idle stop also waits until each is at the end of its
        partitions, so a finite run leaves nothing unarchived."""
        idle_since = time.monotonic()
        while not self.stopping and (max_messages is None or self.stats.messages < max_messages):
            left = None if max_messages is None else max_messages - self.stats.messages
            got = self.step(left)
            for a in archives:
                got += a.step()
            if got:
                idle_since = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                if all(a.caught_up() for a in archives):
                    break
                idle_since = time.monotonic()
        return self.stats


def take_batch(consumer: Any, limit: int, seconds: float, *, poll: float = 0.5, missing_topics_ok: bool = False,
               stopping: Callable[[], bool] = lambda: False, what: str = "") -> list[Any]:
    """Up to ``limit`` messages within ``seconds`` (a backlog fills the batch at once; light load
    waits out the time), for every consume -> insert -> commit loop of the platform. Partition EOF
    is skipped, and with ``missing_topics_ok`` (pattern subscriptions) an unknown topic too; any
    other broker error raises :class:`SinkError` (``what`` names the loop in the message)."""
    from confluent_kafka import KafkaError

    skip = {KafkaError._PARTITION_EOF, *((KafkaError.UNKNOWN_TOPIC_OR_PART,) if missing_topics_ok else ())}
    out: list[Any] = []
    deadline = time.monotonic() + seconds
    while len(out) < limit and not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for m in consumer.consume(num_messages=min(limit - len(out), 10_000), timeout=min(left, poll)):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() not in skip:
                raise SinkError(f"{what}Kafka error reading {m.topic()}: {err}")
    return out


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    """Manual commits after the insert; start from the beginning of a new group's partitions."""
    return {
        "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "enable.partition.eof": False, "log_level": 0,
        "partition.assignment.strategy": "cooperative-sticky",
        # a killed sink's partitions go to its successor after 10 s, not the default 45 s
        "session.timeout.ms": 10_000,
    }
