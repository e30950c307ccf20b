"""`amb dlq`: look at the dead-letter topic and re-drive what is in it."""

from __future__ import annotations

import json
from collections import Counter

import click

from amb import config
from amb.codec import default_codec
from amb.dlq import DeadLetter, read_dead_letters, replay
from amb.errors import AmbError
from amb.topics import dlq_topic


def _connect() -> tuple[str, str, dict[str, str], str]:
    """bootstrap, DLQ topic, client login (admin on a secure broker: replay writes to trust topics)
    and the consumer-group prefix."""
    settings = config.load()
    from amb.security import ADMIN, client_config
    from amb.stack.kafka import require_broker

    login = client_config(settings, ADMIN)
    require_broker(settings.bootstrap, config=login)
    return settings.bootstrap, dlq_topic(settings), login, settings.topic_prefix


def _glimpse(letter: DeadLetter) -> str:
    """What the original value is, if it decodes at all (validation failures usually do)."""
    try:
        event = default_codec().decode(letter.value)
    except AmbError:
        head = (letter.value or b"")[:12].hex()
        return f"{len(letter.value or b'')} bytes {head}{'...' if len(letter.value or b'') > 12 else ''}"
    return f"{event.event_type.value} {event.event_id} incident {event.incident_id}"


@click.group("dlq", help="""The dead-letter topic (<prefix>.dlq): events refused on the way in.

Each dead letter is the original message, byte for byte, with headers saying why it was refused
(a reason code from docs/events.md) and where it was read. Nothing refused is dropped.

\b
Examples:
  amb dlq show --limit 20
  amb dlq show --reason unknown_schema
  amb dlq replay --reason unknown_schema      # after deploying the reader that knows it
""")
def command() -> None:
    pass


@command.command("show", help="""Print dead letters (oldest first per partition) and a count per reason.

\b
Examples:
  amb dlq show
  amb dlq show --reason future_time --limit 5
  amb dlq show --json | jq .reason
""")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=50, show_default=True,
              help="Print at most this many (all are counted).")
@click.option("--reason", "-r", help="Only dead letters with this reason code (e.g. undecodable, wrong_trust).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter instead of text.")
def show(limit: int, reason: str | None, as_json: bool) -> None:
    bootstrap, topic, login, prefix = _connect()
    counts: Counter[str] = Counter()
    shown = 0
    for letter in read_dead_letters(bootstrap, topic, reason=reason, config=login, group_prefix=prefix):
        counts[letter.reason] += 1
        if shown >= limit:
            continue
        shown += 1
        key = (letter.key or b"").decode("utf-8", "replace")
        if as_json:
            click.echo(json.dumps({
                "partition": letter.partition, "offset": letter.offset, "time": letter.time,
                "reason": letter.reason, "reasons": list(letter.reasons), "message": letter.message,
                "source_topic": letter.source_topic, "source_partition": letter.source_partition,
                "source_offset": letter.source_offset, "replays": letter.replays, "key": key,
                "value_hex": (letter.value or b"").hex(),
            }))
            continue
        where = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
        replays = f" (replayed {letter.replays}x)" if letter.replays else ""
        click.echo(f"{letter.time}  {letter.reason:<28} {where}  key={key}{replays}")
        click.echo(f"    {letter.message}")
        click.echo(f"    {_glimpse(letter)}")
    total = sum(counts.values())
    if as_json:
        return
    what = f" with reason {reason}" if reason else ""
    if not total:
        click.echo(f"{topic}: no dead letters{what}")
        return
    more = f" (showing {shown})" if shown < total else ""
    click.echo(f"{topic}: {total:,} dead letters{what}{more}: "
               + ", ".join(f"{r} {c:,}" for r, c in counts.most_common()))


@command.command("replay", help="""Re-drive dead letters to the topics they came from, bytes unchanged.

Use it after the cause is fixed (a reader upgraded to a newer schema, a trust's clock
corrected...). Consumers drop duplicate event ids, so replaying twice is harmless; a message that
fails again returns to the dead-letter topic with its replay count.

\b
Examples:
  amb dlq replay --reason unknown_schema
  amb dlq replay --dry-run
""")
@click.option("--reason", "-r", help="Only dead letters with this reason code (default: all of them).")
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Replay at most this many.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
def replay_cmd(reason: str | None, limit: int | None, dry_run: bool) -> None:
    bootstrap, topic, login, prefix = _connect()
    report = replay(bootstrap, topic, reason=reason, dry_run=dry_run, limit=limit, config=login, group_prefix=prefix)
    verb = "would replay" if dry_run else "replayed"
    what = f" with reason {reason}" if reason else ""
    targets = ", ".join(f"{t} {c:,}" for t, c in sorted(report.replayed.items())) or "nothing"
    click.echo(f"{verb} {report.total:,} dead letters{what} from {topic}: {targets}")
    if report.skipped:
        click.echo(f"skipped {report.skipped:,} without a source topic header")
    if report.failed:
        for err, count in report.errors.most_common(5):
            click.echo(f"  failed x{count:,}: {err}", err=True)
        raise AmbError(f"{report.failed:,} dead letters could not be replayed")
