"""`amb publish`: validate a trust's export file and publish it to the trust's Kafka topic."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from tqdm import tqdm

from amb import config
from amb.errors import AmbError
from amb.publisher import FORMATS, PublishStats, RecordFile, RejectedRecord, TrustPublisher
from domain.events import TRUSTS, Event
from domain.validation import to_record, unknown_fields

if TYPE_CHECKING:
    from amb.columnar import CsvExport

log = logging.getLogger("amb.publish")

REJECT_COLUMNS = ("line", "code", "field", "codes", "message", "event_id", "incident_id", "record")


class PublishIncomplete(AmbError):
    """Some records were rejected or not delivered: the summary above says which."""

    exit_code = 1


class _RejectWriter:
    """Streams every reject to a CSV file as it happens (a big bad file never sits in memory)."""

    def __init__(self, path: Path) -> None:
        try:
            self.file: IO[str] = path.open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise AmbError(f"cannot write rejects to {path}: {exc.strerror}") from None
        self.path = path
        self.writer = csv.writer(self.file)
        self.writer.writerow(REJECT_COLUMNS)
        self.count = 0

    def __call__(self, rejected: RejectedRecord) -> None:
        rej = rejected.rejection
        first = rej.reasons[0]
        record: Any = rejected.record
        if isinstance(record, Event):
            record = to_record(record)
        self.writer.writerow((
            "" if rejected.line is None else rejected.line,
            first.code, first.field or "",
            ";".join(r.code for r in rej.reasons),
            "; ".join(r.message for r in rej.reasons),
            rej.event_id or "", rej.incident_id or "",
            "" if record is None else json.dumps(record, default=str, ensure_ascii=False),
        ))
        self.count += 1

    def close(self) -> None:
        self.file.close()


def _records_with_progress(source: RecordFile, bar: tqdm[Any], every: int = 2000) -> Any:
    """The file's records, advancing the bar by bytes read every ``every`` records."""
    last = 0
    n = 0
    for item in source:
        yield item
        n += 1
        if n % every == 0:
            now = source.bytes_read
            bar.update(now - last)
            last = now
            bar.set_postfix_str(f"{n:,} records", refresh=False)
    bar.update(source.bytes_read - last)
    bar.set_postfix_str(f"{n:,} records", refresh=False)


def _warn_unknown(fields: list[str]) -> None:
    extra = unknown_fields(fields)
    if extra:
        click.echo(f"amb publish: warning: ignoring fields not in the trust export format: "
                   f"{', '.join(extra)}", err=True)


def _publish_columns(publisher: TrustPublisher, export: CsvExport, source: RecordFile, bar: tqdm[Any]) -> None:
    """The columnar fast path: one native validate+encode call and one produce loop per block."""
    shown = 0

    def progress(done: int) -> None:
        nonlocal shown
        now = source.bytes_read * done // max(export.rows, 1)
        bar.update(now - shown)
        shown = now
        bar.set_postfix_str(f"{done:,} records", refresh=False)

    publisher.publish_csv(export, progress)


def _summary(stats: PublishStats, source: RecordFile, topic: str, dry_run: bool) -> list[str]:
    total = stats.sent + stats.rejected
    verb = "validated (dry run, nothing sent)" if dry_run else f"published to {topic}"
    lines = [f"{stats.sent:,} of {total:,} records {verb} from {source.name} ({source.format}) "
             f"in {stats.seconds:.1f} s ({stats.rate:,.0f} events/s)"]
    if not dry_run:
        lines.append(f"delivered {stats.delivered:,}, delivery failed {stats.failed:,}")
        for err, count in stats.failures.most_common(5):
            lines.append(f"  delivery error x{count:,}: {err}")
    if stats.rejected:
        lines.append(f"rejected {stats.rejected:,} records (first reason of each):")
        width = max(len(k) for k in stats.by_reason)
        for key, count in stats.by_reason.most_common():
            first = stats.first_lines.get(key, [])
            where = ("lines " if source.format != "avro" else "records ") + ", ".join(map(str, first))
            if count > len(first):
                where += ", ..."
            lines.append(f"  {key:<{width}}  {count:>8,}  {where if first else ''}")
    return lines


