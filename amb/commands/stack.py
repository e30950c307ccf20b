"""`amb stack`: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group("stack", help="(not built yet)")
def command() -> None:
    pass
