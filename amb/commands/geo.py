"""`amb geo`: placeholder until its issue lands."""

from __future__ import annotations

import click


@click.group("geo", help="(not built yet)")
def command() -> None:
    pass