def _trust(value: str) -> str:
    code = value.strip().upper()
    if code not in TRUSTS:
        raise click.BadParameter(f"{value!r} is not an ambulance trust ODS code: one of {', '.join(TRUSTS)}")
    return code


@click.command("publish", help="""Validate a trust export file and publish its events to the trust's topic.

FILE is JSON Lines, CSV (the same field names as columns; an empty cell is absent) or an Avro
container file (schemas/trust_export.avsc, or platform TrustEvents); `-` reads stdin; `.gz` is
unpacked. Each record is checked against docs/trust-export-format.md: an invalid one is not sent
but reported with its line number and reason. Valid events go to <prefix>.events.<TRUST>,
Avro-encoded (single-object, or Confluent framing when AMB_SCHEMA_REGISTRY_URL is set), keyed
trust:incident, through an idempotent producer. Exits 1 if any record was rejected or not
delivered, so a script can stop on a bad export.

\b
Examples:
  amb publish --trust RX7 nwas-2025-01-15.jsonl
  amb publish --trust RX7 export.csv --rejects rejects.csv
  amb publish --trust RRU export.csv.gz --dry-run
""")
@click.option("--trust", required=True, metavar="ODS", callback=lambda _c, _p, v: _trust(v),
              help=f"ODS code of the publishing trust ({', '.join(TRUSTS)}); every record must carry it.")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(("auto", *FORMATS)), default="auto", show_default=True,
              help="Input format; auto goes by the extension, then by the first bytes.")
@click.option("--dry-run", is_flag=True, help="Validate and encode only; connect to nothing, send nothing.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every rejected record (line, reasons, the record) to this CSV file.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def command(trust: str, file: str, fmt: str, dry_run: bool, rejects_path: Path | None,
            progress: bool | None) -> None:
    settings = config.load()
    if not dry_run:
        from amb.metrics import serve_best_effort

        serve_best_effort(settings.publisher_metrics_port, "AMB_PUBLISHER_METRICS_PORT")
    source = RecordFile(file, fmt)
    writer = _RejectWriter(rejects_path) if rejects_path else None
    try:
        publisher = TrustPublisher(settings, trust, on_reject=writer, dry_run=dry_run)
        bar = tqdm(total=source.size or None, unit="B", unit_scale=True, desc=f"publish {trust}",
                   disable=(not progress) if progress is not None else None, leave=False)
        try:
            with publisher:
                columns = source.columns() if publisher.columnar() is not None else None
                if columns is not None:
                    _warn_unknown(source.fields)
                    _publish_columns(publisher, columns, source, bar)
                else:
                    if source.why_rows:
                        log.info("amb publish: %s is read row by row: %s", source.name, source.why_rows)
                    items = _records_with_progress(source, bar)
                    first = next(items, None)
                    _warn_unknown(source.fields)
                    if first is not None:
                        publisher.publish_records([first])
                        publisher.publish_records(items)
        finally:
            bar.close()
            source.close()
    finally:
        if writer is not None:
            writer.close()
    stats = publisher.stats
    for line in _summary(stats, source, publisher.topic, dry_run):
        click.echo(line)
    for err in publisher.errors[:5]:
        click.echo(f"amb publish: client error: {err}", err=True)
    if writer is not None and writer.count:
        click.echo(f"wrote {writer.count:,} rejected records to {writer.path}")
    problems = []
    if stats.rejected:
        problems.append(f"{stats.rejected:,} rejected")
    if stats.failed:
        problems.append(f"{stats.failed:,} not delivered")
    if problems:
        raise PublishIncomplete(f"{' and '.join(problems)} of {stats.sent + stats.rejected:,} records "
                                f"from {source.name}")
