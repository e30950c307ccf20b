"""`amb token`: issue, revoke and list analyst tokens; generate the server's users and roles."""

from __future__ import annotations

from pathlib import Path

import click

from amb import config
from amb.errors import AmbError
from amb.identities import (
    IdentityError,
    Registry,
    TokenRecord,
    describe,
    identities_path,
    issue,
    load,
    load_geography,
    rbac_sql,
    revoke,
)
from domain.access import AccessError, Identity, parse_identity

RBAC_FILE = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "rbac.sql"
EXAMPLE_HASH = "0" * 64
"""The committed example's token hash: no token has it, so its users cannot log in."""


def _path(identities: Path | None) -> Path:
    return identities or identities_path(config.load())


_identities_option = click.option(
    "--identities", "identities", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Identities file (TOML or YAML). Default: AMB_DATA_DIR/identities.toml.")


@click.group("token", help="""Analyst identities and their tokens (kept hashed in the identities file).

An identity is KIND:CODE: trust:RX7, icb:QOP, region:Y56 (ODS codes), national:LABEL, admin:LABEL.
A token is printed once, when issued; the file keeps only its SHA-256. A running `amb serve`
notices changes on its next request.

\b
Examples:
  amb token issue --identity icb:QOP --label alice
  amb token list
  amb token revoke 3f9c2a1b7d0e
  amb token ddl --out deploy/clickhouse/rbac.sql
""")
def command() -> None:
    pass


@command.command("issue", help="""Issue a token for an identity (added to the file if new) and print it once.

\b
Examples:
  amb token issue --identity icb:QOP --label alice
  amb token issue --identity national:nhse --incidents     # may read pseudonymised incident rows
""")
@click.option("--identity", "ident", required=True, help="KIND:CODE, e.g. icb:QOP, trust:RX7, region:Y56.")
@click.option("--label", default="", help="Who or what holds the token (shown by `amb token list`).")
@click.option("--name", default="", help="Display name of a new identity (default: from the reference data).")
@click.option("--incidents", is_flag=True, help="New region/national/admin identity may read pseudonymised incident rows.")
@_identities_option
def issue_cmd(ident: str, label: str, name: str, incidents: bool, identities: Path | None) -> None:
    settings = config.load()
    path = identities or identities_path(settings)
    try:
        base = parse_identity(ident)
        geography = load_geography(settings.geo_data_dir)
        geography.check(base)
        new = Identity(base.kind, base.code, name or geography.names.get(base.id, ""), incidents)
    except (AccessError, IdentityError) as exc:
        raise click.BadParameter(str(exc), param_hint="--identity") from None
    existing = load(path)
    if any(i.id == new.id for i in existing.identities) and (name or incidents):
        click.echo(f"note: {new.id} exists; --name/--incidents apply to new identities only (edit {path})", err=True)
    token, rec = issue(path, new, label)
    click.echo(token)
    click.echo(f"issued token {rec.id} for {rec.identity}; it is not stored and will not be shown again "
               f"(SQL login: user {new.login}, password the token)", err=True)


@command.command("revoke", help="""Revoke a token by its id (or a unique prefix), or every token of an identity.

\b
Examples:
  amb token revoke 3f9c2a1b7d0e
  amb token revoke --identity icb:QOP
""")
@click.argument("token_id", required=False)
@click.option("--identity", "ident", default=None, help="Revoke every active token of this identity.")
@_identities_option
def revoke_cmd(token_id: str | None, ident: str | None, identities: Path | None) -> None:
    try:
        who = parse_identity(ident).id if ident else None
    except AccessError as exc:
        raise click.BadParameter(str(exc), param_hint="--identity") from None
    for rec in revoke(_path(identities), token_id, who):
        click.echo(f"revoked {rec.id} ({rec.identity}, {rec.label or 'no label'})")


@command.command("list", help="""List tokens: id, identity, label, when issued, active or revoked.

\b
Example:
  amb token list --identity icb:QOP
""")
@click.option("--identity", "ident", default=None, help="Only this identity's tokens.")
@_identities_option
def list_cmd(ident: str | None, identities: Path | None) -> None:
    reg = load(_path(identities))
    rows = [r for r in describe(reg) if ident is None or r[1] == ident]
    if not rows:
        click.echo("no tokens")
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def example_registry() -> Registry:
    """The committed deploy/clickhouse/rbac.sql's identities: one of each kind, unusable tokens."""
    idents = (Identity("trust", "RX7"), Identity("icb", "QOP"), Identity("region", "Y62"),
              Identity("national", "nhse"), Identity("admin", "ops"))
    toks = tuple(TokenRecord(f"example{i}", ident.id, EXAMPLE_HASH, "example") for i, ident in enumerate(idents))
    return Registry(idents, toks)


@command.command("ddl", help="""Print (or write) ClickHouse server users, roles, grants and row policies for the
identities and token hashes in the file, so the same tokens log in to a ClickHouse server.

\b
Examples:
  amb token ddl > rbac.sql && clickhouse-client --multiquery < rbac.sql
  amb token ddl --example --check     # deploy/clickhouse/rbac.sql is up to date
""")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here instead of stdout.")
@click.option("--database", default="default", show_default=True, help="Database holding the store's tables.")
@click.option("--example", is_flag=True, help=f"Use the example identities (writes {RBAC_FILE.name} with --out default).")
@click.option("--check", is_flag=True, help="Exit 1 if --out (default deploy/clickhouse/rbac.sql) differs.")
@_identities_option
def ddl_cmd(out: Path | None, database: str, example: bool, check: bool, identities: Path | None) -> None:
    if example:
        text = rbac_sql(example_registry(), database, "example identities (amb/commands/token.py); token "
                        "hashes are placeholders no token matches")
    else:
        path = _path(identities)
        text = rbac_sql(load(path), database, str(path))
    target = out or (RBAC_FILE if (example or check) else None)
    if check:
        assert target is not None
        if not target.exists() or target.read_text() != text:
            raise AmbError(f"{target} is out of date: run `amb token ddl --example --out {target}`")
        click.echo(f"{target} is up to date")
        return
    if target is None:
        click.echo(text, nl=False)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    click.echo(f"wrote {target}")
