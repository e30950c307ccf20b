"""`amb stack`: install, start, inspect and stop the local Kafka 4 broker and Prometheus."""

from __future__ import annotations

import sys

import click

from amb import config
from amb.stack import Stack, maven, process


def _stack(prometheus: bool = True, secure: bool | None = None) -> Stack:
    return Stack(config.load(), prometheus=prometheus, echo=click.echo, secure=secure)


@click.group("stack", help="""Run the local stack: Kafka 4 (single-node KRaft) and Prometheus.

Jars come from Maven Central into AMB_CACHE_DIR (once); data, logs and pid files live in
AMB_DATA_DIR. Ports: AMB_KAFKA_PORT, AMB_KAFKA_CONTROLLER_PORT, AMB_PROMETHEUS_PORT.

\b
Example:
  amb stack up && amb stack status && amb stack down
""")
def command() -> None:
    pass


@command.command("install", help="""Resolve Kafka (AMB_KAFKA_VERSION) and its dependencies with mvn.

Cached in AMB_CACHE_DIR/kafka-<version>/libs; a second run returns at once. Needs java and mvn.

\b
Example:
  amb stack install
""")
def install() -> None:
    settings = config.load()
    dist = maven.dist_for(settings)
    if dist.installed:
        click.echo(f"Kafka {dist.version} already installed in {dist.home}")
    Stack(settings, echo=click.echo).install()


@command.command("up", help="""Start Kafka (installing it first if needed), create the project topics,
then start Prometheus if it is installed. Idempotent: what already runs is left alone.

With --secure (or AMB_KAFKA_SECURE=1) the broker requires SASL/SCRAM-SHA-512 logins and enforces
ACLs: `up` creates the admin (super user) and the worker, sink and serve principals, and re-applies
every stored trust's credential and ACLs; passwords are kept 0600 in
AMB_DATA_DIR/security/credentials.json. Add trusts with `amb trust add <ODS>`. See docs/security.md.

\b
Example:
  amb stack up
  amb stack up --secure && amb trust add RX7
  AMB_KAFKA_PORT=19092 AMB_KAFKA_CONTROLLER_PORT=19093 amb stack up --no-prometheus
""")
@click.option("--prometheus/--no-prometheus", default=True, show_default=True,
              help="Also start Prometheus (skipped with a note when not installed).")
@click.option("--timeout", type=float, default=90.0, show_default=True,
              help="Seconds to wait for the broker to answer.")
@click.option("--secure", is_flag=True, default=False,
              help="SASL/SCRAM-SHA-512 logins and ACLs (default: AMB_KAFKA_SECURE).")
def up(prometheus: bool = True, timeout: float = 90.0, secure: bool = False) -> None:
    _stack(prometheus, secure=True if secure else None).up(timeout=timeout)


@command.command("down", help="""Stop the processes `amb stack up` started (SIGTERM, then SIGKILL after
--timeout seconds). Only pids whose command line matches this data dir are signalled.

\b
Example:
  amb stack down
  amb stack down --purge     # also delete the broker's and Prometheus' data
""")
@click.option("--purge", is_flag=True, help="Also delete Kafka and Prometheus data under AMB_DATA_DIR.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
def down(purge: bool, timeout: float) -> None:
    _stack().down(purge=purge, timeout=timeout)


@command.command("status", help="""Show each component: state, pid, address.

States: running, unhealthy (process alive but not answering), stopped, not installed.
Exits 0 whatever the state (it is a report); with --check it exits 1 unless every installed
component is running, for scripts.

\b
Example:
  amb stack status
  amb stack status --check || amb stack up
""")
@click.option("--check", is_flag=True, help="Exit 1 unless every installed component is running.")
def status(check: bool) -> None:
    rows = _stack().status()
    click.echo(f"{'component':<11} {'state':<13} {'pid':>7}  {'address':<24} detail")
    for r in rows:
        click.echo(f"{r.name:<11} {r.state:<13} {r.pid or '-':>7}  {r.address:<24} {r.detail}")
    if check and not all(r.ok for r in rows):
        sys.exit(1)


@command.command("logs", help="""Print the log file path(s) and the last lines of a component's log.

\b
Example:
  amb stack logs kafka -n 100
""")
@click.argument("component", type=click.Choice(["kafka", "prometheus"]), default="kafka")
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="How many lines to print.")
def logs(component: str, lines: int) -> None:
    for path in _stack().logs(component):
        click.echo(f"==> {path} <==" if path.exists() else f"==> {path} (not created yet) <==")
        for line in process.tail(path, lines):
            click.echo(line)
