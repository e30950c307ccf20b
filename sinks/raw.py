"""The raw archive in the store: accepted trust events -> ``raw_events``, dead letters -> ``dead_letters``.

Both tables come from migration 0010. The process that owns the store writes them (chDB allows one
opener), so ``amb sink`` runs these two consumers beside its fact loader, each with its own
consumer group (``<prefix>-raw-archive``, ``<prefix>-dead-letters``) and the same loop as the fact
sink: take a batch -> rows (pure functions below) -> one columnar insert with a deduplication
token naming the batch's offsets -> commit the offsets only after the insert returned. A crash
replays from the last commit; the tables' sort keys (event id; DLQ position) collapse whatever a
replay re-inserts, so reads use ``FINAL`` and nothing is counted twice.

An event is archived when the worker would accept it: the same codec, validation and key rule
(:func:`amb.archive.accept`), with the clock recorded in ``accepted_ms`` so a rebuild re-validates
it the same way. A refused event is the worker's to dead-letter; it reaches ``dead_letters`` from
the DLQ topic, so every message is in exactly one of the two tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa

from amb.archive import RawMessage, Validator, accept
from sinks.store import Store

RAW_SCHEMA: Final = pa.schema([
    ("trust", pa.string()), ("incident_id", pa.string()), ("event_id", pa.string()),
    ("event_type", pa.string()), ("event_time_ms", pa.int64()), ("kafka_ts_ms", pa.int64()),
    ("accepted_ms", pa.int64()), ("topic", pa.string()), ("partition", pa.uint32()),
    ("offset", pa.uint64()), ("key", pa.binary()), ("payload", pa.binary()),
])
DEAD_SCHEMA: Final = pa.schema([
    ("dlq_partition", pa.uint32()), ("dlq_offset", pa.uint64()), ("trust", pa.string()),
    ("reason", pa.string()), ("reasons", pa.string()), ("message", pa.string()),
    ("source_topic", pa.string()), ("source_partition", pa.int32()), ("source_offset", pa.int64()),
    ("dead_lettered_ms", pa.int64()), ("kafka_ts_ms", pa.int64()), ("replays", pa.uint16()),
    ("key", pa.binary()), ("payload", pa.binary()),
])
RAW_TABLE: Final = "raw_events"
DEAD_TABLE: Final = "dead_letters"


@dataclass
class RawStats:
    messages: int = 0
    rows: int = 0
    refused: int = 0
    batches: int = 0
    refused_by_code: dict[str, int] = field(default_factory=dict)


def raw_rows(messages: Sequence[RawMessage], now_ms: int, validate: Validator, stats: RawStats | None = None) -> pa.Table:
    """The ``raw_events`` rows of the messages the worker accepts (the rest are counted, not kept)."""
    from streams.pipeline import trust_of_events_topic

    stats = stats if stats is not None else RawStats()
    cols: list[list[Any]] = [[] for _ in RAW_SCHEMA]
    for m in messages:
        stats.messages += 1
        ev, code = accept(m, validate(m.value, now_ms, m.topic, trust_of_events_topic(m.topic)))
        if ev is None or m.value is None:
            stats.refused += 1
            stats.refused_by_code[str(code)] = stats.refused_by_code.get(str(code), 0) + 1
            continue
        row = (ev.trust, ev.incident_id, ev.event_id, str(ev.event_type), ev.event_time, m.timestamp_ms, now_ms,
               m.topic, m.partition, m.offset, m.key or b"", m.value)
        for c, v in zip(cols, row, strict=True):
            c.append(v)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, RAW_SCHEMA, strict=True)],
                                schema=RAW_SCHEMA)


def _iso_ms(text: str, default: int) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return default


def dead_letter_rows(messages: Sequence[Any]) -> pa.Table:
    """``dead_letters`` rows from DLQ messages (confluent_kafka.Message or alike), headers unpacked
    by :class:`amb.dlq.DeadLetter`; the trust from the source events topic, else the key's prefix."""
    from amb.dlq import DeadLetter
    from streams.pipeline import trust_of_events_topic

    cols: list[list[Any]] = [[] for _ in DEAD_SCHEMA]
    for m in messages:
        d = DeadLetter.from_message(m)
        ts_type, ts = m.timestamp()
        kafka_ts = ts if ts_type and ts > 0 else 0
        trust = trust_of_events_topic(d.source_topic) if d.source_topic else None
        if not trust and d.key:
            head = d.key.split(b":", 1)[0].decode("ascii", "replace")
            trust = head if head.isalnum() and head.isupper() and len(head) <= 5 else ""
        row = (d.partition, d.offset, trust or "", d.reason, ";".join(d.reasons), d.message, d.source_topic,
               -1 if d.source_partition is None else d.source_partition,
               -1 if d.source_offset is None else d.source_offset, _iso_ms(d.time, kafka_ts), kafka_ts, d.replays,
               d.key or b"", d.value or b"")
        for c, v in zip(cols, row, strict=True):
            c.append(v)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, DEAD_SCHEMA, strict=True)],
                                schema=DEAD_SCHEMA)


