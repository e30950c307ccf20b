"""One module per `amb` subcommand (or subcommand group), each registered explicitly in amb.cli."""

from __future__ import annotations

from datetime import date, datetime

import click


def parse_date(_ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    """click callback for a YYYY-MM-DD option: a clear usage error naming the option."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param=param) from None
