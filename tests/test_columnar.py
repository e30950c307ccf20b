"""The columnar fast path of `amb publish` (amb.columnar + the amb_native extension).

It must never disagree with the row path: a row it encodes is one domain.validation accepts, and
its bytes are amb.codec's bytes; every other row is judged by domain.validation itself, so the
rejects (line, reasons) of a file are the same whichever path reads it. Hypothesis checks both on
valid rows and on rows with one field spoiled in the ways trusts' exports spoil them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import valid_events

from amb import columnar
from amb.cli import cli
from amb.codec import Codec
from amb.publisher import RejectedRecord, TrustPublisher
from domain.events import Event, format_time, parse_time
from domain.validation import DAY_MS, INTERCHANGE_FIELDS, parse_record, to_record

native: Any = columnar.load_native()
pytestmark = pytest.mark.skipif(native is None, reason="amb_native is not built (pip install ./native)")

NOW = parse_time("2026-01-01T00:00:00Z")
TRUST = "RX7"
CODEC = Codec("single")


def as_cells(record: dict[str, Any], true: str = "true") -> dict[str, str]:
    """An interchange record as a CSV row: every field a string, absent = empty."""
    out = dict.fromkeys(INTERCHANGE_FIELDS, "")
    for k, v in record.items():
        out[k] = (true if v else "false") if isinstance(v, bool) else str(v)
    return out


def same_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows as a CSV file has them: every row with every column (absent = empty)."""
    names = list(dict.fromkeys(k for r in rows for k in r)) or list(INTERCHANGE_FIELDS)
    return [{n: r.get(n, "") for n in names} for r in rows]


def batch_of(rows: list[dict[str, str]]) -> pa.RecordBatch:
    rows = same_columns(rows)
    schema = pa.schema([(n, pa.string()) for n in rows[0]])
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def dry(**kw: Any) -> TrustPublisher:
    return TrustPublisher(config_settings(), TRUST, dry_run=True, clock=lambda: NOW / 1000, **kw)


def config_settings() -> Any:
    from amb import config

    return config.load({})


# --------------------------------------------------------------------------- spoiled rows

SPOILERS: dict[str, list[str]] = {
    "event_id": ["", " ", "not-a-uuid", "6F9619FF-8B86-D011-B42D-00C04FC964FF", " 6f9619ff-8b86-d011-b42d-00c04fc964ff",
                 "6f9619ff8b86d011b42d00c04fc964ff", "6f9619ff-8b86-d011-b42d-00c04fc964fg"],
    "event_type": ["", "Incident_Created", "incident_created ", "unknown", "handover\t", "call_111"],
    "trust": ["", "RX6", "rx7", " RX7", "RX7 ", "XYZ", "R1F"],
    "incident_id": ["", " ", "\u2003", "x" * 64, "x" * 65, "é" * 64, "é" * 65, " INC-1 ", "INC,1"],
    "event_time": ["", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01T00:00:00z", "2026-01-01 00:00:00Z",
                   "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00.5+01:00", "2026-02-30T00:00:00Z",
                   "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "1999-12-31T23:59:59.999Z",
                   "2000-01-01T00:00:00Z", format_time(NOW + DAY_MS), format_time(NOW + DAY_MS + 1),
                   "2026-01-01T00:00:00+23:59", "2026-01-01T00:00:00-24:00", "2026-01-01T00:00:00+0100",
                   "20260101T000000Z", "2026-01-01T00:00:00.000001Z", " 2026-01-01T00:00:00Z"],
    "category": ["", "c1", "C5", "C1 ", "1"],
    "source": ["", "999", "111", "99", " 999", "CALL_999"],
    "postcode": ["", " ", "M1 1AB", " M1 1AB", "X" * 16, "X" * 17, "£" * 16, "\u00a0"],
    "lat": ["", "53.1", "53", "-53.1", "53.1e0", " 53.1", "nan", "inf", "61.5", "61.50000000000001", "49.0", "1_0"],
    "lon": ["", "-2.2", "2.5", "2.6", "-9", "-9.0000001", "+1.0", "0x1"],
    "easting": ["", "0", "-0", "-0.0", "700000", "700000.1", "380000.5", "1e5"],
    "northing": ["", "0.0", "1300000", "1300000.0001", "390000"],
    "disposition": ["", "conveyed_ed", "conveyed_elsewhere", "hear_and_treat", "see_and_treat", "Conveyed_ED"],
    "destination_site": ["", "RBN01", "rbn01", "RBN-01", "A" * 16, "A" * 17, " RBN01", "\u00c9A"],
    "site": ["", "RBN01", "R B", "A" * 17],
    "arrived_at_hospital": ["", "2025-12-31T10:00:00Z", "2025-12-31T10:00:00.5Z", "bad", "1990-01-01T00:00:00Z"],
    "handover_at": ["", "2025-12-31T09:59:59.999Z", "2025-12-31T10:00:00Z", "2025-12-31T10:20:00+00:00"],
    "clear_at": ["", "2025-12-31T09:00:00Z", "2025-12-31T11:00:00Z"],
    "call_id": ["", " ", "CALL-1", "x" * 65],
    "disposition_ambulance": ["", "true", "false", "TRUE", "False", "yes", "1", " true"],
    "linked_incident_id": ["", " ", "INC-9", "y" * 65],
    "clock_start": ["", "2025-12-31T09:00:00Z", "2025-12-31T09:00:00.25-05:00", "later"],
    "produced_time": ["", "2025-12-31T09:00:00Z", "soon"],
    "schema_version": ["", "1", "2", "x"],
    "location": ["", "{}"],
}


