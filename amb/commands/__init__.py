"""One module per `amb` subcommand (or subcommand group), each registered explicitly in amb.cli."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import click

from amb.config import Settings
from amb.errors import AmbError


def parse_date(_ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    """click callback for a YYYY-MM-DD option: a clear usage error naming the option."""
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param=param) from None


def require_migrated(store: Any) -> None:
    """A one-line error when the store lacks migrations (its tables would be missing or old)."""
    from sinks import migrate as mig

    pending = mig.pending(store, mig.load())
    if pending:
        raise AmbError(f"the store needs {len(pending)} migration(s) ({pending[0].name}, ...): run `amb db migrate`")


def require_store(settings: Settings) -> None:
    """A one-line error, before anything opens it, when there is no chDB store to read."""
    if not settings.clickhouse_url and not (settings.chdb_dir / "metadata").exists():
        raise AmbError(f"no chDB store in {settings.chdb_dir}: run `amb db migrate` (and load data) first")


@contextmanager
def migrated_store(settings: Settings) -> Iterator[Any]:
    """The store, opened, for a command that reads it: present and fully migrated, or a clear error."""
    from sinks.store import opened

    require_store(settings)
    with opened(settings) as store:
        require_migrated(store)
        yield store
