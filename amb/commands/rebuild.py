"""`amb rebuild`: recompute facts and rollups from the raw archive in the store."""

from __future__ import annotations

import sys
from datetime import date

import click

from amb import config
from amb.commands import parse_date as _date
from amb.errors import AmbError

HELP = """Recompute facts and rollups from the raw archive (raw_events, kept by `amb sink`).

Archived events go through the batch oracle (dedupe by event id, incident reducer, geography
attribution, facts) with the code as it is now: after a fix, this is how old figures are corrected.

With --from DATE (Europe/London days; --to optional, inclusive) only incidents with an archived
event in that range change (all their events are read, earlier ones too): where the stored facts
differ from the recompute, the old rows are retracted (-1 through the same signed changes and
materialised views as the sink, so counts MOVE), deleted, and the recomputed facts loaded.
Everything else is left alone; a second run changes nothing.

Without --from, every fact, signed change and rollup table is emptied and reloaded (reference data,
the raw archive and the audit log are kept): asks first unless --yes.

Stop `amb sink` first (chDB has one opener; the sink also must not load meanwhile). Afterwards the
sink carries on from its committed offsets. Exits non-zero if the store fails its consistency check.

\b
Examples:
  amb rebuild --from 2026-10-01
  amb rebuild --from 2026-10-01 --to 2026-10-07 && amb reconcile --from 2026-10-01 --to 2026-10-07
  amb rebuild --yes                      # everything, from scratch
  amb rebuild --yes --source files       # from the Avro files of `amb archive` instead
"""


@click.command("rebuild", help=HELP)
@click.option("--from", "start", callback=_date, default=None,
              help="Rebuild incidents with an archived event on or after this day (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="... and on or before this day (with --from).")
@click.option("--source", type=click.Choice(("store", "files")), default="store", show_default=True,
              help="The raw archive to read: raw_events in the store, or `amb archive`'s files (full rebuild only).")
@click.option("--yes", is_flag=True, help="Do not ask before emptying the fact and rollup tables (full rebuild).")
def command(start: date | None, end: date | None, source: str, yes: bool) -> None:
    settings = config.load()
    if end is not None and start is None:
        raise click.BadParameter("--to needs --from")
    if start and end and start > end:
        raise click.BadParameter(f"--from {start} is after --to {end}")
    if start is not None:
        if source != "store":
            raise click.BadParameter("--from reads the store's raw_events: drop --source files")
        from amb.rebuild import rebuild_from

        part = rebuild_from(settings, start, end, progress=sys.stderr.isatty(),
                            echo=lambda s: click.echo(s, err=True))
        click.echo(f"rebuilt from {start}: {part.incidents:,} incidents in scope ({part.events:,} events, "
                   f"{part.refused:,} now refused); " + ", ".join(
                       f"{k}: {part.changed[k]:,} changed, {part.added[k]:,} added, {part.removed[k]:,} removed"
                       for k in part.changed))
        if part.problems:
            raise AmbError("store inconsistent after the rebuild: " + "; ".join(part.problems))
        return
    from amb.rebuild import rebuild

    if not yes and sys.stdin.isatty():
        click.confirm("Empty the store's facts and rollups and reload them from the archive?", abort=True)
    res = rebuild(settings, progress=sys.stderr.isatty(), echo=lambda s: click.echo(s, err=True), source=source)
    click.echo(f"rebuilt from {res.records:,} archived events ({res.events:,} distinct, "
               f"{res.duplicates:,} duplicates): {res.loaded['incident']:,} incidents, "
               f"{res.loaded['handover']:,} handovers, {res.loaded['call_111']:,} 111 calls loaded")
    if res.refused:
        click.echo(f"{res.refused:,} archived events are refused by the current validation and were left out",
                   err=True)
    if res.problems:
        raise AmbError("store inconsistent after the rebuild: " + "; ".join(res.problems))
