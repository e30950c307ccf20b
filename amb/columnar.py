"""The columnar fast path of `amb publish`: a whole CSV export validated and encoded in bulk.

Per event, the row path (domain.validation.parse_record, then the generated Avro encoder) costs
~4 us of Python, several times what producing the message to Kafka costs. Here the file is read
into memory and the ``amb_native`` extension (native/, Rust) splits its lines, decides for each row whether it is *surely valid* under domain/validation.py and, if so, writes the
very bytes amb/codec.py would (single-object framing of schemas/trust_event.avsc) and the Kafka key.

The native code is only ever stricter than the Python rules: a row it is not sure about (any
rejection, and also valid but unusual spellings such as upper-case UUIDs or times with a seconds
offset) is handed back and judged by ``parse_record`` exactly as on the row path, so a rejected row
gets the same reasons and line number as before. tests/test_columnar.py checks both directions
with hypothesis: same verdicts, same bytes.

Without the extension (not built on this machine) or for a file it cannot read column-wise
(quotes, blank lines, ragged rows, bad UTF-8, a schema other than the one the extension encodes),
`amb publish` takes the row path, and says so in the log. The same native rules also take Arrow
record batches of string columns (``TrustPublisher.publish_batch``), for callers holding a table.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.csv as pacsv

log = logging.getLogger("amb.columnar")

NATIVE_FIELDS: Final = (
    "event_id", "event_type", "trust", "incident_id", "event_time", "clock_start", "category", "source",
    "postcode", "lat", "lon", "easting", "northing", "disposition", "destination_site", "site",
    "arrived_at_hospital", "handover_at", "clear_at", "call_id", "disposition_ambulance",
    "linked_incident_id", "produced_time", "schema_version", "location",
)
"""Column slots of ``amb_native.encode_rows``, in its order (native/src/lib.rs)."""

NATIVE_FINGERPRINT: Final = "58c8ff56dd95d968"
"""CRC-64-AVRO fingerprint (hex) of the trust_event.avsc the extension writes; any other schema
(a new version not yet taught to native/src/lib.rs) takes the row path."""

MAX_BYTES: Final = 1 << 30
"""Bigger (uncompressed) files are streamed row by row instead of read into memory at once."""

BLOCK_SIZE: Final = 1 << 20
"""pyarrow CSV block size of read_csv_arrow (~7,000 rows a batch)."""


def load_native() -> Any | None:
    """The ``amb_native`` extension module, or None (logged as a warning once) when it is not built."""
    global _native, _warned
    if _native is None:
        try:
            import amb_native

            _native = amb_native
        except ImportError as exc:
            if not _warned:
                log.warning("amb_native extension not installed (%s): amb publish reads CSV files row "
                            "by row in Python, ~10x slower; build it with `pip install ./native`", exc)
                _warned = True
            return None
    return _native


_native: Any | None = None
_warned = False


BLOCK_ROWS: Final = 8192
"""Rows per native call on the CSV path: the unit of one clock reading and one produce loop."""


@dataclass
class CsvExport:
    """A plain CSV export in memory, ready for TrustPublisher.publish_csv: rows start at byte
    ``start`` (line 2; the header is line 1) and there are ``rows`` of them."""

    data: bytes
    fields: list[str]
    start: int
    rows: int

    def slots(self) -> list[int | None]:
        """For each NATIVE_FIELDS name, its cell index in a row (None: no such column)."""
        index = {name: i for i, name in enumerate(self.fields)}
        return [index.get(name) for name in NATIVE_FIELDS]

    def row(self, begin: int, end: int) -> dict[str, str]:
        """The line data[begin:end] as csv.DictReader gives it (read_csv checked it is one record)."""
        return dict(zip(self.fields, next(csv.reader([self.data[begin:end].decode()])), strict=True))


def read_csv(data: bytes) -> CsvExport | tuple[None, str]:
    """A CSV export -> CsvExport, or ``(None, why)`` when the row reader must take it.

    The native splitter gives exactly the rows and line numbers ``csv.DictReader`` gives for
    plain files: one record per line (no line break inside quotes), cells either unquoted without
    quotes or wholly quoted with "" for a quote, valid UTF-8, no NUL, no lone CR, no blank lines,
    the header's cell count on every line, distinct non-empty header names. It checks that in one
    pass; anything else -> row path.
    """
    native = load_native()
    if native is None:
        return None, "the amb_native extension is not installed"
    if data.startswith(b"\xef\xbb\xbf"):  # utf-8-sig, as the row reader
        data = data[3:]
    header_end = data.find(b"\n")
    header = data if header_end < 0 else data[:header_end]
    try:
        names = next(csv.reader([header.rstrip(b"\r").decode()]), [])
    except (UnicodeDecodeError, csv.Error):
        return None, "the header is not UTF-8 text on one line"
    if not header.strip() or "" in names or len(set(names)) != len(names):
        return None, "empty, blank or repeated header names"
    problem = native.csv_problem_of(data, len(names))
    if problem is not None:
        return None, str(problem)
    start = len(data) if header_end < 0 else header_end + 1
    rows = data.count(b"\n", start) + (0 if data.endswith(b"\n") or start >= len(data) else 1)
    return CsvExport(data, names, start, rows)


def read_csv_arrow(data: bytes) -> list[pa.RecordBatch] | None:
    """A plain CSV export (as read_csv accepts) as Arrow record batches of string columns, for
    callers that want a table; None when read_csv would refuse it."""
    got = read_csv(data)
    if isinstance(got, tuple):
        return None
    table = pacsv.read_csv(
        pa.py_buffer(got.data),
        read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(got.fields, pa.string()),
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    return table.to_batches()  # type: ignore[no-any-return]


def native_columns(batch: pa.RecordBatch) -> list[tuple[memoryview, memoryview, int] | None]:
    """The (offsets, data, offset) buffers of each native slot's column; None for an absent column."""
    out: list[tuple[memoryview, memoryview, int] | None] = []
    names = batch.schema.names
    for name in NATIVE_FIELDS:
        if name not in names:
            out.append(None)
            continue
        arr = batch.column(name)
        if arr.type != pa.string() or arr.null_count:
            raise ValueError(f"column {name} must be non-null strings, got {arr.type}")
        _, offsets, data = arr.buffers()
        out.append((memoryview(offsets).cast("B"),
                    memoryview(data if data is not None else b"").cast("B"), arr.offset))
    return out


def encode_batch(
    native: Any, batch: pa.RecordBatch, trust: str, now_ms: int, header: bytes
) -> tuple[list[Any], list[Any], list[int]]:
    """Surely valid rows -> (value, key) bytes; the rest None, their indexes in the third list."""
    values, keys, slow = native.encode_rows(native_columns(batch), batch.num_rows, trust, now_ms, header)
    return values, keys, slow


def rows_of(batch: pa.RecordBatch, indexes: list[int]) -> list[dict[str, Any]]:
    """The given rows as dicts of strings: what csv.DictReader yields for them."""
    return batch.take(pa.array(indexes, pa.int64())).to_pylist()  # type: ignore[no-any-return]
