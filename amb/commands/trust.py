"""`amb trust`: give an ambulance trust its own Kafka login (SASL/SCRAM) and ACLs, list, revoke."""

from __future__ import annotations

from collections import Counter

import click

from amb import config, security, topics
from amb.errors import AmbError


def _ods(value: str) -> str:
    return value.strip().upper()


@click.group("trust", help="""Manage trusts' Kafka credentials on a secure broker (`amb stack up --secure`).

Each trust logs in as trust-<ODS> with SCRAM-SHA-512 and may only write its own events topic
(<prefix>.events.<ODS>); it cannot read any topic. Commands act as the stack's admin, whose
password is in the credentials store (AMB_DATA_DIR/security/credentials.json, mode 0600).
See docs/security.md.

\b
Example:
  amb trust add RX7 && amb trust list && amb trust remove RX7
""")
def command() -> None:
    pass


@command.command("add", help="""Create trust-<ODS>'s SCRAM credential and ACLs (write its own events topic).

A random password is printed once on stdout (messages go to stderr) and stored 0600 in the
credentials store; or give one with --password-stdin (first line of stdin). Adding an existing
trust keeps its password and re-applies its ACLs; --rotate issues a new password (the old one
stops working for new connections at once).

\b
Example:
  amb trust add RX7
  PASSWORD=$(amb trust add RX8)            # only the password is on stdout
  printf '%s\\n' "$CHOSEN" | amb trust add RX9 --password-stdin
  amb trust add RX7 --rotate
""")
@click.argument("ods")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--rotate", is_flag=True, help="Issue a new random password even if the trust has one.")
def add(ods: str, password_stdin: bool, rotate: bool) -> None:
    settings = config.load()
    ods = _ods(ods)
    password = None
    if password_stdin:
        if rotate:
            raise AmbError("--rotate and --password-stdin together: give one")
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
        if not password:
            raise AmbError("--password-stdin: no password on stdin")
    principal, new = security.add_trust(settings, ods, password=password, rotate=rotate)
    topic = topics.events_topic(settings, ods)
    store = security.credentials_path(settings)
    if new is None:
        click.echo(f"{principal}: already exists; password unchanged, ACLs re-applied (writes {topic} only). "
                   "`--rotate` issues a new password.", err=True)
    elif password is not None:
        click.echo(f"{principal}: password set from stdin and stored in {store}; ACLs applied (writes {topic} only)",
                   err=True)
    else:
        click.echo(f"{principal}: created; ACLs applied (writes {topic} only). Password below, shown once "
                   f"(also stored 0600 in {store}):", err=True)
        click.echo(new)


@command.command("list", help="""List principals: kind, whether the broker has their SCRAM credential,
their ACL count and what they may do. Reads the credentials store and the broker.

\b
Example:
  amb trust list
""")
def list_() -> None:
    settings = config.load()
    store = security.CredentialStore.of(settings)
    admin = security.SecurityAdmin(settings, admin_password=security.stored_admin_password(settings))
    users = set(admin.users())
    acl_count = Counter(b.principal.removeprefix("User:") for b in admin.acls())
    stored = set(store.principals())
    click.echo(f"{'principal':<14} {'kind':<8} {'broker':<7} {'store':<6} {'acls':>4}  may")
    for principal in sorted(users | stored | set(acl_count), key=_order):
        trust = security.principal_trust(principal)
        kind = ("super" if principal == security.ADMIN else "trust" if trust
                else "service" if principal in security.SERVICES else "other")
        may = "everything (super user)" if principal == security.ADMIN else _summary(settings, principal)
        click.echo(f"{principal:<14} {kind:<8} {'yes' if principal in users else 'no':<7} "
                   f"{'yes' if principal in stored else 'no':<6} {acl_count.get(principal, 0):>4}  {may}")



def _order(principal: str) -> tuple[int, str]:
    rank = 0 if principal == security.ADMIN else 1 if principal in security.SERVICES else 2
    return rank, principal


def _summary(settings: config.Settings, principal: str) -> str:
    try:
        grants = security.grants(settings, principal)
    except AmbError:
        return "not an amb principal"
    parts = []
    for g in grants:
        if g.kind == "cluster":
            continue
        ops = "/".join(op.lower() for op in g.operations if op != "DESCRIBE")
        parts.append(f"{ops} {g.kind} {g.name}{'*' if g.pattern == 'prefixed' else ''}")
    return "; ".join(parts)


@command.command("remove", help="""Revoke trust-<ODS>: delete its ACLs (every request it makes is refused
from then on, also on open connections), its SCRAM credential (no new logins) and its password
in the credentials store.

\b
Example:
  amb trust remove RX7
""")
@click.argument("ods")
def remove(ods: str) -> None:
    settings = config.load()
    principal, deleted, had_user, had_entry = security.remove_trust(settings, _ods(ods))
    click.echo(f"{principal}: {deleted} ACLs deleted; SCRAM credential {'deleted' if had_user else 'was not there'}; "
               f"store entry {'removed' if had_entry else 'was not there'}")
