"""`amb serve`: the analyst HTTP service (catalogue, metrics, incidents, ClickHouse-compatible SQL)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from amb import config
from amb.commands import require_migrated, require_store
from amb.errors import AmbError
from amb.identities import (
    RegistryFile,
    identities_path,
    load_geography,
    load_or_create_key,
    pseudonym_key_path,
)
from sinks import migrate as mig
from sinks.store import opened

if TYPE_CHECKING:
    from amb.serve import InProcessSink, Service


@click.command("serve", help="""Serve scoped, disclosure-controlled figures to analysts over HTTP.

Every request needs a token (`amb token issue --identity icb:QOP`) and is written to the audit
log (`amb audit`). Endpoints: GET /v1/catalogue, GET /v1/metrics/{dispositions|response|handover}
(?level=&code=&from=&to=&by=&breakdown=&format=json|csv), GET /v1/incidents, GET /v1/audit,
GET /openapi.json, GET /metrics (Prometheus), and ClickHouse's HTTP interface on / for
clickhouse-connect, Grafana or curl: one SELECT over the analyst views, user kind_code (e.g.
icb_QOP), password the token. GET / without a query, and GET /report/..., are the commissioner
web page (amb.insight.web); a browser signs in once with ?token=... (kept in an HttpOnly cookie).

With the embedded chDB store, `amb serve` OWNS the store while it runs: it holds the store's lock,
so `amb sink`, `amb query` and `amb db` cannot open it until it stops (ask the service instead,
e.g. `amb audit --url`). So that facts keep arriving meanwhile, run the sink INSIDE the service:
`amb serve --with-sink` consumes AMB_TOPIC_PREFIX.incident-facts on a thread of this process (as
`amb sink` would: same consumer group, DLQ and exactly-once tokens) and each load refreshes the
service's cached tables. With CLICKHOUSE_URL set nothing is locked: `amb sink` may run apart.

\b
Example:
  amb token issue --identity icb:QOP --label alice     # prints the token once
  amb serve --port 8080
  amb serve --with-sink                                # one process owns the store: serve + load facts
  curl -H "Authorization: Bearer $TOKEN" 'localhost:8080/v1/metrics/dispositions?level=icb&format=csv'
  curl -u icb_QOP:$TOKEN 'localhost:8080/?query=SELECT+*+FROM+non_conveyance_icb_month+LIMIT+5'
""")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", type=int, default=None, help="Port. Default: AMB_SERVE_PORT.")
@click.option("--identities", "identities", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Identities file (TOML or YAML). Default: AMB_DATA_DIR/identities.toml.")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Threads answering queries.")
@click.option("--duration", type=float, default=0.0, help="Stop after this many seconds (0 = until Ctrl-C).")
@click.option("--with-sink", "with_sink", is_flag=True, help="Also run the fact sink in this process (the one "
              "owner of a chDB store); applies pending migrations first, as `amb sink` does.")
@click.option("--sink-group", default=None, help="Sink consumer group (default AMB_TOPIC_PREFIX-sink).")
@click.option("--sink-batch-size", type=click.IntRange(min=1), default=config.SINK_BATCH_MESSAGES, show_default=True,
              help="Most fact messages per insert (--with-sink).")
def command(host: str, port: int | None, identities: Path | None, workers: int, duration: float,
            with_sink: bool, sink_group: str | None, sink_batch_size: int) -> None:
    from amb.serve import Running, Service

    settings = config.load()
    path = identities or identities_path(settings)
    registry = RegistryFile(path)
    if not any(t.active for t in registry.get().tokens):
        click.echo(f"warning: no active token in {path}; issue one with `amb token issue --identity icb:QOP`",
                   err=True)
    geography = load_geography(settings.geo_data_dir)
    key = load_or_create_key(pseudonym_key_path(settings))
    if not with_sink:
        require_store(settings)
    with opened(settings) as store:  # takes the chDB lock: this process owns the store from here
        if with_sink:
            for m in mig.migrate(store, echo=click.echo):
                click.echo(f"applied {m.name}")
        require_migrated(store)
        service = Service(store, registry, geography, key)
        stop = threading.Event()
        sink = None
        if with_sink:
            sink = _start_sink(settings, service, sink_group, sink_batch_size, stop)
        server = Running(service, host, port or settings.serve_port, workers)
        try:
            server.start()
        except OSError as exc:
            if sink is not None:
                sink.stop()
            service.close()
            raise AmbError(f"cannot listen on {host}:{port or settings.serve_port}: {exc.strerror or exc}") from None
        where = settings.clickhouse_url.split("@")[-1] if settings.clickhouse_url else str(settings.chdb_dir)
        also = f"; sink {sink.topic} -> store" if sink is not None else ""
        click.echo(f"amb serve: {server.url} (store {where}, identities {path}{also}); Ctrl-C to stop")
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            stop.wait(duration if duration > 0 else None)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if sink is not None:
                sink.stop()
            server.stop()
            service.close()
        if sink is not None and sink.error is not None:
            raise AmbError(f"the in-process sink failed, so the service stopped: {sink.error}")
        if sink is not None:
            st = sink.sink.stats
            click.echo(f"amb serve: sink loaded {st.messages} messages ({st.applied} fact versions applied, "
                       f"{st.dead} to the DLQ)")
        click.echo("amb serve: stopped; audit log flushed")


def _start_sink(settings: config.Settings, service: Service, group: str | None, batch_size: int,
                stop: threading.Event) -> InProcessSink:
    """The fact sink on a thread of this process, as `amb sink` runs it (topics, group, metrics port)."""
    from amb.serve import InProcessSink
    from amb.topics import dlq_topic, ensure_topics, incident_facts_topic, project_topics

    if settings.sink_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.sink_metrics_port)
    ensure_topics(settings.bootstrap, project_topics(settings))
    return InProcessSink(service, settings.bootstrap, incident_facts_topic(settings),
                         group or f"{settings.topic_prefix}-sink", dlq_topic(settings), batch_size=batch_size,
                         echo=click.echo, on_exit=stop.set).start()
