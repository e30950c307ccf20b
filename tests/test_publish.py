"""TrustPublisher and `amb publish` without a broker: reading the three formats, line numbers,
rejects and their report, exit codes. (tests/integration/test_publish_roundtrip.py sends for real.)"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import EXAMPLE_NOW, example, valid_events

from amb import config
from amb.cli import cli
from amb.codec import SCHEMA_DIR, Codec, event_to_avro
from amb.errors import AmbError
from amb.publisher import RecordFile, RejectedRecord, TrustPublisher
from domain.events import Event, EventType, format_time
from domain.validation import INTERCHANGE_FIELDS, Code, Rejection, to_record

EXAMPLES = [example(t.value) for t in EventType]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_csv(path: Path, records: list[dict[str, Any]], fields: tuple[str, ...] = INTERCHANGE_FIELDS) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for r in records:
            w.writerow({k: ("true" if v is True else "false" if v is False else v) for k, v in r.items()})
    return path


def dry_publisher(**kw: Any) -> TrustPublisher:
    return TrustPublisher(config.load({}), "RX7", dry_run=True, clock=lambda: EXAMPLE_NOW / 1000, **kw)


# ----------------------------------------------------------------------------- reading files


def test_jsonl_lines_are_numbered_and_bad_lines_are_rejections(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [EXAMPLES[0], "", "{not json", "[1, 2]", EXAMPLES[1]])
    source = RecordFile(path)
    items = list(source)
    assert source.format == "jsonl"
    assert [line for line, _ in items] == [1, 3, 4, 5]
    assert items[0][1] == EXAMPLES[0] and items[3][1] == EXAMPLES[1]
    for i in (1, 2):
        item = items[i][1]
        assert isinstance(item, Rejection) and item.code == Code.MALFORMED_RECORD
    assert source.bytes_read == path.stat().st_size


def test_csv_rows_carry_their_line_numbers_and_too_many_cells_is_a_rejection(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", EXAMPLES)
    with path.open("a") as f:
        f.write("a,b,c," + "," * len(INTERCHANGE_FIELDS) + "\n")
    items = list(RecordFile(path))
    assert [line for line, _ in items] == list(range(2, len(EXAMPLES) + 3))
    assert isinstance(items[-1][1], Rejection) and items[-1][1].code == Code.MALFORMED_RECORD
    row = items[0][1]
    assert isinstance(row, dict) and row["event_id"] == EXAMPLES[0]["event_id"] and row["site"] == ""


def test_gzip_and_sniffing_without_an_extension(tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "x.jsonl", EXAMPLES).read_bytes()
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "export").write_bytes(gzip.compress(raw))
    for name in ("x.jsonl.gz", "export"):
        source = RecordFile(tmp_path / name)
        assert source.format == "jsonl" and [r for _, r in source] == EXAMPLES
    csv_path = write_csv(tmp_path / "x.csv", EXAMPLES)
    (tmp_path / "export2").write_bytes(csv_path.read_bytes())
    assert RecordFile(tmp_path / "export2").format == "csv"


def test_avro_container_with_the_trust_export_schema(tmp_path: Path) -> None:
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "trust_export.avsc").read_text()))
    path = tmp_path / "x.avro"
    with path.open("wb") as f:
        fastavro.writer(f, schema, EXAMPLES)
    source = RecordFile(path)
    items = list(source)
    assert source.format == "avro" and [n for n, _ in items] == list(range(1, len(EXAMPLES) + 1))
    pub = dry_publisher()
    assert pub.publish_records(items) == len(EXAMPLES) and pub.stats.rejected == 0


def test_avro_container_of_platform_trust_events(tmp_path: Path) -> None:
    codec = Codec("single")
    schema = fastavro.parse_schema(codec.schema)
    events = [r for r in (pub_parse(x) for x in EXAMPLES)]
    path = tmp_path / "events.bin"
    with path.open("wb") as f:
        fastavro.writer(f, schema, [event_to_avro(e, EXAMPLE_NOW) for e in events])
    source = RecordFile(path)
    items = list(source)
    assert source.format == "avro"
    assert [e for _, e in items] == [e if e.produced_time else _stamp(e) for e in events]


def pub_parse(record: dict[str, Any]) -> Event:
    from domain.validation import parse_record

    e = parse_record(record, now_ms=EXAMPLE_NOW)
    assert isinstance(e, Event)
    return e


def _stamp(e: Event) -> Event:
    from dataclasses import replace

    return replace(e, produced_time=EXAMPLE_NOW)


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AmbError, match="cannot read"):
        RecordFile(tmp_path / "missing.csv")
    (tmp_path / "bad.avro").write_bytes(b"Obj\x01garbage")
    with pytest.raises(AmbError):
        list(RecordFile(tmp_path / "bad.avro"))


# ----------------------------------------------------------------------------- the publisher


def test_publisher_reports_every_reject_with_its_line() -> None:
    seen: list[RejectedRecord] = []
    pub = dry_publisher(on_reject=seen.append)
    bad = {**EXAMPLES[0], "trust": "RRU"}
    sent = pub.publish_records([(1, EXAMPLES[0]), (2, bad), (3, EXAMPLES[1]), (4, {"event_type": "x"})])
    pub.close()
    assert sent == 2 and pub.stats.sent == 2 and pub.stats.rejected == 2
    assert [r.line for r in seen] == [2, 4]
    assert seen[0].rejection.code == Code.WRONG_TRUST and seen[0].record == bad
    assert pub.stats.by_reason["wrong_trust (trust)"] == 1
    assert pub.stats.first_lines["wrong_trust (trust)"] == [2]


def test_publisher_rejects_events_of_another_trust_and_unknown_trusts() -> None:
    with pytest.raises(AmbError, match="unknown trust"):
        TrustPublisher(config.load({}), "XX1", dry_run=True)
    pub = dry_publisher()
    e = pub_parse({**EXAMPLES[2], "trust": "RX8"})
    assert pub.publish(e, line=7) is False
    assert pub.stats.first_lines == {"wrong_trust (trust)": [7]}
    assert pub.publish(pub_parse(EXAMPLES[2])) is True


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(valid_events(trust="RX7", now=EXAMPLE_NOW), max_size=30), st.data())
def test_publish_events_counts_add_up(events: list[Event], data: st.DataObject) -> None:
    foreign = data.draw(st.lists(valid_events(trust="RYA", now=EXAMPLE_NOW), max_size=5))
    seen: list[RejectedRecord] = []
    pub = dry_publisher(on_reject=seen.append)
    mixed = events + foreign
    sent = pub.publish_events(mixed, first_line=1)
    assert sent == len(events) and pub.stats.rejected == len(foreign)
    assert [r.line for r in seen] == list(range(len(events) + 1, len(mixed) + 1))


# ----------------------------------------------------------------------------- the command


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["publish", *args], env=env, catch_exceptions=True)


def test_help_has_an_example() -> None:
    result = run("--help")
    assert result.exit_code == 0 and "Example" in result.output and "amb publish --trust RX7" in result.output


def test_dry_run_summary_rejects_file_and_exit_code(tmp_path: Path) -> None:
    good = [to_record(pub_parse(r)) for r in EXAMPLES]
    bad = [{**good[0], "event_time": "not a time"}, {**good[3], "disposition": "conveyed_ed", "destination_site": ""}]
    path = write_csv(tmp_path / "in.csv", [good[0], bad[0], *good[1:], bad[1]])
    rejects = tmp_path / "rejects.csv"
    result = run("--trust", "rx7", str(path), "--dry-run", "--rejects", str(rejects), "--no-progress")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, AmbError) and "2 rejected" in str(result.exception)
    assert f"{len(good)} of {len(good) + 2} records validated (dry run" in result.output
    assert "bad_time (event_time)" in result.output and "lines 3" in result.output
    assert "conveyed_without_destination (destination_site)" in result.output
    with rejects.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["line"], r["code"]) for r in rows] == [("3", "bad_time"), (str(len(good) + 3), "conveyed_without_destination")]
    assert json.loads(rows[0]["record"])["event_time"] == "not a time"


def test_dry_run_of_a_clean_file_exits_zero_and_warns_about_unknown_columns(tmp_path: Path) -> None:
    records = [{**to_record(pub_parse(r)), "colour": "blue"} for r in EXAMPLES]
    path = write_csv(tmp_path / "in.csv", records, (*INTERCHANGE_FIELDS, "colour"))
    result = CliRunner().invoke(cli, ["publish", "--trust", "RX7", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "colour" in result.output and f"{len(EXAMPLES)} of {len(EXAMPLES)} records validated" in result.output


def test_event_times_far_in_the_future_of_the_real_clock_are_rejected(tmp_path: Path) -> None:
    future = {**EXAMPLES[2], "event_time": format_time(4_102_444_800_000)}  # 2100
    path = write_jsonl(tmp_path / "f.jsonl", [future])
    result = run("--trust", "RX7", str(path), "--dry-run")
    assert result.exit_code == 1 and "future_time" in result.output


def test_stdin_with_explicit_format() -> None:
    data = "".join(json.dumps(r) + "\n" for r in EXAMPLES)
    result = CliRunner().invoke(cli, ["publish", "--trust", "RX7", "-", "--format", "jsonl", "--dry-run"],
                                input=io.StringIO(data).read())
    assert result.exit_code == 0, result.output
    assert f"{len(EXAMPLES)} of {len(EXAMPLES)}" in result.output
