"""`amb forecast`: hourly incidents per place with prediction intervals, and its backtest."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import date
from pathlib import Path

import click
from tqdm import tqdm

from amb import config
from amb.commands import migrated_store
from amb.commands import parse_date as _date
from amb.errors import AmbError
from amb.insight import forecast as fc
from amb.insight.series import load_areas


class ForecastFailed(AmbError):
    """The forecast could not be made (too little history, nothing in the store)."""




def lad_names(geo_data_dir: Path) -> dict[str, str]:
    """LAD code -> name from the shipped LSOA lookup (empty if it is missing)."""
    path = geo_data_dir / "lsoa21_geography.csv.gz"
    if not path.exists():
        return {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return {r["lad_code"]: r["lad_name"] for r in csv.DictReader(f)}


@click.command("forecast", help="""Forecast hourly incidents per place (LAD), with prediction intervals.

A count regression (statsmodels GLM: Europe/London hour of day, weekday, weekend x hour) is fitted
per place on the last --history-weeks weeks of hourly incidents in the store, and forecasts --days
days from --from (default: the day after the data ends). The table shows each day's expected
incidents and its busiest hour with the --level interval; --format csv/json gives every hour.

--backtest holds out the last --days days of data instead and reports MAE, MAPE and interval
coverage of the model and of the seasonal-naive baseline (same hour last week).

\b
Example:
  amb forecast --icb QOP --days 7
  amb forecast --icb QOP --days 7 --format csv > qop.csv
  amb forecast --backtest --icb QRL --days 7 --format json
""")
@click.option("--icb", default=None, help="Only this ICB's places (ODS code such as QOP, or E54…). Default: all.")
@click.option("--days", type=click.IntRange(1, 28), default=7, show_default=True, help="Days to forecast.")
@click.option("--from", "start", callback=_date, default=None, help="First forecast day (YYYY-MM-DD).")
@click.option("--level", type=click.FloatRange(0.5, 0.99), default=fc.DEFAULT_LEVEL, show_default=True,
              help="Prediction interval coverage.")
@click.option("--history-weeks", type=click.IntRange(2, 104), default=fc.DEFAULT_HISTORY_WEEKS, show_default=True,
              help="Weeks of history each model is fitted on.")
@click.option("--backtest", is_flag=True, help="Score the model against seasonal naive on the last --days days.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table", show_default=True)
def command(icb: str | None, days: int, start: date | None, level: float, history_weeks: int, backtest: bool,
            fmt: str) -> None:
    settings = config.load()
    areas = load_areas(settings.geo_data_dir)
    code = areas.resolve_icb(icb) if icb else None
    if code is not None and areas.icb_region and code not in areas.icb_region:
        raise AmbError(f"unknown ICB {icb!r}: give an ODS code (e.g. QOP) or an E54 code")
    with migrated_store(settings) as store:
        series = fc.load_hourly(store, code)
    if not series:
        raise ForecastFailed(f"no incidents in the store{f' for {icb}' if icb else ''}")
    names = lad_names(settings.geo_data_dir)
    try:
        with tqdm(total=len(series), desc="places", unit="place", disable=len(series) < 5, leave=False) as bar:
            if backtest:
                result = fc.backtest(series, days, history_weeks, level, progress=bar)
            else:
                forecasts = fc.forecast_all(series, start, days, history_weeks, level, progress=bar)
    except fc.ForecastError as exc:
        raise ForecastFailed(str(exc)) from None
    if backtest:
        click.echo(fc.render_backtest(result, "json" if fmt == "json" else "table"))
        return
    if fmt == "table":
        click.echo(fc.render_table(fc.DAILY_COLUMNS, fc.daily_rows(forecasts, names)))
        return
    rows = fc.hourly_rows(forecasts, names)
    if fmt == "json":
        click.echo(json.dumps([dict(zip(fc.HOURLY_COLUMNS, r, strict=True)) for r in rows], indent=1))
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fc.HOURLY_COLUMNS)
    w.writerows(rows)
    click.echo(buf.getvalue().rstrip("\n"))
