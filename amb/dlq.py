"""The dead-letter topic, ``<prefix>.dlq``: every message refused on the way in, kept with its reason.

A dead letter is the ORIGINAL message (value and key byte for byte, its headers too) plus
``amb.dlq.*`` headers saying why and where it came from, so nothing refused is lost and it can be
re-driven to its source topic unchanged once the cause is fixed (``amb dlq replay``)::

    amb.dlq.reason            first reason code (domain.validation.Code), e.g. undecodable
    amb.dlq.reasons           every reason code, ';'-separated
    amb.dlq.message           the human message(s)
    amb.dlq.source.topic      where the message was read
    amb.dlq.source.partition
    amb.dlq.source.offset
    amb.dlq.time              when it was dead-lettered (ISO 8601 UTC)
    amb.dlq.replays           how many times it has been replayed before (absent = never)

The stream worker calls :func:`dead_letter` with its own producer; `amb dlq show` and
`amb dlq replay` use :func:`read_dead_letters` and :func:`replay`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from amb.config import Settings
from amb.errors import AmbError
from domain.events import format_time
from domain.validation import Code, Reason, Rejection

PREFIX: Final = "amb.dlq."
H_REASON: Final = PREFIX + "reason"
H_REASONS: Final = PREFIX + "reasons"
H_MESSAGE: Final = PREFIX + "message"
H_TOPIC: Final = PREFIX + "source.topic"
H_PARTITION: Final = PREFIX + "source.partition"
H_OFFSET: Final = PREFIX + "source.offset"
H_TIME: Final = PREFIX + "time"
H_REPLAYS: Final = PREFIX + "replays"

HeaderList = list[tuple[str, bytes]]
Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None


def dlq_topic_for(source_topic: str, settings: Settings | None = None) -> str:
    """``<prefix>.dlq``: from settings when given, else from an events topic name (``amb.events.RX7`` -> ``amb.dlq``)."""
    if settings is not None:
        from amb.topics import dlq_topic

        return dlq_topic(settings)
    prefix, sep, _ = source_topic.partition(".events.")
    if not sep or not prefix:
        raise AmbError(f"cannot tell the dead-letter topic for {source_topic!r}: pass settings or dlq_topic")
    return f"{prefix}.dlq"


def _reason_parts(reason: Rejection | Reason | str | tuple[str, str]) -> tuple[list[str], str]:
    if isinstance(reason, Rejection):
        return [str(r.code) for r in reason.reasons], reason.message
    if isinstance(reason, Reason):
        return [str(reason.code)], reason.message
    if isinstance(reason, tuple):
        return [reason[0]], reason[1]
    return [reason], reason


def _header_list(headers: Headers) -> HeaderList:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: HeaderList = []
    for k, v in items:
        out.append((k, b"" if v is None else v.encode() if isinstance(v, str) else bytes(v)))
    return out


def dead_letter(
    producer: Any,
    original_msg_value: bytes | None,
    original_key: bytes | str | None,
    reason: Rejection | Reason | str | tuple[str, str],
    source_topic: str,
    partition: int,
    offset: int,
    headers: Headers = None,
    *,
    dlq_topic: str | None = None,
    settings: Settings | None = None,
    now_ms: int | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Produce one refused message to the dead-letter topic: original bytes, original headers, and why.

    ``reason`` is a Rejection (from decode_and_validate), a Reason, a code string, or (code,
    message). The topic is ``dlq_topic``, else from ``settings``, else derived from an events
    topic's name. The caller owns ``producer`` (and flushes it before committing its offsets).
    """
    topic = dlq_topic or dlq_topic_for(source_topic, settings)
    codes, message = _reason_parts(reason)
    kept = [(k, v) for k, v in _header_list(headers) if not k.startswith(PREFIX) or k == H_REPLAYS]
    at = now_ms if now_ms is not None else int(time.time() * 1000)
    kept += [
        (H_REASON, codes[0].encode()),
        (H_REASONS, ";".join(codes).encode()),
        (H_MESSAGE, message.encode()[:4000]),
        (H_TOPIC, source_topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIME, format_time(at).encode()),
    ]
    kwargs: dict[str, Any] = {"headers": kept}
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, original_msg_value, original_key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic, headers unpacked."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    reasons: tuple[str, ...]
    message: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    time: str
    replays: int
    headers: HeaderList = field(default_factory=list)
    """The original message's own headers (without the amb.dlq.* ones)."""

    def matches(self, reason: str | None) -> bool:
        return reason is None or reason == self.reason or reason in self.reasons

    @classmethod
    def from_message(cls, msg: Any) -> DeadLetter:
        raw = msg.headers() or []
        h: dict[str, str] = {}
        own: HeaderList = []
        for k, v in raw:
            if k.startswith(PREFIX):
                h[k] = (v or b"").decode("utf-8", "replace")
            else:
                own.append((k, v or b""))
        reasons = tuple(x for x in h.get(H_REASONS, h.get(H_REASON, "")).split(";") if x)
        return cls(
            partition=msg.partition(), offset=msg.offset(), key=msg.key(), value=msg.value(),
            reason=h.get(H_REASON, "unknown"), reasons=reasons or ("unknown",), message=h.get(H_MESSAGE, ""),
            source_topic=h.get(H_TOPIC, ""), source_partition=_int(h.get(H_PARTITION)),
            source_offset=_int(h.get(H_OFFSET)), time=h.get(H_TIME, ""), replays=_int(h.get(H_REPLAYS)) or 0,
            headers=own,
        )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def read_dead_letters(
    bootstrap: str, dlq_topic: str, *, reason: str | None = None, timeout: float = 10.0,
    on_progress: Callable[[int], None] | None = None, config: Mapping[str, Any] | None = None,
    group_prefix: str = "amb",
) -> Iterator[DeadLetter]:
    """Every dead letter now in ``dlq_topic``, oldest first per partition; filtered by reason code.

    Reads from the beginning to the end offsets seen at the start, with a throwaway group and no
    commits: looking does not move anything.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"{group_prefix}-dlq-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False, "enable.partition.eof": False, "log_level": 3, **(config or {}),
    })
    try:
        meta = consumer.list_topics(dlq_topic, timeout=timeout).topics.get(dlq_topic)
        if meta is None or meta.error is not None:
            raise AmbError(f"dead-letter topic {dlq_topic} does not exist on {bootstrap} "
                           "(`amb stack up` creates it)")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(dlq_topic, p, OFFSET_BEGINNING))
        if not ends:
            return
        consumer.assign(starts)
        seen = 0
        deadline = time.monotonic() + timeout
        while ends:
            batch = consumer.consume(num_messages=500, timeout=0.5)
            if batch:
                deadline = time.monotonic() + timeout
            elif time.monotonic() > deadline:
                raise AmbError(f"timed out reading {dlq_topic}: partitions {sorted(ends)} did not reach their end")
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AmbError(f"reading {dlq_topic}: {err.str()}")
                end = ends.get(msg.partition() or 0)
                offset = msg.offset()
                if end is None or offset is None or offset >= end:
                    continue  # arrived after we started: the next look will show it
                seen += 1
                letter = DeadLetter.from_message(msg)
                if letter.matches(reason):
                    yield letter
            # Done with a partition once its position passes the end seen at the start (offsets
            # may have gaps, so "saw offset end-1" is not enough).
            for tp in consumer.position([TopicPartition(dlq_topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
            if on_progress is not None:
                on_progress(seen)
    except KafkaException as exc:
        raise AmbError(f"reading {dlq_topic}: {exc.args[0]}") from None
    finally:
        consumer.close()


@dataclass
class ReplayReport:
    """What a replay did: per source topic counts, and what could not be re-driven."""

    replayed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.replayed.values())


def replay(
    bootstrap: str, dlq_topic: str, *, reason: str | None = None, dry_run: bool = False,
    limit: int | None = None, timeout: float = 10.0, producer: Any = None,
    config: Mapping[str, Any] | None = None, group_prefix: str = "amb",
) -> ReplayReport:
    """Re-drive dead letters (those with ``reason``, or all) to their source topics, bytes unchanged.

    Each replayed message carries its original headers plus ``amb.dlq.replays`` = previous + 1.
    Consumers are idempotent on event id, so replaying twice is harmless. The dead-letter topic is
    append-only and is not changed: a replayed message that fails again comes back with its
    replay count, so a loop is visible.
    """
    report = ReplayReport()
    own = producer is None
    if own and not dry_run:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                             "log_level": 3, **(config or {})})

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            report.failed += 1
            report.errors[err.str()] += 1
            report.replayed[msg.topic()] -= 1

    for letter in read_dead_letters(bootstrap, dlq_topic, reason=reason, timeout=timeout):
        if limit is not None and report.total >= limit:
            break
        if not letter.source_topic:
            report.skipped += 1
            continue
        report.replayed[letter.source_topic] += 1
        if dry_run:
            continue
        headers = [*letter.headers, (H_REPLAYS, str(letter.replays + 1).encode())]
        while True:
            try:
                producer.produce(letter.source_topic, letter.value, letter.key, headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer is not None and not dry_run:
        remaining = producer.flush(60)
        if remaining:
            report.failed += remaining
            report.errors[f"{remaining} not acknowledged within 60 s"] += 1
    report.replayed = +report.replayed  # drop topics whose every replay failed
    return report


def reason_codes() -> list[str]:
    """Every reason code a dead letter can carry (for help texts and completion)."""
    return [c.value for c in Code]
