"""The raw archive: every accepted trust event, kept on disk after the topics' retention drops it.

Layout (under ``AMB_DATA_DIR/archive``)::

    <trust>/<YYYY-MM-DD>/<topic>~p<partition>~<first offset>-<last offset>.avro
    _offsets/<topic>~p<partition>          next offset to read (text), written after the data

One Avro object container file per (trust, arrival day, source partition) per batch, immutable
once written: written to a temporary name, fsynced, renamed (atomic), directory fsynced. Each
record is the message exactly as consumed (value bytes, key, topic, partition, offset, Kafka
timestamp) plus ``accepted_ms``, the clock the validation ran with, so a rebuild re-validates the
same way. The file's metadata carries ``amb.sha256``, a digest of its records in order, and
``amb.records``; :func:`read_file` refuses a file whose records do not match (a torn or altered
file is an error, never silently skipped).

Exactly once: the position of a partition is the larger of its ``_offsets`` checkpoint and the
highest offset in its files, plus one. Data files are renamed before the checkpoint is written,
so a crash in between is healed by the files themselves: a restart neither re-archives nor skips
a message. A message refused by validation (the worker's DLQ reasons) is not archived but its
offset still moves the checkpoint. The archive keeps duplicates as sent (raw is raw); the rebuild
deduplicates by event id, as the oracle does.

A gap (the broker's earliest offset is past the archive's position: retention ran before the
archive caught up) is reported on the console and appended to ``_gaps.jsonl``, never skipped
silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import fastavro

from amb.config import Settings
from amb.errors import AmbError
from domain.events import Event
from domain.validation import Rejection

ARCHIVE_SCHEMA: Final[dict[str, Any]] = {
    "type": "record",
    "name": "ArchivedEvent",
    "namespace": "uk.nhs.amb.archive",
    "doc": "One accepted trust event as consumed from its events topic.",
    "fields": [
        {"name": "topic", "type": "string"},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "timestamp_ms", "type": "long", "doc": "Kafka message timestamp (0 if none)."},
        {"name": "accepted_ms", "type": "long", "doc": "The clock validation ran with."},
        {"name": "key", "type": ["null", "bytes"], "default": None},
        {"name": "value", "type": "bytes"},
        {"name": "event_id", "type": "string"},
        {"name": "trust", "type": "string"},
        {"name": "event_time", "type": "long"},
    ],
}
_PARSED: Final = fastavro.parse_schema(ARCHIVE_SCHEMA)
_FILE_RE: Final = re.compile(r"^(?P<topic>.+)~p(?P<partition>\d+)~(?P<first>\d{20})-(?P<last>\d{20})\.avro$")
OFFSETS_DIR: Final = "_offsets"
GAPS_FILE: Final = "_gaps.jsonl"


class ArchiveError(AmbError):
    """The archive is damaged or unreadable (one-line message names the file)."""


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    """One archived message; see ARCHIVE_SCHEMA."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    accepted_ms: int
    key: bytes | None
    value: bytes
    event_id: str
    trust: str
    event_time: int

    def as_avro(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "timestamp_ms": self.timestamp_ms, "accepted_ms": self.accepted_ms, "key": self.key,
                "value": self.value, "event_id": self.event_id, "trust": self.trust,
                "event_time": self.event_time}

    @property
    def day(self) -> date:
        """Arrival day (UTC) of the Kafka timestamp, else of ``accepted_ms``: the archive partition."""
        ms = self.timestamp_ms if self.timestamp_ms > 0 else self.accepted_ms
        return datetime.fromtimestamp(ms / 1000, UTC).date()


def archive_dir(settings: Settings) -> Path:
    return settings.data_dir / "archive"


def digest(records: Iterable[ArchivedRecord]) -> str:
    """sha256 over each record's identity and bytes, in order (the file checksum)."""
    h = hashlib.sha256()
    for r in records:
        key = r.key if r.key is not None else b""
        for part in (r.topic.encode(), r.partition.to_bytes(4, "big"), r.offset.to_bytes(8, "big", signed=True),
                     r.timestamp_ms.to_bytes(8, "big", signed=True), r.accepted_ms.to_bytes(8, "big", signed=True),
                     b"\x01" if r.key is not None else b"\x00", len(key).to_bytes(4, "big"), key,
                     len(r.value).to_bytes(4, "big"), r.value):
            h.update(part)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "~" in name:
        raise ArchiveError(f"cannot archive under the name {name!r}")
    return name


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{_safe(topic)}~p{partition}~{first:020d}-{last:020d}.avro"


