"""`amb sink`: load the worker's incident facts from Kafka into the store (chDB or ClickHouse)."""

from __future__ import annotations

import signal
from typing import Any

import click

from amb import config

HELP = """Load incident, handover and 111-call facts from AMB_TOPIC_PREFIX.incident-facts into the store.

Consumer group AMB_TOPIC_PREFIX-sink; offsets are committed only after the inserts return, and
every insert carries a topic:partition:offsets deduplication token, so a crash or a replay never
double counts (corrections move counts between cells). Undecodable messages go to
AMB_TOPIC_PREFIX.dlq. Pending store migrations are applied first. A chDB store is opened by this
process alone: stop the sink before `amb query` (or query a ClickHouse server at CLICKHOUSE_URL).

The same process keeps the raw archive in the store (unless --no-archive): every event the worker
accepts, from every trust's events topic, into raw_events (deduplicated by event id; what
`amb rebuild --from` and `amb reconcile` recompute from), and every dead letter, with its
reasons, into dead_letters (the data-quality scorecard). Own consumer groups
AMB_TOPIC_PREFIX-raw-archive and AMB_TOPIC_PREFIX-dead-letters; offsets committed after each insert.
Prometheus metrics on AMB_SINK_METRICS_PORT; SIGTERM or Ctrl-C stops after the current batch.

\b
Examples:
  amb sink
  amb sink --timeout 10            # stop after 10 s without a new message
  amb sink --max-messages 100000 --batch-size 20000
"""


@click.command("sink", help=HELP)
@click.option("--max-messages", type=click.IntRange(min=1), default=None, help="Stop after this many messages.")
@click.option("--timeout", "idle_timeout", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds without a new message.")
@click.option("--batch-size", type=click.IntRange(min=1), default=config.SINK_BATCH_MESSAGES, show_default=True,
              help="Most messages per load. Each load costs about 0.5 s whatever its size, so a backlog loads "
                   "fastest in big batches; memory holds one batch of messages and their columns.")
@click.option("--batch-seconds", type=click.FloatRange(min=0.01), default=0.2, show_default=True,
              help="Longest wait (seconds) to fill a batch; a backlog fills --batch-size at once. Short, so "
                   "an event is queryable within ~2 s at light load (bench/bench_freshness.py).")
@click.option("--group", default=None, help="Consumer group (default AMB_TOPIC_PREFIX-sink).")
@click.option("--archive/--no-archive", default=True, show_default=True,
              help="Also archive accepted raw events and dead letters into the store.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus port (default AMB_SINK_METRICS_PORT; 0 = off).")
def command(max_messages: int | None, idle_timeout: float | None, batch_size: int, batch_seconds: float,
            group: str | None, archive: bool, metrics_port: int | None) -> None:
    from confluent_kafka import Consumer, Producer

    from amb.topics import dlq_topic, ensure_topics, incident_facts_topic, project_topics
    from sinks import migrate as mig
    from sinks.sink import FactSink, consumer_config
    from sinks.store import opened

    settings = config.load()
    port = settings.sink_metrics_port if metrics_port is None else metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port)
    ensure_topics(settings.bootstrap, project_topics(settings))
    with opened(settings) as store:
        for m in mig.migrate(store, echo=click.echo):
            click.echo(f"applied {m.name}")
        from amb.security import client_config

        consumer = Consumer({**consumer_config(settings.bootstrap, group or f"{settings.topic_prefix}-sink"),
                             **client_config(settings, "sink")})
        producer = Producer({"bootstrap.servers": settings.bootstrap, "log_level": 0,
                             **client_config(settings, "sink")})
        topic = incident_facts_topic(settings)
        consumer.subscribe([topic])
        sink = FactSink(store, consumer, producer, dlq_topic(settings), batch_size, batch_seconds, echo=click.echo)

        def stop(_sig: int, _frame: Any) -> None:
            sink.stop()

        old = signal.signal(signal.SIGTERM, stop)
        click.echo(f"sink: {topic} -> {store.backend} ({settings.chdb_dir if store.backend == 'chdb' else 'server'})")
        archivers = []
        if archive:
            from sinks.raw import dead_letter_archiver, raw_archiver

            archivers = [raw_archiver(settings, store, batch_size), dead_letter_archiver(settings, store, batch_size)]
        try:
            stats = sink.run(max_messages, idle_timeout, archivers)
        finally:
            signal.signal(signal.SIGTERM, old)
            consumer.close()
            for a in archivers:
                a.close()
            producer.flush(30)
        click.echo(f"sink: {stats.messages} messages in {stats.batches} batches: {stats.applied} fact versions "
                   f"applied, {stats.stale} stale or superseded, {stats.dead} to the DLQ")
        for a in archivers:
            extra = f", {a.stats.refused} refused by validation (the worker's DLQ has them)" if a.stats.refused else ""
            click.echo(f"sink: {a.stats.rows} rows archived into {a.table} in {a.stats.batches} batches{extra}")