def batch_token(table: str, messages: Sequence[Any]) -> str:
    """``table:topic:partition:first-last;...``: the same batch cut gives the same token."""
    spans: dict[tuple[str, int], list[int]] = {}
    for m in messages:
        spans.setdefault((str(m.topic()), int(m.partition() or 0)), []).append(int(m.offset() or 0))
    return table + ":" + ";".join(f"{t}:{p}:{min(o)}-{max(o)}" for (t, p), o in sorted(spans.items()))


class TopicArchiver:
    """take a batch -> rows -> insert (token) -> commit, for one table; see the module docstring."""

    def __init__(self, store: Store, consumer: Any, topics: Sequence[str], table: str,
                 to_rows: Callable[[Sequence[Any]], pa.Table], batch_size: int = 20_000,
                 batch_seconds: float = 1.0) -> None:
        self.store, self.consumer, self.table, self.to_rows = store, consumer, table, to_rows
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.stats = RawStats()
        self.assigned: list[Any] = []
        self._pending: list[Any] = []
        self._since = 0.0
        consumer.subscribe(list(topics), on_assign=self.on_assign)

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigned = list(partitions)

    def step(self) -> int:
        """Take what is there now without waiting (the fact sink shares this thread, and its
        freshness must not wait on the archive), and insert once ``batch_size`` messages are
        gathered or the oldest has waited ``batch_seconds``. Returns the messages taken."""
        from sinks.sink import take_batch

        msgs = take_batch(self.consumer, self.batch_size - len(self._pending), 0.005, poll=0.005,
                          missing_topics_ok=True, what=f"{self.table}: ")
        if msgs and not self._pending:
            self._since = time.monotonic()
        self._pending += msgs
        if self._pending and (len(self._pending) >= self.batch_size
                              or time.monotonic() - self._since >= self.batch_seconds):
            self._insert(self._pending)
            self._pending = []
        return len(msgs)

    def _insert(self, msgs: Sequence[Any]) -> None:
        from confluent_kafka import TopicPartition

        rows = self.to_rows(msgs)
        self.store.insert_arrow(self.table, rows, batch_token(self.table, msgs))
        nxt: dict[tuple[str, int], int] = {}
        for m in msgs:
            k = (str(m.topic()), int(m.partition() or 0))
            nxt[k] = max(nxt.get(k, 0), int(m.offset() or 0) + 1)
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()], asynchronous=False)
        self.stats.batches += 1
        self.stats.rows += rows.num_rows

    def caught_up(self) -> bool:
        """Every assigned partition's committed offset is at its end: a finite run may stop."""
        if not self.assigned:
            return False
        try:
            committed = self.consumer.committed(self.assigned, timeout=5.0)
            for tp in committed:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=5.0)
                if high > 0 and (tp.offset is None or tp.offset < high):
                    return False
        except Exception:  # noqa: BLE001 - a broker hiccup: not caught up yet
            return False
        return True

    def close(self) -> None:
        self.consumer.close()


def consumer(settings: Any, group: str) -> Any:
    """A manual-commit consumer as the sink principal (not yet subscribed)."""
    from confluent_kafka import Consumer

    from amb.security import client_config
    from sinks.sink import consumer_config

    return Consumer({**consumer_config(settings.bootstrap, group), "topic.metadata.refresh.interval.ms": 5000,
                     **client_config(settings, "sink")})


def raw_archiver(settings: Any, store: Store, batch_size: int = 20_000, group: str | None = None) -> TopicArchiver:
    """Every trust's events topic -> ``raw_events`` (group ``<prefix>-raw-archive``)."""
    from amb.codec import Codec
    from amb.topics import events_pattern

    validate = Codec.from_settings(settings).decode_and_validate

    def rows(msgs: Sequence[Any]) -> pa.Table:
        return raw_rows([RawMessage.of(m) for m in msgs], int(time.time() * 1000), validate, arch.stats)

    arch = TopicArchiver(store, consumer(settings, group or f"{settings.topic_prefix}-raw-archive"),
                         [events_pattern(settings)], RAW_TABLE, rows, batch_size)
    return arch


def dead_letter_archiver(settings: Any, store: Store, batch_size: int = 20_000) -> TopicArchiver:
    """The ``<prefix>.dlq`` topic -> ``dead_letters`` (group ``<prefix>-dead-letters``)."""
    from amb.topics import dlq_topic

    return TopicArchiver(store, consumer(settings, f"{settings.topic_prefix}-dead-letters"), [dlq_topic(settings)],
                         DEAD_TABLE, dead_letter_rows, batch_size)
