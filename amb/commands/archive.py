"""`amb archive`: keep every accepted trust event in the raw archive (amb.archive)."""

from __future__ import annotations

import signal
from typing import Any

import click

from amb import config

HELP = """Archive every accepted event of every trust's events topic under AMB_DATA_DIR/archive.

Reads AMB_TOPIC_PREFIX.events.* (consumer group AMB_TOPIC_PREFIX-archive), validates each message as
the worker does (refused ones are the worker's DLQ's business and are not archived) and writes
immutable, checksummed Avro container files <trust>/<arrival day>/<topic>~p<N>~<offsets>.avro. The
archive records its own read positions, so a restart neither loses nor repeats a message, and the
files outlive the topics' retention: `amb rebuild` and `amb reconcile` read them. A retention gap
(messages expired before they were archived) is printed and noted in archive/_gaps.jsonl.
SIGTERM or Ctrl-C stops after the current batch.

\b
Examples:
  amb archive                      # run alongside the worker
  amb archive --timeout 10         # stop after 10 s without a new message
  amb archive --verify             # check every file's checksum and print a summary
"""


@click.command("archive", help=HELP)
@click.option("--timeout", "idle_timeout", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds without a new message.")
@click.option("--max-messages", type=click.IntRange(min=1), default=None, help="Stop after this many messages.")
@click.option("--batch-size", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Most messages per batch (one file per trust, day and partition per batch).")
@click.option("--batch-seconds", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Longest wait (seconds) to fill a batch.")
@click.option("--group", default=None, help="Consumer group (default AMB_TOPIC_PREFIX-archive).")
@click.option("--verify", is_flag=True, help="Do not consume: verify every archive file and print a summary.")
def command(idle_timeout: float | None, max_messages: int | None, batch_size: int, batch_seconds: float,
            group: str | None, verify: bool) -> None:
    from amb.archive import Archiver, archive_dir, gaps, list_files, read_file

    settings = config.load()
    root = archive_dir(settings)
    if verify:
        from tqdm import tqdm

        files = list_files(root)
        records = 0
        for f in tqdm(files, unit="file", desc="verifying", disable=not click.get_text_stream("stderr").isatty()):
            records += len(read_file(f.path))
        trusts = sorted({f.trust for f in files})
        days = sorted({f.day for f in files})
        span = f"{days[0]}..{days[-1]}" if days else "-"
        click.echo(f"archive {root}: {len(files)} files, {records:,} events, trusts {','.join(trusts) or '-'}, "
                   f"days {span}: every checksum matches; {len(gaps(root))} retention gaps noted")
        return
    archiver = Archiver(settings, group, batch_size, batch_seconds, echo=click.echo)

    def stop(_sig: int, _frame: Any) -> None:
        archiver.stop()

    old = signal.signal(signal.SIGTERM, stop)
    click.echo(f"archive: {settings.topic('events.*')} -> {root}")
    try:
        stats = archiver.run(max_messages, idle_timeout)
    finally:
        signal.signal(signal.SIGTERM, old)
    refused = ", ".join(f"{k} {v}" for k, v in sorted(stats.refused_by_code.items())) or "none"
    click.echo(f"archive: {stats.messages} messages: {stats.archived} archived in {stats.files} files, "
               f"{stats.refused} refused ({refused})")
