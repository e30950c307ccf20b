"""`amb report icb`: an ICB's commissioner report (standards against region, England and peers,
cross-border flows, inequalities, 111, data quality) as one self-contained HTML file and a terminal
summary, from the store, disclosure-controlled."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from amb import config
from amb.commands import migrated_store
from amb.commands import parse_date as _date
from amb.errors import AmbError
from sinks.store import StoreBusyError


@click.group("report", help="""Commissioner reports from the store.

\b
Example:
  amb report icb QOP --period 2026-10
""")
def command() -> None:
    pass


@command.command("icb", help="""One ICB's report for a month or a date range: every standard (non-conveyance
and its parts, C1-C4 response mean and 90th centile, handover mean, 90th, over 30 and 60 minutes,
hours lost) against its region, England and the region's other ICBs; the trusts serving it and the
hospital sites its patients go to; the host trust's handover delays by ICB; every figure by IMD
decile; NHS 111 calls and what became of them; data quality by trust; daily SPC charts.

Writes one self-contained HTML file (inline SVG charts, no external assets) and prints a summary.
Published figures follow the disclosure rules (counts of 1-7 and figures on fewer than 8 records
shown as *).

ICB: an ODS code (QOP) or ONS code (E54000057).

\b
Example:
  amb report icb QOP --period 2026-10
  amb report icb E54000057 --from 2026-10-01 --to 2026-10-14 --out qop.html
""")
@click.argument("icb")
@click.option("--period", default=None, metavar="YYYY-MM", help="A calendar month (Europe/London).")
@click.option("--from", "start", callback=_date, default=None, help="First clock-start date (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="Last clock-start date, inclusive.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. Default: report-<ICB ODS>-<period>.html in the current directory.")
def icb_command(icb: str, period: str | None, start: date | None, end: date | None, out: Path | None) -> None:
    from amb.insight import build_report

    settings = config.load()
    try:
        with migrated_store(settings) as store:
            built = build_report(store, icb, period, start, end, settings.geo_data_dir)
    except StoreBusyError as exc:
        raise AmbError(f"{exc}; while `amb serve` runs, open the report page it serves at /") from None
    path = out or Path(f"report-{built.ods or built.ctx.icb}-{built.period.label.replace(' ', '_')}.html")
    path.write_text(built.html(), encoding="utf-8")
    click.echo(built.text())
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")


@command.command("quality", help="""The data-quality scorecard per trust, from the raw archive that `amb sink`
keeps in the store: how late events arrive (when the trust sent each event, its earliest copy,
minus when it happened: 50th/90th/99th centiles in minutes and the shares later than 1 hour,
24 hours and the 7-day late-arrival horizon), how often dispositions are corrected (incidents
with more than one disposition event), and how many messages were refused (dead letters, by
reason). Events by event time, dead letters by when they were refused, Europe/London days.
Definitions: domain/data_quality.py. Fails clearly if the store holds no raw events (started with
`amb sink --no-archive`) rather than printing zeros.

\b
Example:
  amb report quality --period 2026-10
  amb report quality --from 2026-10-01 --to 2026-10-07 --trust RX7 --format csv
""")
@click.option("--period", default=None, metavar="YYYY-MM", help="A calendar month (Europe/London).")
@click.option("--from", "start", callback=_date, default=None, help="First day (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="Last day, inclusive.")
@click.option("--trust", "trusts", multiple=True, help="Only this trust (ODS code; repeatable).")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table", show_default=True)
def quality_command(period: str | None, start: date | None, end: date | None, trusts: tuple[str, ...],
                    fmt: str) -> None:
    import json

    from amb.insight.quality import scorecard, table_rows
    from amb.insight.report import Period
    from domain.data_quality import COLUMNS
    from sinks.queries import render

    per = Period.parse(period, start, end)
    settings = config.load()
    with migrated_store(settings) as store:
        card = scorecard(store, per.lo_ms, per.hi_ms, list(trusts) or None)
    rows = table_rows(card)
    dead = [(t or "unknown", r, n) for (t, r), n in sorted(card.dead_by_reason.items())]
    if fmt == "json":
        click.echo(json.dumps({"period": per.label, "trusts": [dict(zip(("trust", *COLUMNS), r, strict=True))
                                                               for r in rows],
                               "dead_letters": [{"trust": t, "reason": r, "count": n} for t, r, n in dead]},
                              indent=1))
        return
    if fmt == "csv":
        click.echo(render(("trust", *COLUMNS), rows, "csv"))
        return
    click.echo(f"data quality, {per.label}")
    click.echo(render(("trust", *COLUMNS), rows, "table"))
    if dead:
        click.echo("\ndead letters by reason")
        click.echo(render(("trust", "reason", "dead_letters"), dead, "table"))