@st.composite
def rows(draw: st.DrawFn) -> dict[str, str]:
    """A CSV row: a valid event's cells, with none, one or several cells replaced by spoilers."""
    event = draw(valid_events(trust=TRUST, now=NOW))
    cells = as_cells(to_record(event), true=draw(st.sampled_from(["true", "True", "TRUE"])))
    for name in draw(st.lists(st.sampled_from(sorted(SPOILERS)), max_size=3)):
        cells[name] = draw(st.sampled_from(SPOILERS[name]) | st.text(max_size=8))
    return cells


def native_rows(batch: pa.RecordBatch) -> tuple[list[bytes | None], list[bytes | None], list[int]]:
    return columnar.encode_batch(native, batch, TRUST, NOW, CODEC.header)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=12))
def test_a_row_the_native_path_encodes_is_valid_and_encoded_exactly_as_the_codec_does(
        cells: list[dict[str, str]]) -> None:
    values, keys, slow = native_rows(batch_of(cells))
    assert slow == [i for i, v in enumerate(values) if v is None]
    for row, value, key in zip(cells, values, keys, strict=True):
        if value is None:
            continue
        event = parse_record(row, now_ms=NOW, trust=TRUST)
        assert isinstance(event, Event), f"native accepted a row the rules reject: {row} -> {event}"
        assert value == CODEC.encode(event, NOW)
        assert key == event.key.encode()


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .:+_-]*[A-Za-z0-9Z]|[A-Za-z0-9]|")


def plain(cells: dict[str, str]) -> bool:
    """Cells in the spelling exports usually have: ASCII, no edge spaces, no exponents."""
    return all(_PLAIN.fullmatch(v) and not ("e" in v and k in ("lat", "lon", "easting", "northing"))
               for k, v in cells.items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events(trust=TRUST, now=NOW), min_size=1, max_size=12))
def test_valid_rows_in_the_usual_spelling_all_take_the_fast_path(events: list[Event]) -> None:
    cells = [as_cells(to_record(e)) for e in events]
    values, _keys, slow = native_rows(batch_of(cells))
    assert not [i for i in slow if plain(cells[i])], "a plain valid row was left to the slow path"
    for e, v in zip(events, values, strict=True):
        if v is not None:
            assert v == CODEC.encode(replace(e, produced_time=None), NOW)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=12), st.integers(1, 100))
def test_publish_batch_sends_and_rejects_exactly_what_the_row_path_does(
        cells: list[dict[str, str]], first_line: int) -> None:
    cells = same_columns(cells)
    fast_rejects: list[RejectedRecord] = []
    row_rejects: list[RejectedRecord] = []
    with dry(on_reject=fast_rejects.append) as fast:
        sent_fast = fast.publish_batch(batch_of(cells), first_line)
    with dry(on_reject=row_rejects.append) as rows_pub:
        sent_rows = rows_pub.publish_records(enumerate(cells, first_line))
    assert sent_fast == sent_rows
    assert fast.stats.by_reason == rows_pub.stats.by_reason
    assert [(r.line, r.rejection, r.record) for r in fast_rejects] == \
           [(r.line, r.rejection, r.record) for r in row_rejects]