def write_file(root: Path, records: Sequence[ArchivedRecord]) -> Path:
    """Write one immutable archive file for records of ONE trust, day and source partition
    (offsets ascending); atomic and durable when it returns."""
    if not records:
        raise ValueError("no records to archive")
    first = records[0]
    if any((r.trust, r.day, r.topic, r.partition) != (first.trust, first.day, first.topic, first.partition)
           for r in records):
        raise ValueError("an archive file holds one trust, day and source partition")
    offsets = [r.offset for r in records]
    folder = root / _safe(first.trust) / first.day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / file_name(first.topic, first.partition, min(offsets), max(offsets))
    if final.exists():  # the same offsets again (only after a lost checkpoint): identical content
        read_file(final)
        return final
    tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    meta = {"amb.sha256": digest(records), "amb.records": str(len(records))}
    with tmp.open("wb") as fh:
        fastavro.writer(fh, _PARSED, (r.as_avro() for r in records), codec="deflate", metadata=meta)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(folder)
    return final


def read_file(path: Path) -> list[ArchivedRecord]:
    """Every record of one archive file, checked against its digest and count."""
    try:
        with path.open("rb") as fh:
            reader = fastavro.reader(fh)
            meta = reader.metadata
            records = [ArchivedRecord(**rec) for rec in reader]  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - any failure of the reader on damaged bytes is damage
        raise ArchiveError(f"archive file {path} is unreadable: {type(exc).__name__}: {exc}"[:300]) from None
    want, count = meta.get("amb.sha256"), meta.get("amb.records")
    if want is None or count is None:
        raise ArchiveError(f"archive file {path} has no checksum metadata")
    if str(len(records)) != count or digest(records) != want:
        raise ArchiveError(f"archive file {path} fails its checksum ({len(records)} records, expected {count})")
    return records


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: Path
    trust: str
    day: date
    topic: str
    partition: int
    first: int
    last: int


def list_files(root: Path, since: date | None = None, until: date | None = None,
               trusts: Iterable[str] | None = None) -> list[FileEntry]:
    """Archive files, by (day, trust, topic, partition, first offset); optional day/trust filters."""
    wanted = None if trusts is None else set(trusts)
    out: list[FileEntry] = []
    if not root.is_dir():
        return out
    for trust_dir in sorted(root.iterdir()):
        if not trust_dir.is_dir() or trust_dir.name.startswith("_"):
            continue
        if wanted is not None and trust_dir.name not in wanted:
            continue
        for day_dir in sorted(trust_dir.iterdir()):
            try:
                day = date.fromisoformat(day_dir.name)
            except ValueError:
                continue
            if (since and day < since) or (until and day > until):
                continue
            for p in day_dir.iterdir():
                m = _FILE_RE.match(p.name)
                if m:
                    out.append(FileEntry(p, trust_dir.name, day, m["topic"], int(m["partition"]),
                                         int(m["first"]), int(m["last"])))
    out.sort(key=lambda f: (f.day, f.trust, f.topic, f.partition, f.first))
    return out


def iter_records(root: Path, since: date | None = None, until: date | None = None,
                 trusts: Iterable[str] | None = None,
                 on_file: Callable[[FileEntry, int], None] | None = None) -> Iterator[ArchivedRecord]:
    """Every archived record (checksums verified), file by file in :func:`list_files` order."""
    for entry in list_files(root, since, until, trusts):
        records = read_file(entry.path)
        if on_file is not None:
            on_file(entry, len(records))
        yield from records


# --- positions ----------------------------------------------------------------------------------

def _offset_file(root: Path, topic: str, partition: int) -> Path:
    return root / OFFSETS_DIR / f"{_safe(topic)}~p{partition}"


def checkpoint(root: Path, positions: dict[tuple[str, int], int]) -> None:
    """Record the next offset to read per partition (after the data files are durable)."""
    folder = root / OFFSETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for (topic, part), nxt in positions.items():
        path = _offset_file(root, topic, part)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{nxt}\n")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    _fsync_dir(folder)


def positions(root: Path) -> dict[tuple[str, int], int]:
    """Next offset to read per (topic, partition): the checkpoint or the files, whichever is further."""
    out: dict[tuple[str, int], int] = {}
    for f in list_files(root):
        k = (f.topic, f.partition)
        out[k] = max(out.get(k, 0), f.last + 1)
    folder = root / OFFSETS_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            topic, sep, part = p.name.rpartition("~p")
            if not sep or p.name.startswith(".") or not part.isdigit():
                continue
            try:
                nxt = int(p.read_text().strip())
            except ValueError:
                raise ArchiveError(f"archive checkpoint {p} is not an offset") from None
            k = (topic, int(part))
            out[k] = max(out.get(k, 0), nxt)
    return out


