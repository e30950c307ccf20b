"""`amb audit`: who queried what, when, and whether it was refused."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request

import click

from amb import config
from amb.errors import AmbError
from sinks.store import StoreBusyError, opened


@click.command("audit", help="""List the audit log, newest first: every analyst query through `amb serve` and
`amb query` (identity, time, surface, query or metric and parameters, rows, refused and why).

Reads the store directly; while `amb serve` owns a chDB store, ask it instead with --url and an
admin token (`amb token issue --identity admin:ops`).

\b
Examples:
  amb audit --limit 20
  amb audit --identity icb:QOP --format csv
  amb audit --url http://127.0.0.1:8080 --token "$ADMIN_TOKEN"
""")
@click.option("--identity", "ident", default=None, help="Only this identity's queries (e.g. icb:QOP).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--url", default=None, help="Ask a running `amb serve` at this base URL instead of the store.")
@click.option("--token", default=None, help="Admin token for --url.")
def command(ident: str | None, limit: int, fmt: str, url: str | None, token: str | None) -> None:
    from amb.serve import read_audit

    if url:
        click.echo(_remote(url, token, ident, limit, fmt))
        return
    settings = config.load()
    if not settings.clickhouse_url and not (settings.chdb_dir / "metadata").exists():
        raise AmbError(f"no chDB store in {settings.chdb_dir}: nothing has been audited yet")
    try:
        with opened(settings) as store:
            table = read_audit(store, ident, limit)
    except StoreBusyError as exc:
        raise AmbError(f"{exc}; while `amb serve` runs use `amb audit --url http://HOST:PORT --token ADMIN_TOKEN`") from None
    if fmt == "table":
        rows = [tuple(str(v)[:60] if isinstance(v, str) else v for v in r) for r in table.rows]
        from sinks.queries import render

        click.echo(render(table.columns, rows, "table") if rows else "no audit rows")
    else:
        click.echo(table.render(fmt).rstrip("\n"))


def _remote(url: str, token: str | None, ident: str | None, limit: int, fmt: str) -> str:
    if not token:
        raise click.UsageError("--url needs --token (an admin identity's token)")
    query = {"limit": str(limit), "format": "csv" if fmt != "json" else "json"}
    if ident:
        query["identity"] = ident
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/audit?{urllib.parse.urlencode(query)}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body: str = resp.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError):
            detail = json.loads(detail)["error"]
        raise AmbError(f"{url} refused: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        raise AmbError(f"cannot reach {url}: {exc.reason}") from None
    return body.rstrip("\n")