def csv_bytes(cells: list[dict[str, str]], quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(cells[0]), lineterminator="\n", quoting=quoting)
    writer.writeheader()
    writer.writerows(cells)
    return buf.getvalue().encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), min_size=1, max_size=12), st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_publish_csv_sends_and_rejects_exactly_what_the_row_path_does(
        cells: list[dict[str, str]], quoting: Literal[0, 1, 2, 3]) -> None:
    cells = [{k: v for k, v in r.items() if not set(v) & set("\r\n")} for r in same_columns(cells)]
    cells = same_columns(cells)
    data = csv_bytes(cells, quoting)
    export = columnar.read_csv(data)
    fast_rejects: list[RejectedRecord] = []
    row_rejects: list[RejectedRecord] = []
    with dry(on_reject=row_rejects.append) as rows_pub:
        sent_rows = rows_pub.publish_records(enumerate(cells, 2))
    if isinstance(export, tuple):
        return  # e.g. a NUL or a lone CR in a cell: the row path takes the file
    with dry(on_reject=fast_rejects.append) as fast:
        sent_fast = fast.publish_csv(export)
    assert sent_fast == sent_rows
    assert [(r.line, r.rejection, r.record) for r in fast_rejects] == \
           [(r.line, r.rejection, r.record) for r in row_rejects]


# --------------------------------------------------------------------------- test vectors

VECTORS = [
    # (row cells beyond the common ones, expected body after the common fields, hex)
    {"event_type": "incident_created", "clock_start": "2025-12-31T23:00:00.5+01:00", "category": "C2",
     "source": "111", "postcode": "M1 1AB", "lat": "53.5", "lon": "-2.25"},
    {"event_type": "disposition", "disposition": "conveyed_ed", "destination_site": "RBN01"},
    {"event_type": "handover", "site": "RBN01", "arrived_at_hospital": "2025-12-31T10:00:00Z",
     "handover_at": "2025-12-31T10:20:00Z", "clear_at": "2025-12-31T10:40:00.123456Z"},
    {"event_type": "call_111", "incident_id": "CALL-7", "call_id": "CALL-7", "disposition_ambulance": "FALSE",
     "easting": "380000", "northing": "390000.25", "linked_incident_id": "INC-7"},
    {"event_type": "response_arrived", "incident_id": "INC-" + "é" * 60},  # 64 characters, 124 bytes
]


@pytest.mark.parametrize("extra", VECTORS, ids=[v["event_type"] for v in VECTORS])
def test_vectors_byte_for_byte(extra: dict[str, str]) -> None:
    row = {"event_id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "trust": TRUST, "incident_id": "INC-1",
           "event_time": "2025-12-31T12:00:00Z", **extra}
    values, keys, slow = native_rows(batch_of([row]))
    event = parse_record(row, now_ms=NOW, trust=TRUST)
    assert isinstance(event, Event) and slow == []
    assert values[0] == CODEC.encode(event, NOW)
    assert values[0][:10] == CODEC.header
    assert keys[0] == f"{TRUST}:{row['incident_id']}".encode()


def test_a_handover_vector_spelled_out() -> None:
    """One message written out by hand from the Avro spec, independent of either encoder."""
    row = {"event_id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "event_type": "handover", "trust": "RX7",
           "incident_id": "I1", "event_time": "2000-01-01T00:00:00Z", "site": "A1",
           "arrived_at_hospital": "2000-01-01T00:00:00.001Z"}
    values, _, slow = native_rows(batch_of([row]))
    assert slow == []

    def long(n: int) -> bytes:  # Avro long: zigzag, then 7 bits a byte, low first
        z, out = (n << 1) ^ (n >> 63), b""
        while z >= 0x80:
            out, z = out + bytes([(z & 0x7F) | 0x80]), z >> 7
        return out + bytes([z])

    body = (b"\x48" + row["event_id"].encode() + b"\x0a" + b"\x06RX7" + b"\x04I1"
            + long(946_684_800_000) + long(NOW) + b"\x02"
            + b"\x00" * 4  # clock_start, category, source, location: null
            + b"\x00\x00"  # disposition, destination_site
            + b"\x02\x04A1" + b"\x02" + long(946_684_800_001) + b"\x00\x00" + b"\x00\x00\x00")
    assert values[0] == CODEC.header + body


# --------------------------------------------------------------------------- times

time_texts = st.one_of(
    st.builds(format_time, st.integers(0, 4_102_444_800_000)),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,8})?(Z|z|[+-][0-9]{2}:?[0-9]{2})?",
                  fullmatch=True),
    st.text(max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(time_texts)
def test_native_times_are_domain_times(text: str) -> None:
    got = native.parse_time_ms(text)
    if got is not None:
        assert got == parse_time(text)


# --------------------------------------------------------------------------- CSV reading

cell_text = st.lists(st.sampled_from([*'ab1 ,"\r\n\t\u00e9\x00', "event_id", "trust"]), max_size=4).map("".join)


def export_rows(export: columnar.CsvExport) -> list[tuple[int, dict[str, str]]]:
    """Every row as the native splitter cuts it: encode for a trust no row carries, so each comes back."""
    out: list[tuple[int, dict[str, str]]] = []
    pos, line = export.start, 2
    while pos < len(export.data):
        values, _, slow, pos = native.encode_csv(export.data, pos, 3, export.slots(), "XXXXX", NOW, CODEC.header)
        assert len(slow) == len(values)
        out += [(line + i, export.row(begin, end)) for i, begin, end in slow]
        line += len(values)
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(cell_text, min_size=1, max_size=4), min_size=1, max_size=6),
       st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans())
