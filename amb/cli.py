"""`amb`: the one command-line entry point. Subcommands live one module each in amb.commands."""

from __future__ import annotations

import sys

import click

from amb import __version__
from amb.commands import (
    alerts,
    archive,
    audit,
    config_cmd,
    db,
    demo,
    dlq,
    forecast,
    geo,
    live,
    publish,
    query,
    rebuild,
    reconcile,
    report,
    serve,
    simulate,
    sink,
    stack,
    token,
    trust,
    worker,
)
from amb.errors import AmbError

HELP = """\
amb: NHS ambulance data-sharing platform.

Trusts publish incident, disposition and handover events to Kafka; a stream worker attributes
each incident to LSOA, place, ICB and region and keeps its state; a sink loads ClickHouse for
neighbourhood-to-England queries.

\b
Start here:
  amb stack up            install (first time) and start Kafka 4 (KRaft) and Prometheus
  amb geo build           build the geography index from the shipped open data
  amb geo lookup SW1A1AA  attribute a postcode to LSOA, place, ICB and region
  amb stack down          stop what `stack up` started

Settings come from environment variables: `amb config` lists them with their defaults.
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amb")
def cli() -> None:
    pass


for _module in (stack, geo, simulate, publish, dlq, worker, live, sink, db, query, serve, token, audit, trust, demo,
                config_cmd, alerts, forecast, report, archive, rebuild, reconcile):
    cli.add_command(_module.command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures print one line on stderr and exit non-zero."""
    try:
        cli.main(args=argv, prog_name="amb", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("amb: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AmbError as exc:
        click.echo(f"amb: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("amb: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
