"""`amb config`: show every setting, its environment variable, default and current value."""

from __future__ import annotations

import dataclasses

import click

from amb import config


@click.command("config", help="""List every setting with its environment variable and current value.

\b
Example:
  AMB_KAFKA_PORT=19092 amb config
""")
def command() -> None:
    s = config.load()
    for f in dataclasses.fields(config.Settings):
        click.echo(f"{f.metadata['env']:<28} {getattr(s, f.name)!s:<40} {f.metadata['doc']}")
