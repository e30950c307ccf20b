"""`amb query`: the standard tables (dispositions, response, handover) through the service's own
code path (amb.serve.run_catalogue_query: the same scoping, disclosure control and audit as
GET /v1/metrics), so the CLI and the HTTP API cannot disagree."""

from __future__ import annotations

import contextlib
from datetime import date
from typing import TYPE_CHECKING

import click

from amb import config
from amb.commands import migrated_store
from amb.commands import parse_date as _date
from amb.errors import AmbError
from domain.access import AccessError, parse_identity
from domain.metrics import MONTH, PERIOD_KINDS
from sinks import queries
from sinks.store import StoreBusyError

if TYPE_CHECKING:
    from amb.serve import MetricRequest




@click.command("query", help="""Print a standard table from the store, equal to the batch oracle.

\b
METRIC:
  dispositions  incidents (A7), hear_and_treat, see_and_treat, conveyed_ed, conveyed_elsewhere, open
  response      by category: count, mean_s, p90_s (clock start to first arrival)
  handover      handovers, mean_min, p90_min, over_15/30/45/60 (strictly more), hours_lost

Incidents count at their clock start, in Europe/London periods; --from/--to are inclusive local
dates. The 90th centile is exact (quantileExact(0.9)). Handover also has --level site.

It runs the analyst service's code path: without --identity as the local operator (exact
figures, audited as operator:local); with --identity KIND:CODE as that analyst would see it
(scoped, small counts shown as *). While `amb serve` owns the chDB store, ask it with --url and a
token (the answer is the one GET /v1/metrics gives that token's identity).

\b
Example:
  amb query dispositions --level icb --from 2026-04-01 --to 2026-04-30 --by day
  amb query response --level england --by month --format csv
  amb query handover --level site --code RXX01 --by day --format json
  amb query dispositions --level icb --identity icb:QOP              # as an ICB analyst sees it
  amb query dispositions --url http://127.0.0.1:8080 --token "$TOKEN"   # ask a running amb serve
""")
@click.argument("metric", type=click.Choice(queries.METRICS))
@click.option("--level", type=click.Choice(queries.HANDOVER_LEVELS), default="england", show_default=True,
              help="Geographic level (site: handover only).")
@click.option("--code", default=None, help="One area's code (E54…, E01…, a trust or site code). Default: all.")
@click.option("--from", "start", callback=_date, default=None, help="First clock-start date (YYYY-MM-DD).")
@click.option("--to", "end", callback=_date, default=None, help="Last clock-start date, inclusive.")
@click.option("--by", type=click.Choice(PERIOD_KINDS), default=MONTH, show_default=True, help="Period.")
@click.option("--format", "fmt", type=click.Choice(queries.FORMATS), default="table", show_default=True)
@click.option("--breakdown", type=click.Choice(["imd_decile"]), default=None,
              help="England by month, by IMD decile of the incident's LSOA.")
@click.option("--identity", "ident", default=None, help="See the table as this analyst identity (e.g. icb:QOP).")
@click.option("--url", default=None, help="Ask a running `amb serve` at this base URL instead of the store.")
@click.option("--token", default=None, help="The token for --url (its identity's view of the table).")
def command(metric: str, level: str, code: str | None, start: date | None, end: date | None,
            by: str, fmt: str, breakdown: str | None, ident: str | None, url: str | None,
            token: str | None) -> None:
    from amb.serve import MetricRequest, ServeError, run_catalogue_query

    try:
        q = queries.Query(metric, level, by, code, start, end)
        req = MetricRequest.parse(metric, {k: str(v) for k, v in MetricRequest(q, breakdown).params().items()
                                           if v is not None})
    except (queries.QueryError, ServeError) as exc:
        raise click.UsageError(str(exc)) from None
    if url:
        if ident:
            raise click.UsageError("--identity is the token's identity with --url: drop --identity")
        click.echo(_remote(url, token, req, fmt))
        return
    try:
        who = parse_identity(ident) if ident else None
    except AccessError as exc:
        raise click.UsageError(str(exc)) from None
    settings = config.load()
    try:
        with migrated_store(settings) as store:
            table = run_catalogue_query(store, who, req.query, geo_dir=settings.geo_data_dir,
                                        breakdown=req.breakdown)
    except StoreBusyError as exc:
        raise AmbError(f"{exc}; while `amb serve` runs use `amb query ... --url http://HOST:PORT --token TOKEN`") from None
    except ServeError as exc:
        raise AmbError(str(exc)) from None
    click.echo(queries.render(table.columns, table.rows, fmt))


def _remote(url: str, token: str | None, req: MetricRequest, fmt: str) -> str:
    """The table from a running service (GET /v1/metrics), rendered as the local path renders it."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    if not token:
        raise click.UsageError("--url needs --token")
    params = {k: str(v) for k, v in req.params().items() if v is not None}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/metrics/{req.query.metric}?{urllib.parse.urlencode(params)}",
        headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError):
            detail = json.loads(detail)["error"]
        raise AmbError(f"{url} refused: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        raise AmbError(f"cannot reach {url}: {exc.reason}") from None
    columns = body["columns"]
    rows = [tuple(r[c] for c in columns) for r in body["rows"]]
    return queries.render(columns, rows, fmt)
