"""`amb worker`: run one stream worker (Faust) that turns every trust's events into incident facts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from amb import config
from amb.errors import AmbError

HELP = """Run one stream worker: events -> attributed incident state -> incident facts.

Consumes every trust's events topic (AMB_TOPIC_PREFIX.events.<ODS>) as consumer group
AMB_TOPIC_PREFIX-worker, keeps each incident's state in a changelogged table (local RocksDB under
WORKERS_DIR/worker-<ID>), and sends each incident's current fact version to
AMB_TOPIC_PREFIX.incident-facts. Refused messages go to AMB_TOPIC_PREFIX.dlq with the reason.
Start more processes with other --worker-id values to share the partitions.

Prometheus metrics (worker health and live operational gauges) are served on
AMB_WORKER_METRICS_PORT; `amb live` prints them. SIGTERM or Ctrl-C stops cleanly (offsets of
processed events are committed); --max-messages and --timeout make a finite run.

\b
Examples:
  amb worker
  amb worker --worker-id 2 --metrics-port 9112 --web-port 0   # a second worker on this host
  amb worker --timeout 10                 # stop after 10 s without a new message
  amb worker --max-messages 100000 --store memory
"""


@click.command("worker", help=HELP)
@click.option("--worker-id", default="0", show_default=True,
              help="Names this process's local state directory (worker-<ID>); unique per host.")
@click.option("--workers-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Directory holding worker-<ID>/ (default: AMB_DATA_DIR).")
@click.option("--max-messages", type=click.IntRange(min=1), default=None,
              help="Stop after processing this many messages (finite runs, tests).")
@click.option("--timeout", "idle_timeout", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds without a new message, counted once the worker "
                   "has its partitions and has processed each of them to its end offset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Most records per batch handed to the agent.")
@click.option("--batch-within", type=click.FloatRange(min=0.001), default=0.2, show_default=True,
              help="Longest wait (seconds) to fill a batch. Only light load waits: a backlog fills "
                   "--batch-size at once. Short, so an event is queryable within ~2 s (bench/bench_freshness.py).")
@click.option("--store", type=click.Choice(["rocksdb", "memory"]), default="rocksdb", show_default=True,
              help="Table store: rocksdb (local state survives a restart) or memory (rebuilt from the changelog).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus port (default AMB_WORKER_METRICS_PORT; 0 = off).")
@click.option("--web-port", type=click.IntRange(0, 65535), default=None,
              help="Faust's web port (default AMB_WORKER_WEB_PORT; 0 = off).")
@click.option("--naive", is_flag=True, hidden=True,
              help="Per-event agent without batching (the benchmark's baseline).")
@click.option("--loglevel", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, help="Faust's log level (the worker's own progress lines are always shown).")
def command(worker_id: str, workers_dir: Path | None, max_messages: int | None, idle_timeout: float | None,
            batch_size: int, batch_within: float, store: str, metrics_port: int | None, web_port: int | None,
            naive: bool, loglevel: str) -> None:
    settings = config.load()
    from amb.geo.index import GeoIndex
    from amb.topics import ensure_topics, project_topics

    geo_dir = settings.geo_index_dir
    try:
        index = GeoIndex(geo_dir)
    except AmbError:
        raise
    except OSError as exc:
        raise AmbError(f"cannot read the geography index in {geo_dir}: {exc} (run `amb geo build`)") from None
    from amb.security import client_config

    # Creates nothing when `amb stack up` made the topics (with security on, the worker may not).
    ensure_topics(settings.bootstrap, project_topics(settings), client_config(settings, "worker"))

    from streams.agents import StreamWorker, WorkerOptions
    from streams.app import create_app, worker_dir
    from streams.geo import IndexGeo

    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr="127.0.0.1")
        except OSError as exc:
            raise AmbError(f"cannot serve metrics on port {port}: {exc.strerror} "
                           "(set --metrics-port or AMB_WORKER_METRICS_PORT, 0 = off)") from None
    app = create_app(settings, worker_id=worker_id, workers_dir=workers_dir, store=store, web_port=web_port)
    options = WorkerOptions(batch_size=batch_size, batch_within=batch_within, max_messages=max_messages,
                            idle_timeout=idle_timeout, naive=naive)
    worker = StreamWorker(settings, app, IndexGeo(index), options, store=store)
    from streams.metrics import register_live

    register_live(worker.live)
    click.echo(f"amb worker {worker_id}: {settings.bootstrap}, group {app.conf.id}, "
               f"{len(worker.events_topics)} events topics -> {worker.facts_topic} "
               f"(state {store} in {worker_dir(settings, worker_id, workers_dir)}"
               f"{f'; metrics on :{port}' if port else ''})", err=True)
    logging.getLogger("amb").setLevel(min(logging.INFO, logging.getLevelName(loglevel.upper())))

    import gc

    import faust

    # The worker allocates a few objects per event and keeps a live-view row and an expiry entry
    # per held incident: with the default thresholds the cyclic collector ran every 700
    # allocations and walked all of those in its full passes (~5% of a busy worker's time).
    gc.freeze()  # what start-up made (modules, the geography index) is never garbage
    gc.set_threshold(100_000, 50, 100)
    runner = faust.Worker(app, loglevel=loglevel.upper(), quiet=True)
    code = 0
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    click.echo(f"amb worker {worker_id}: {worker.stats.summary()}", err=True)
    sys.exit(code)
