"""`amb rebuild`: recompute every fact from the raw archive and reload the store from scratch."""

from __future__ import annotations

import sys

import click

from amb import config
from amb.errors import AmbError

HELP = """Recompute facts and rollups from the raw archive (`amb archive`) and reload the store.

Every archived event goes through the batch oracle (dedupe by event id, incident reducer,
geography attribution, facts) with the code as it is now: after a fix, this is how old figures
are corrected. The facts, signed change logs and rollups are emptied and reloaded by the sink's
loader; reference data and the audit log are kept. Stop `amb sink` (and `amb serve` on chDB) first;
afterwards the sink carries on from its committed offsets (older versions are ignored as stale).
Exits non-zero if the reloaded store fails its consistency check.

\b
Example:
  amb rebuild
  amb rebuild && amb reconcile --from 2026-10-01 --to 2026-10-07
"""


@click.command("rebuild", help=HELP)
@click.option("--yes", is_flag=True, help="Do not ask before emptying the fact and rollup tables.")
def command(yes: bool) -> None:
    from amb.rebuild import rebuild

    settings = config.load()
    if not yes and sys.stdin.isatty():
        click.confirm("Empty the store's facts and rollups and reload them from the archive?", abort=True)
    res = rebuild(settings, progress=sys.stderr.isatty(), echo=lambda s: click.echo(s, err=True))
    click.echo(f"rebuilt from {res.records:,} archived events in {res.files} files ({res.events:,} distinct, "
               f"{res.duplicates:,} duplicates): {res.loaded['incident']:,} incidents, "
               f"{res.loaded['handover']:,} handovers, {res.loaded['call_111']:,} 111 calls loaded")
    if res.refused:
        click.echo(f"{res.refused:,} archived events are refused by the current validation and were left out",
                   err=True)
    if res.problems:
        raise AmbError("store inconsistent after the rebuild: " + "; ".join(res.problems))
