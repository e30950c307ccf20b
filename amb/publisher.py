"""TrustPublisher: the SDK a trust uses to put its events on its own Kafka topic.

Everything goes through the same validation as the stream side (domain.validation) before it is
sent; an invalid record is not sent but reported (``on_reject`` and the per-reason counts), never
dropped silently. Valid events are Avro-encoded (amb.codec) and produced with an idempotent
producer (no duplicates from retries, per-partition order kept) to ``<prefix>.events.<ODS>``, keyed
``trust:incident`` so one incident's events stay ordered on one partition.

    with TrustPublisher(settings, "RX7") as pub:
        pub.publish_records(enumerate(records, start=1))   # interchange dicts, with line numbers
        pub.publish_events(events)                         # or domain Events
        pub.publish_csv(amb.columnar.read_csv(data))       # or a whole CSV export, in bulk
    print(pub.stats.delivered, pub.stats.rejected)

Bulk path: ``publish_csv`` (a plain CSV export in memory) and ``publish_batch`` (Arrow string
columns) validate and encode in the ``amb_native`` extension (native/, see amb/columnar.py), to the
same verdicts and the same bytes as the row path, several times faster; rows it is unsure about
go through domain.validation as usual. Without the extension they are unavailable (``columnar()``
is None, logged) and `amb publish` reads row by row.

Delivery accounting: librdkafka reports only failed deliveries (``delivery.report.only.error``);
a Python callback per delivered message would cost more than producing it. After ``flush()``,
``delivered = sent - failed`` exactly, because flush returns only when every message has been
acknowledged by the broker or has failed (and failures are counted by the callback).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from amb.codec import Codec, event_from_avro
from amb.config import Settings
from amb.errors import AmbError
from amb.metrics import PUBLISHER_EVENTS, PUBLISHER_FAILED, PUBLISHER_REJECTED
from domain.events import TRUSTS, Event
from domain.validation import Code, Reason, Rejection, check_event, parse_record, surely_valid

if TYPE_CHECKING:
    import pyarrow as pa

    from amb.columnar import CsvExport

PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "enable.idempotence": True,        # acks=all, retries without duplicates or reordering
    "linger.ms": 20,                   # batch up to 20 ms of events per partition
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "delivery.report.only.error": True,
    "message.timeout.ms": 120_000,
}
"""librdkafka settings of the publisher; ``producer_config`` overrides any of them."""

log = logging.getLogger("amb.publisher")

FIRST_LINES: Final = 5
"""Line numbers kept per rejection reason for the summary (every line goes to ``on_reject``)."""


@dataclass
class RejectedRecord:
    """One record that was not sent: where it came from and why."""

    line: int | None
    rejection: Rejection
    record: Mapping[str, Any] | Event | None = None


@dataclass
class PublishStats:
    """Counts of one publisher's life; ``delivered`` is exact after ``flush()``/``close()``."""

    sent: int = 0
    failed: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    by_reason: Counter[str] = field(default_factory=Counter)
    first_lines: dict[str, list[int]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def delivered(self) -> int:
        return self.sent - self.failed

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Events sent per second of wall time."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def reject(self, line: int | None, rejection: Rejection) -> None:
        self.rejected += 1
        reason = rejection.reasons[0]
        key = f"{reason.code} ({reason.field})" if reason.field else str(reason.code)
        self.by_reason[key] += 1
        if line is not None:
            lines = self.first_lines.setdefault(key, [])
            if len(lines) < FIRST_LINES:
                lines.append(line)


class TrustPublisher:
    """Validates, encodes and produces one trust's events. Use as a context manager (flushes on exit)."""

    def __init__(
        self,
        settings: Settings,
        trust: str,
        *,
        topic: str | None = None,
        codec: Codec | None = None,
        producer_config: Mapping[str, Any] | None = None,
        on_reject: Callable[[RejectedRecord], None] | None = None,
        dry_run: bool = False,
        check_broker: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if trust not in TRUSTS:
            raise AmbError(f"unknown trust {trust!r}: expected an ambulance trust ODS code ({', '.join(TRUSTS)})")
        self.settings = settings
        self.trust = trust
        self.topic = topic or _events_topic(settings, trust)
        self.codec = codec or Codec.from_settings(settings)
        self.on_reject = on_reject
        self.dry_run = dry_run
        self.stats = PublishStats()
        self._m_events = PUBLISHER_EVENTS.labels(trust)
        self._clock = clock
        self._producer: Any = None
        if not dry_run:
            from confluent_kafka import KafkaException, Producer

            from amb.security import client_config, trust_principal

            login = client_config(settings, trust_principal(trust))
            if check_broker:
                from amb.stack.kafka import require_broker

                require_broker(settings.bootstrap, config=login)
            conf = {
                **PRODUCER_DEFAULTS,
                **login,
                "bootstrap.servers": settings.bootstrap,
                "client.id": f"amb-publisher-{trust}",
                "error_cb": self._on_error,
                # one delivery callback for every message, set once: passing it to each produce()
                # call costs almost as much as the call itself
                "on_delivery": self._on_delivery,
                **(producer_config or {}),
            }
            try:
                self._producer = Producer(conf)
            except KafkaException as exc:
                raise AmbError(f"cannot create the Kafka producer: {exc.args[0].str()}") from None
        self._errors: list[str] = []

    # -- public API ---------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def publish(self, item: Mapping[str, Any] | Event, line: int | None = None) -> bool:
        """Validate and send one record or Event; False (and reported) when it is rejected."""
        self._check_open()
        if isinstance(item, Event):
            return self.publish_events((item,), first_line=line) == 1
        return self.publish_records(((line, item),)) == 1

    def publish_records(self, records: Iterable[tuple[int | None, Mapping[str, Any] | Event | Rejection]]) -> int:
        """Interchange records with their line numbers (None when there is none). Returns how many were sent.

        An item may also be an Event (e.g. from an Avro file of platform events) or a Rejection
        (a line the reader could not turn into a record: it is reported like any other reject).
        """
        self._check_open()
        now = self.now_ms()
        trust = self.trust
        valid: list[Event] = []
        sent = 0
        for line, record in records:
            if isinstance(record, Rejection):
                self._reject(line, record, None)
                continue
            if isinstance(record, Event):
                reasons = check_event(record, now_ms=now, trust=trust)
                result: Event | Rejection = record if not reasons else Rejection(
                    tuple(reasons), record.event_id, record.trust, record.incident_id)
            else:
                result = parse_record(record, now_ms=now, trust=trust)
            if isinstance(result, Rejection):
                self._reject(line, result, record)
                continue
            valid.append(result)
            if len(valid) >= 5000:
                sent += self._send(valid, now, validated=True)
                valid = []
                now = self.now_ms()
        if valid:
            sent += self._send(valid, now, validated=True)
        return sent

    def publish_events(self, events: Iterable[Event], first_line: int | None = None) -> int:
        """Domain Events (e.g. from a simulator); ``first_line`` numbers them for reports. Returns how many were sent."""
        self._check_open()
        batch = events if isinstance(events, list | tuple) else list(events)
        return self._send(batch, self.now_ms(), validated=False, first_line=first_line)

    def columnar(self) -> Any | None:
        """The native bulk encoder when this publisher can use it, else None (with the reason logged).

        It writes the current schema in single-object framing; a registry (Confluent framing) or
        another schema takes the row path.
        """
        from amb.columnar import NATIVE_FINGERPRINT, load_native  # pyarrow: only when used

        native = load_native()
        if native is None:
            return None
        if self.codec.wire != "single" or self.codec.fingerprint.hex() != NATIVE_FINGERPRINT:
            log.warning("amb publish: the native encoder writes single-object %s only; this publisher "
                        "writes %s %s, so rows take the Python path", NATIVE_FINGERPRINT, self.codec.wire,
                        self.codec.fingerprint.hex())
            return None
        return native

    def publish_csv(self, export: CsvExport, progress: Callable[[int], None] | None = None) -> int:
        """A plain CSV export (amb.columnar.read_csv) -> validated, encoded and produced in bulk,
        ``BLOCK_ROWS`` rows per native call. Returns how many were sent; ``progress`` gets the rows
        done after each block.

        Rows the native code is not sure about are judged by ``parse_record`` exactly as on the row
        path (same reasons, same line numbers); Kafka order is the file's order.
        """
        from amb.columnar import BLOCK_ROWS

        self._check_open()
        native = self.columnar()
        if native is None:
            raise AmbError("the columnar path needs the amb_native extension and the current schema")
        slots = export.slots()
        data, pos, line, sent, done = export.data, export.start, 2, 0, 0  # the header is line 1
        while pos < len(data):
            now = self.now_ms()
            values, keys, slow, pos = native.encode_csv(data, pos, BLOCK_ROWS, slots, self.trust, now,
                                                        self.codec.header)
            block = len(values)
            if slow:
                records = [(i, export.row(begin, end)) for i, begin, end in slow]
                values, keys = self._judge(records, values, keys, line, now)
            sent += self._produce_all(values, keys)
            line += block
            done += block
            if progress is not None:
                progress(done)
        return sent

    def _judge(self, records: list[tuple[int, dict[str, Any]]], values: list[Any], keys: list[Any],
               first_line: int | None, now: int) -> tuple[list[bytes], list[bytes]]:
        """The rows the native code left to the Python rules: rejected (reported) or encoded here."""
        rejected = 0
        for i, record in records:
            result = parse_record(record, now_ms=now, trust=self.trust)
            if isinstance(result, Rejection):
                self._reject(None if first_line is None else first_line + i, result, record)
                rejected += 1
            else:  # valid, in a spelling the native code leaves to Python
                values[i] = self.codec.encode(result, now, self.topic)
                keys[i] = result.key.encode()
        if rejected:
            values = [v for v in values if v is not None]
            keys = [k for k in keys if k is not None]
        return values, keys

    def publish_batch(self, batch: pa.RecordBatch, first_line: int | None = None) -> int:
        """A record batch of interchange string columns (a CSV export read by amb.columnar.read_csv)
        -> validated, encoded and produced in bulk. Returns how many were sent.

        Rows the native code is not sure about are judged by ``parse_record`` as on the row path,
        so rejections carry the same reasons; ``first_line`` numbers the rows for reports. Kafka
        order is the file's order. Needs ``columnar()`` to be non-None.
        """
        self._check_open()
        native = self.columnar()
        if native is None:
            raise AmbError("the columnar path needs the amb_native extension and the current schema")
        from amb.columnar import encode_batch, rows_of

        now = self.now_ms()
        values, keys, slow = encode_batch(native, batch, self.trust, now, self.codec.header)
        if slow:
            values, keys = self._judge(list(zip(slow, rows_of(batch, slow), strict=True)), values, keys,
                                       first_line, now)
        return self._produce_all(values, keys)

    def publish_encoded(self, values: Iterable[tuple[bytes, bytes | str]]) -> int:
        """Already-encoded (value, key) pairs, e.g. a replay; no validation. Returns how many were sent."""
        self._check_open()
        n = 0
        for value, key in values:
            self._produce(value, key)
            n += 1
        self.stats.sent += n
        self._m_events.inc(n)
        return n

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for every sent event to be acknowledged or failed; returns how many are still in flight."""
        if self._producer is None:
            return 0
        remaining = int(self._producer.flush(timeout))
        if remaining:
            self._errors.append(f"{remaining} events still unacknowledged after {timeout:.0f} s")
        return remaining

    def close(self, timeout: float = 60.0) -> None:
        """Flush, count what is still unacknowledged as failed, and release the Kafka client."""
        if self.stats.finished is not None:
            return
        remaining = self.flush(timeout)
        self.stats.failed += remaining
        self.stats.finished = time.monotonic()
        producer, self._producer = self._producer, None
        if producer is not None and hasattr(producer, "close"):
            producer.close()

    def __enter__(self) -> TrustPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def errors(self) -> list[str]:
        """Client-level errors seen (broker down, authorisation...), deduplicated, in order."""
        return list(dict.fromkeys(self._errors))

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.stats.finished is not None:
            raise AmbError("this TrustPublisher is closed")

    def _send(self, events: Iterable[Event], now: int, *, validated: bool, first_line: int | None = None) -> int:
        """The hot path: validate (unless done), encode the batch, produce. One clock reading per batch."""
        batch = self._valid(events, now, first_line) if not validated else (
            events if isinstance(events, list) else list(events))
        values = self.codec.encode_batch(batch, now, self.topic)
        return self._produce_all(values, [e.key for e in batch])

    def _produce_all(self, values: list[bytes], keys: list[str] | list[bytes] | list[str | bytes]) -> int:
        """Produce encoded values with their keys, in order; count them as sent."""
        producer = self._producer
        if producer is not None:
            produce = producer.produce
            topic = self.topic
            for value, key in zip(values, keys, strict=True):
                try:
                    produce(topic, value, key)
                except BufferError:  # local queue full: wait for room (back-pressure, not loss)
                    self._produce(value, key)
            producer.poll(0)
        self.stats.sent += len(values)
        self._m_events.inc(len(values))
        return len(values)

    def _valid(self, events: Iterable[Event], now: int, first_line: int | None) -> list[Event]:
        """The events that pass every rule; the others are reported with their line numbers."""
        trust = self.trust
        out: list[Event] = []
        keep = out.append
        for i, e in enumerate(events):
            if surely_valid(e, now, trust):
                keep(e)
                continue
            reasons = check_event(e, now_ms=now, trust=trust)
            if reasons:
                line = None if first_line is None else first_line + i
                self._reject(line, Rejection(tuple(reasons), e.event_id, e.trust, e.incident_id), e)
            else:  # pragma: no cover - surely_valid and check_event agree (property-tested)
                keep(e)
        return out

    def _produce(self, value: bytes, key: str | bytes) -> None:
        """Produce, waiting for room when librdkafka's local queue is full (back-pressure, not loss)."""
        if self._producer is None:
            return
        while True:
            try:
                self._producer.produce(self.topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        # Called only for failures (delivery.report.only.error).
        if err is not None:
            self.stats.failed += 1
            PUBLISHER_FAILED.labels(self.trust).inc()
            self.stats.failures[str(err.str() if hasattr(err, "str") else err)] += 1

    def _on_error(self, err: Any) -> None:
        self._errors.append(str(err.str() if hasattr(err, "str") else err))

    def _reject(self, line: int | None, rejection: Rejection, record: Mapping[str, Any] | Event | None) -> None:
        self.stats.reject(line, rejection)
        PUBLISHER_REJECTED.labels(self.trust, str(rejection.code)).inc()
        if self.on_reject is not None:
            self.on_reject(RejectedRecord(line, rejection, record))


def _events_topic(settings: Settings, trust: str) -> str:
    from amb.topics import events_topic

    return events_topic(settings, trust)


# ---------------------------------------------------------------------------------------------
# Reading trust export files

FORMATS: Final = ("jsonl", "csv", "avro")
_EXTENSIONS: Final = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".avro": "avro"}
RecordItem = tuple[int, Mapping[str, Any] | Event | Rejection]


class _CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read through it (for a progress bar over any format)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


class _Gunzip(io.RawIOBase):
    """A gzip stream whose damage (truncated, corrupt, not gzip at all) is one clear AmbError naming
    the file, not EOFError or zlib.error from deep inside a reader."""

    def __init__(self, stream: Any, name: str) -> None:
        self.gz = gzip.GzipFile(fileobj=stream)
        self.name_ = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self.gz.readinto(buffer)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise AmbError(f"{self.name_} is not a readable gzip file ({exc or type(exc).__name__}): "
                           "re-export or re-copy it") from None

    def close(self) -> None:
        self.gz.close()
        super().close()


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of the stream: a file read twice without seeking."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.rest.close()
        super().close()


class RecordFile:
    """A trust export file (JSON Lines, CSV or Avro container; optionally gzipped) as numbered records.

    Iterating yields ``(line, item)``: ``line`` is the physical line (JSON Lines, CSV) or the record
    number (Avro); ``item`` is a dict, an Event (Avro files of platform TrustEvents) or a Rejection
    for a line that is not a record at all.
    """

    def __init__(self, path: str | Path, fmt: str = "auto") -> None:
        self.path = Path(path)
        self.name = "stdin" if str(path) == "-" else str(path)
        if str(path) == "-":
            self._raw: BinaryIO = sys.stdin.buffer
            self.size = 0
        else:
            try:
                self._raw = self.path.open("rb")
            except OSError as exc:
                raise AmbError(f"cannot read {path}: {exc.strerror}") from None
            self.size = self.path.stat().st_size
        self._counter = _CountingReader(self._raw)
        stream: Any = io.BufferedReader(self._counter, 1 << 16)
        suffixes = [x.lower() for x in self.path.suffixes]
        if suffixes[-1:] == [".gz"] or stream.peek(2)[:2] == b"\x1f\x8b":
            stream = io.BufferedReader(_Gunzip(stream, self.name), 1 << 16)
            suffixes = suffixes[:-1]
        self._stream = stream
        self.format = fmt if fmt != "auto" else self._detect(suffixes)
        self.fields: list[str] = []
        self.why_rows = ""

    @property
    def bytes_read(self) -> int:
        return self._counter.count

    def columns(self) -> CsvExport | None:
        """The whole file read column-wise for TrustPublisher.publish_batch, or None: then iterate
        it row by row as usual (the reason is in ``why_rows``).

        Only plain CSV files are read this way (see amb.columnar.read_csv); the bytes read to find
        out are not lost: the row reader starts again from them.
        """
        from amb.columnar import MAX_BYTES, read_csv

        self.why_rows = ""
        if self.format != "csv":
            self.why_rows = f"{self.format} is read row by row"
            return None
        data = self._stream.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            self.why_rows = f"larger than {MAX_BYTES >> 20} MiB"
            result: Any = (None, self.why_rows)
        else:
            result = read_csv(data)
        if isinstance(result, tuple):
            self.why_rows = result[1]
            self._stream = io.BufferedReader(_Chain(data, self._stream), 1 << 16)
            return None
        columns: CsvExport = result
        self.fields = columns.fields
        return columns

    def _detect(self, suffixes: list[str]) -> str:
        if suffixes and suffixes[-1] in _EXTENSIONS:
            return _EXTENSIONS[suffixes[-1]]
        head = self._stream.peek(16)[:16] if hasattr(self._stream, "peek") else b""
        if head.startswith(b"Obj\x01"):
            return "avro"
        if head.lstrip().startswith(b"{"):
            return "jsonl"
        return "csv"

    def __iter__(self) -> Iterator[RecordItem]:
        if self.format == "jsonl":
            return self._jsonl()
        if self.format == "csv":
            return self._csv()
        if self.format == "avro":
            return self._avro()
        raise AmbError(f"unknown format {self.format!r}: expected one of auto, {', '.join(FORMATS)}")

    def close(self) -> None:
        self._stream.close()
        if self._raw is not sys.stdin.buffer:
            self._raw.close()

    def _text(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(self._stream, encoding="utf-8-sig", errors="replace", newline="")

    def _jsonl(self) -> Iterator[RecordItem]:
        loads = json.loads
        for line_no, line in enumerate(self._text(), start=1):
            if not line or line.isspace():
                continue
            try:
                record = loads(line)
            except ValueError as exc:
                yield line_no, _malformed(f"line {line_no} is not valid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield line_no, _malformed(f"line {line_no} is JSON but not an object")
                continue
            if not self.fields:
                self.fields = list(record)
            yield line_no, record

    def _csv(self) -> Iterator[RecordItem]:
        reader = csv.DictReader(self._text())
        self.fields = [f for f in (reader.fieldnames or []) if f]
        for row in reader:
            line_no = reader.line_num
            extra = row.pop(None, None)
            if extra:
                yield line_no, _malformed(f"line {line_no} has {len(self.fields) + len(extra)} cells, "
                                          f"the header has {len(self.fields)}")
                continue
            yield line_no, row

    def _avro(self) -> Iterator[RecordItem]:
        import fastavro

        try:
            reader = fastavro.reader(self._stream)
        except (*_DAMAGED_AVRO, TypeError) as exc:
            raise AmbError(f"{self.name} is not an Avro container file: {exc}") from None
        schema = reader.writer_schema
        name = str(schema.get("name", "")) if isinstance(schema, dict) else ""
        platform_events = name.rsplit(".", 1)[-1] == "TrustEvent"
        if isinstance(schema, dict):
            self.fields = [str(f["name"]) for f in schema.get("fields", [])]
        n = 0
        try:
            for n, record in enumerate(reader, start=1):  # noqa: B007 - n is read after the loop
                if not isinstance(record, dict):
                    yield n, _malformed(f"record {n} is not an Avro record")
                elif platform_events:
                    try:
                        yield n, event_from_avro(record)
                    except AmbError as exc:
                        yield n, _malformed(f"record {n}: {exc}")
                else:
                    yield n, record
        except (*_DAMAGED_AVRO, OSError) as exc:
            raise AmbError(f"{self.name}: Avro file is damaged after record {n}: {exc}") from None


# What fastavro's reader raises on damaged bytes: besides ValueError and EOFError, a damaged
# header or block can index past the end of a string or look up a missing schema key.
_DAMAGED_AVRO: Final = (ValueError, EOFError, IndexError, KeyError, OverflowError)


def _malformed(message: str) -> Rejection:
    return Rejection((Reason(Code.MALFORMED_RECORD, message),))