def test_read_csv_gives_the_rows_and_lines_of_csv_dictreader(
        lines: list[list[str]], newline: str, trailing: bool, bom: bool) -> None:
    text = newline.join(",".join(cells) for cells in lines) + (newline if trailing else "")
    data = ("\ufeff" if bom else "").encode() + text.encode()
    got = columnar.read_csv(data)
    if isinstance(got, tuple):
        return  # the row path takes it
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    want = []
    for row in reader:
        assert None not in row and None not in row.values(), "read_csv accepted a ragged file"
        want.append((reader.line_num, row))
    assert got.fields == reader.fieldnames
    assert got.rows == len(want)
    assert export_rows(got) == want


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(st.sampled_from(list('ab1 ,"\t\u00e9')), max_size=4), min_size=2, max_size=2),
                min_size=1, max_size=6),
       st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]), st.sampled_from(["\n", "\r\n"]))
def test_regularly_quoted_files_are_read_as_dictreader_reads_them(
        lines: list[list[str]], quoting: Literal[0, 1, 2, 3], newline: str) -> None:
    buf = io.StringIO()
    csv.writer(buf, quoting=quoting, lineterminator=newline).writerows([["h,1", 'h"2'], *lines])
    got = columnar.read_csv(buf.getvalue().encode())
    reader = csv.DictReader(io.StringIO(buf.getvalue(), newline=""))
    want = [(reader.line_num, row) for row in reader]
    assert not isinstance(got, tuple), got
    assert got.fields == ["h,1", 'h"2'] and export_rows(got) == want


def test_files_the_column_reader_refuses() -> None:
    for data, why in [(b'a,b\n"x\ny",1\n', "line breaks"), (b'a,b\nx"y,1\n', "irregular"),
                      (b'a,b\n"x" ,1\n', "irregular"), (b'a,b\n"x,1', "unterminated"),
                      (b"a,b\n1,2\n\n3,4\n", "blank"), (b"a,a\n1,2\n", "repeated"),
                      (b"a,b\n1,2,3\n", "cell count"), (b"a,b\n1\n", "cell count"), (b"a,b\n\xff,1\n", "UTF-8"),
                      (b"a,b\n1,2\r3,4\n", "carriage"), (b"a,b\n1,\x00\n", "NUL"), (b"", "header")]:
        got = columnar.read_csv(data)
        assert isinstance(got, tuple) and why in got[1], (data, got)


# --------------------------------------------------------------------------- amb publish


def write_csv(path: Path, cells: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, INTERCHANGE_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(cells)
    return path


def test_amb_publish_dry_run_reports_the_same_rejects_on_both_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_validation import EXAMPLE_NOW

    good = as_cells(to_record(parse_record(_example_row(), now_ms=EXAMPLE_NOW)))  # type: ignore[arg-type]
    cells = []
    for i in range(300):
        row = dict(good, event_id=f"00000000-0000-4000-8000-{i:012x}", incident_id=f"INC-{i}")
        if i % 37 == 5:
            row["category"] = "C9"
        if i % 53 == 7:
            row["event_time"] = "yesterday"
        cells.append(row)
    path = write_csv(tmp_path / "export.csv", cells)
    env = {"AMB_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    runner = CliRunner()
    fast = runner.invoke(cli, ["publish", "--trust", "RX7", str(path), "--dry-run",
                               "--rejects", str(tmp_path / "fast.csv")], env=env)
    monkeypatch.setattr(columnar, "_native", None)
    monkeypatch.setattr(columnar, "_warned", False)
    monkeypatch.setitem(__import__("sys").modules, "amb_native", None)  # as if it were not built
    slow = runner.invoke(cli, ["publish", "--trust", "RX7", str(path), "--dry-run",
                               "--rejects", str(tmp_path / "rows.csv")], env=env)
    assert fast.exit_code == slow.exit_code == 1, (fast.output, slow.output)
    assert (tmp_path / "fast.csv").read_text() == (tmp_path / "rows.csv").read_text()
    assert "rejected 14 records" in fast.output
    def summary(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if "events/s" not in ln and not ln.startswith("wrote")]

    assert summary(fast.output) == summary(slow.output)


def _example_row() -> dict[str, Any]:
    from test_validation import example

    return example("incident_created")
