"""`amb reconcile`: the store's figures against a recompute from the raw archive."""

from __future__ import annotations

import sys
from datetime import date

import click

from amb import config
from amb.commands import parse_date as _date
from amb.errors import AmbError
from sinks.queries import HANDOVER_LEVELS

HELP = """Compare the store with a recompute from the raw archive; exit 1 if anything differs.

The raw archive is the store's raw_events table (kept by `amb sink`), or with --source files
the Avro files of `amb archive`.

Recomputes every fact from the archive (as `amb rebuild` does, without writing) and compares, for
incidents whose clock start falls in --from..--to (Europe/London days, inclusive; default all):
the incident, handover and 111-call facts row by row, then every `amb query` table (dispositions,
response, handover; every level; by day). Prints one line per table and level with the rows each
side holds and how many are missing from the store, extra in it, or changed. Run it when the
worker and the sink are drained (no lag), with the sink stopped if the store is chDB.

\b
Example:
  amb reconcile --from 2026-10-01 --to 2026-10-07
  amb reconcile --level england --level icb
  amb reconcile --all-rows       # also list the tables that agree
"""




class Differs(AmbError):
    exit_code = 1


@click.command("reconcile", help=HELP)
@click.option("--from", "start", callback=_date, default=None, help="First clock-start day (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="Last clock-start day (YYYY-MM-DD), inclusive.")
@click.option("--level", "levels", multiple=True,
              type=click.Choice(HANDOVER_LEVELS),
              help="Compare the query tables at this level only (repeatable; default every level).")
@click.option("--all-rows", is_flag=True, help="Print every compared table, not only those that differ.")
@click.option("--source", type=click.Choice(("store", "files")), default="store", show_default=True,
              help="The raw archive: raw_events in the store (kept by `amb sink`) or `amb archive`'s files.")
def command(start: date | None, end: date | None, levels: tuple[str, ...], all_rows: bool, source: str) -> None:
    from amb.rebuild import format_differences, reconcile

    if start and end and start > end:
        raise click.BadParameter(f"--from {start} is after --to {end}")
    settings = config.load()
    res = reconcile(settings, start, end, progress=sys.stderr.isatty(), levels=levels or None, source=source)
    differing = [d for d in res.differences if d.differs]
    if all_rows or differing:
        click.echo(format_differences(res.differences, only_differing=not all_rows))
    click.echo(f"compared {len(res.differences)} tables against {res.records:,} archived events: "
               f"{len(differing)} differ")
    if res.refused:
        click.echo(f"{res.refused:,} archived events are refused by the current validation", err=True)
    if differing:
        raise Differs(f"the store differs from the archive in {len(differing)} tables")
