"""`amb publish`: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group("publish", help="(not built yet)")
def command() -> None:
    pass