def note_gap(root: Path, topic: str, partition: int, expected: int, earliest: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / GAPS_FILE).open("a") as fh:
        fh.write(json.dumps({"topic": topic, "partition": partition, "archived_to": expected,
                             "earliest_on_broker": earliest, "lost": earliest - expected,
                             "noted_ms": int(time.time() * 1000)}) + "\n")


def gaps(root: Path) -> list[dict[str, Any]]:
    path = root / GAPS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the batch step (no Kafka) -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, m: Any) -> RawMessage:
        """From a confluent_kafka.Message (a missing timestamp is 0)."""
        ts_type, ts = m.timestamp()
        return cls(str(m.topic()), int(m.partition() or 0), int(m.offset() or 0), ts if ts_type and ts > 0 else 0,
                   m.key(), m.value())


@dataclass
class ArchiveStats:
    messages: int = 0
    archived: int = 0
    refused: int = 0
    files: int = 0
    refused_by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))


Validator = Callable[[bytes | None, int, str, str | None], "Event | Rejection"]


def accept(msg: RawMessage, event_or_rejection: Event | Rejection) -> tuple[Event | None, str | None]:
    """The worker's acceptance rule for one decoded message: (event, None) or (None, reason code).
    Besides decode and validation, the key must be trust:incident (streams.pipeline, WRONG_KEY)."""
    from streams.pipeline import WRONG_KEY

    if isinstance(event_or_rejection, Rejection):
        return None, str(event_or_rejection.code)
    ev = event_or_rejection
    if msg.key != ev.key.encode():
        return None, WRONG_KEY
    return ev, None


def _flush(root: Path, run: list[ArchivedRecord], stats: ArchiveStats) -> None:
    write_file(root, run)
    stats.files += 1
    stats.archived += len(run)


def archive_batch(root: Path, messages: Sequence[RawMessage], now_ms: int,
                  validate: Validator | None = None, stats: ArchiveStats | None = None) -> dict[tuple[str, int], int]:
    """Validate ``messages`` as the worker does, write the accepted ones (one file per trust, day
    and partition), then checkpoint. Returns the next offset per partition."""
    from streams.pipeline import trust_of_events_topic

    if validate is None:
        from amb.codec import default_codec

        validate = default_codec().decode_and_validate
    stats = stats if stats is not None else ArchiveStats()
    by_partition: dict[tuple[str, int], list[RawMessage]] = defaultdict(list)
    for m in messages:
        by_partition[(m.topic, m.partition)].append(m)
    nxt: dict[tuple[str, int], int] = {}
    for k, msgs in sorted(by_partition.items()):
        msgs.sort(key=lambda m: m.offset)
        nxt[k] = msgs[-1].offset + 1
        # Consecutive runs of one trust and day, written in offset order: after a crash, every
        # offset up to the last file written is archived, so the position taken from the files is
        # never past a message that is missing.
        run: list[ArchivedRecord] = []
        for m in msgs:
            stats.messages += 1
            ev, code = accept(m, validate(m.value, now_ms, m.topic, trust_of_events_topic(m.topic)))
            if ev is None or m.value is None:
                stats.refused += 1
                stats.refused_by_code[str(code)] += 1
                continue
            rec = ArchivedRecord(m.topic, m.partition, m.offset, m.timestamp_ms, now_ms, m.key, m.value,
                                 ev.event_id, ev.trust, ev.event_time)
            if run and (run[0].trust, run[0].day) != (rec.trust, rec.day):
                _flush(root, run, stats)
                run = []
            run.append(rec)
        if run:
            _flush(root, run, stats)
    if nxt:
        checkpoint(root, nxt)
    return nxt


def replay_events(root: Path, since: date | None = None, until: date | None = None,
                  on_file: Callable[[FileEntry, int], None] | None = None,
                  refused: list[tuple[ArchivedRecord, str]] | None = None,
                  validate: Validator | None = None) -> Iterator[Event]:
    """The archived events, re-validated with the clock they were accepted with (``validate``:
    a codec's decode_and_validate; default single-object only). A record the current code
    refuses (after a validation change) is appended to ``refused``, not yielded."""
    if validate is None:
        from amb.codec import default_codec

        validate = default_codec().decode_and_validate
    yield from revalidate(iter_records(root, since, until, on_file=on_file), validate, refused)


