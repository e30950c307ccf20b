"""`amb simulate`: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.command("simulate", help="(not built yet)")
def command() -> None:
    pass
