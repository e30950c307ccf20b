"""`amb query`: the standard tables (dispositions, response, handover) from the store."""

from __future__ import annotations

from datetime import date, datetime

import click

from amb import config
from amb.errors import AmbError
from domain.metrics import MONTH, PERIOD_KINDS
from sinks import migrate as mig
from sinks import queries
from sinks.store import opened


def _date(_ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param=param) from None


@click.command("query", help="""Print a standard table from the store, equal to the batch oracle.

\b
METRIC:
  dispositions  incidents (A7), hear_and_treat, see_and_treat, conveyed_ed, conveyed_elsewhere, open
  response      by category: count, mean_s, p90_s (clock start to first arrival)
  handover      handovers, mean_min, p90_min, over_15/30/45/60 (strictly more), hours_lost

Incidents count at their clock start, in Europe/London periods; --from/--to are inclusive local
dates. The 90th centile is exact (quantileExact(0.9)). Handover also has --level site.

\b
Example:
  amb query dispositions --level icb --from 2026-04-01 --to 2026-04-30 --by day
  amb query response --level england --by month --format csv
  amb query handover --level site --code RXX01 --by day --format json
""")
@click.argument("metric", type=click.Choice(queries.METRICS))
@click.option("--level", type=click.Choice(queries.HANDOVER_LEVELS), default="england", show_default=True,
              help="Geographic level (site: handover only).")
@click.option("--code", default=None, help="One area's code (E54…, E01…, a trust or site code). Default: all.")
@click.option("--from", "start", callback=_date, default=None, help="First clock-start date (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="Last clock-start date, inclusive.")
@click.option("--by", type=click.Choice(PERIOD_KINDS), default=MONTH, show_default=True, help="Period.")
@click.option("--format", "fmt", type=click.Choice(queries.FORMATS), default="table", show_default=True)
def command(metric: str, level: str, code: str | None, start: date | None, end: date | None,
            by: str, fmt: str) -> None:
    settings = config.load()
    try:
        q = queries.Query(metric, level, by, code, start, end)
    except queries.QueryError as exc:
        raise click.UsageError(str(exc)) from None
    if not settings.clickhouse_url and not (settings.chdb_dir / "metadata").exists():
        raise AmbError(f"no chDB store in {settings.chdb_dir}: run `amb db migrate` (and load data) first")
    with opened(settings) as store:
        pending = mig.pending(store, mig.load())
        if pending:
            raise AmbError(f"the store needs {len(pending)} migration(s) ({pending[0].name}, ...): run `amb db migrate`")
        rows = queries.run(store, q)
    click.echo(queries.render(q.columns, rows, fmt))