def revalidate(records: Iterable[ArchivedRecord], validate: Validator,
               refused: list[tuple[ArchivedRecord, str]] | None = None) -> Iterator[Event]:
    """Archived records (files or the store's raw_events) -> the events the current code accepts,
    validated with the clock each was accepted with; the others go to ``refused``."""
    from streams.pipeline import trust_of_events_topic

    for r in records:
        msg = RawMessage(r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value)
        ev, code = accept(msg, validate(r.value, r.accepted_ms, r.topic, trust_of_events_topic(r.topic)))
        if ev is None:
            if refused is not None:
                refused.append((r, str(code)))
            continue
        yield ev


# --- the Kafka consumer ------------------------------------------------------------------------

class Archiver:
    """consume a batch of every trust's events topic -> :func:`archive_batch` -> commit the group's
    offsets (monitoring only; the archive's own positions decide where to read)."""

    def __init__(self, settings: Settings, group: str | None = None, batch_size: int = 20_000,
                 batch_seconds: float = 2.0, echo: Callable[[str], None] = lambda _s: None) -> None:
        from confluent_kafka import Consumer

        from amb.security import client_config
        from amb.topics import events_pattern

        self.settings, self.root, self.echo = settings, archive_dir(settings), echo
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.stats = ArchiveStats()
        self.stopping = False
        self.assigned: list[Any] = []
        from amb.codec import Codec

        self.validate = Codec.from_settings(settings).decode_and_validate  # Confluent frames too
        conf = {"bootstrap.servers": settings.bootstrap, "group.id": group or f"{settings.topic_prefix}-archive",
                "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 0,
                "topic.metadata.refresh.interval.ms": 5000,
                # 10 s, as the worker (streams/app.py): a killed archiver's partitions stall this long
                "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
                **client_config(settings, "sink")}
        self.consumer = Consumer(conf)
        self.consumer.subscribe([events_pattern(settings)], on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        pos = positions(self.root)
        for tp in partitions:
            want = pos.get((tp.topic, tp.partition))
            if want is None:
                tp.offset = OFFSET_BEGINNING
                continue
            tp.offset = want
            with contextlib.suppress(Exception):
                low, _high = consumer.get_watermark_offsets(tp, timeout=5.0)
                if low > want:
                    note_gap(self.root, tp.topic, tp.partition, want, low)
                    self.echo(f"archive: GAP in {tp.topic}[{tp.partition}]: offsets {want}-{low - 1} expired "
                              f"from the broker before they were archived (noted in {self.root / GAPS_FILE})")
        consumer.assign(partitions)
        self.assigned = list(partitions)

    def caught_up(self) -> bool:
        """Assigned, and the archive's position (files and checkpoint) is at the end offset of every
        assigned partition: a finite run may stop."""
        from confluent_kafka import TopicPartition

        if not self.assigned:
            return False
        pos = positions(self.root)
        try:
            for t in self.assigned:
                _low, high = self.consumer.get_watermark_offsets(TopicPartition(t.topic, t.partition), timeout=5.0)
                if pos.get((t.topic, t.partition), 0) < high:
                    return False
        except Exception:  # noqa: BLE001 - a broker hiccup: not caught up yet
            return False
        return True

    def stop(self) -> None:
        self.stopping = True

    def step(self, limit: int) -> int:
        from confluent_kafka import TopicPartition

        from sinks.sink import take_batch

        msgs = [RawMessage.of(m) for m in take_batch(self.consumer, limit, self.batch_seconds, missing_topics_ok=True,
                                                     stopping=lambda: self.stopping, what="archive: ")]
        if not msgs:
            return 0
        nxt = archive_batch(self.root, msgs, int(time.time() * 1000), self.validate, self.stats)
        with contextlib.suppress(Exception):  # the group offsets are for lag dashboards only
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()],
                                 asynchronous=False)
        return len(msgs)

    def run(self, max_messages: int | None = None, idle_timeout: float | None = None) -> ArchiveStats:
        """Loop until ``max_messages`` or, ``idle_timeout``, that many seconds without a message,
        counted once the partitions are assigned and read to their end offsets (a group join alone
        can take longer than a short timeout)."""
        idle_since = time.monotonic()
        try:
            while not self.stopping and (max_messages is None or self.stats.messages < max_messages):
                left = self.batch_size if max_messages is None else min(self.batch_size,
                                                                        max_messages - self.stats.messages)
                if self.step(left):
                    idle_since = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                    if self.caught_up():
                        break
                    idle_since = time.monotonic()
        finally:
            self.consumer.close()
        return self.stats
