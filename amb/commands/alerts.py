"""`amb alerts spc`: current SPC signals (Making Data Count rules) on the daily and weekly series."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import click

from amb import config
from amb.commands import migrated_store
from amb.commands import parse_date as _date
from amb.insight import series as ser
from domain.metrics import LONDON


@click.group("alerts", help="""Alerts for commissioners from the store.

\b
Example:
  amb alerts spc --icb QOP
""")
def command() -> None:
    pass


@command.command("spc", help=f"""List the SPC signals on the latest day and week of each metric.

Each metric's daily and weekly series per ICB, region and England (from the store's rollups) is
put on an XmR chart (limits: mean ± 2.66 × mean moving range). The latest point is a signal when it
is beyond a limit, in a run of 7 on one side of the mean, in a trend of 6 rising or falling, or one
of two out of three beyond 2 sigma on one side (NHS England, Making Data Count). It is an
improvement or a concern by the metric's good direction; demand (incidents) is neutral.

\b
METRICS: {', '.join(ser.METRICS)}

\b
Example:
  amb alerts spc
  amb alerts spc --icb QOP --by week --format json
  amb alerts spc --level england --metric hours_lost --since 2026-04-01 --all
""")
@click.option("--level", "levels", multiple=True, type=click.Choice(ser.LEVELS),
              help="Geographic level (repeatable). Default: all three.")
@click.option("--icb", default=None, help="One ICB (ODS code such as QOP, or E54…): it, its region and England.")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(list(ser.METRICS)),
              help="Metric (repeatable). Default: all.")
@click.option("--by", "grains", multiple=True, type=click.Choice(ser.GRAINS), help="day and/or week. Default: both.")
@click.option("--since", callback=_date, default=None, help="First date of the series (YYYY-MM-DD). Default: all.")
@click.option("--to", "to", callback=_date, default=None,
              help="Last date of the series, inclusive. Default: yesterday (today is still loading).")
@click.option("--min-points", type=click.IntRange(2), default=ser.DEFAULT_MIN_POINTS, show_default=True,
              help="Skip series shorter than this (Making Data Count asks for 15 or more).")
@click.option("--all", "show_all", is_flag=True, help="List every series, signals or not.")
@click.option("--format", "fmt", type=click.Choice(ser.FORMATS), default="table", show_default=True)
def spc(levels: tuple[str, ...], icb: str | None, metrics: tuple[str, ...], grains: tuple[str, ...],
        since: date | None, to: date | None, min_points: int, show_all: bool, fmt: str) -> None:
    settings = config.load()
    if to is None:
        to = datetime.now(LONDON).date() - timedelta(days=1)
    areas = ser.load_areas(settings.geo_data_dir)
    codes: dict[str, list[str] | None] = {lvl: None for lvl in ser.LEVELS}
    if icb is not None:
        code = areas.resolve_icb(icb)
        if areas.icb_region and code not in areas.icb_region:
            raise click.BadParameter(f"unknown ICB {icb!r}: give an ODS code (e.g. QOP) or an E54 code",
                                     param_hint="--icb")
        codes["icb"] = [code]
        region = areas.icb_region.get(code)
        codes["region"] = [region] if region else None
    found: list[ser.Signal] = []
    with migrated_store(settings) as store:
        for level in levels or ser.LEVELS:
            for by in grains or ser.GRAINS:
                got = ser.load_series(store, level, by, metrics or None, codes[level], since, to)
                found += ser.signals(got, areas.names, min_points)
    if icb is not None and not any(s.level == "icb" for s in found) and (not levels or "icb" in levels):
        click.echo(f"amb: no ICB series of {min_points}+ points for {icb} in the store", err=True)
    if not show_all:
        found = [s for s in found if s.signals]
    click.echo(ser.render(found, fmt))
