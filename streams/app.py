"""The Faust App of `amb worker`, built from Settings (the one place Faust settings are chosen).

Choices, and why:

- app id ``<prefix>-worker`` (``amb-worker``): the consumer group and the changelog topic prefix,
  so two deployments with different AMB_TOPIC_PREFIX never share a group.
- at-least-once (Faust's default), NOT ``processing_guarantee='exactly_once'``: Faust's EOS and
  windowed tables have open upstream bugs. Correctness comes from the idempotent reducer and the
  re-send of the current fact on every input (streams.pipeline).
- table store ``rocksdb://`` with the ``rocksdict`` driver (faust-streaming 0.15 supports it, and
  rocksdict is a project dependency): a restart reopens the local state and reads only the
  changelog tail. ``memory://`` (``--store memory``) rebuilds from the whole changelog.
- no standby replicas: a standby doubles the changelog reading of every worker for a faster
  failover, which a 2-core machine cannot afford; a moved partition is restored from the changelog.
- a 10 s consumer session (Faust's default is 60 s): a worker killed with -9 holds its partitions
  until the session expires, so this is how long its partitions stall before another worker (or
  its own restart) takes them over. Heartbeats run in Faust's consumer thread, so a long batch
  does not expire the session.
- consumer metadata refreshed every 15 s (Faust/aiokafka default: 5 min): a worker that joins
  while a restarted broker still reports its topics without partitions is assigned nothing ("Ignoring
  missing topic"); the group leader only rebalances once its metadata shows the partitions, so the
  default left the worker idle for 5 minutes after a broker restart (seen in the chaos suite).
- the events topics bypass Faust's per-message stream (streams.bulk: records of each fetch go
  to the agent in batches; up to 10,000 records a fetch); Faust still runs the group, rebalances,
  flow control and table recovery.
- offsets of the events topics are committed by the worker, at most every second, only for
  batches whose changelog records, facts and dead letters were all delivered (streams.agents).
- an exception in the agent must not ack the batch it interrupted: the agent exits the process
  instead (streams.agents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from amb.config import Settings
from streams.bulk import BulkApp


def app_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}-worker"


def broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{host.strip()}" for host in settings.bootstrap.split(",") if host.strip()]


def worker_dir(settings: Settings, worker_id: str, workers_dir: Path | None = None) -> Path:
    """Local state of one worker: ``<workers_dir or AMB_DATA_DIR>/worker-<id>`` (tables in its
    ``<prefix>-worker/`` subdirectory)."""
    return (workers_dir or settings.data_dir) / f"worker-{worker_id}"


def create_app(
    settings: Settings,
    *,
    worker_id: str = "0",
    workers_dir: Path | None = None,
    store: str = "rocksdb",
    web_port: int | None = None,
    web_enabled: bool = True,
    **overrides: Any,
) -> faust.App:
    """A configured, not yet started, Faust App. ``web_port`` 0 (or AMB_WORKER_WEB_PORT=0) turns
    Faust's web server off: nothing of the worker needs it (metrics have their own port)."""
    if store not in ("rocksdb", "memory"):
        raise ValueError(f"store must be rocksdb or memory, not {store!r}")
    port = settings.worker_web_port if web_port is None else web_port
    datadir = worker_dir(settings, worker_id, workers_dir)
    datadir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = dict(
        broker=broker_urls(settings),
        store=f"{store}://",
        datadir=str(datadir / app_id(settings)),  # one prefix's tables never meet another's
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        table_standby_replicas=0,
        broker_session_timeout=10.0,
        consumer_metadata_max_age_ms=15_000,
        stream_buffer_maxsize=16_384,
        broker_max_poll_records=10_000,
        consumer_max_fetch_size=4 * 1024 * 1024,
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        web_enabled=web_enabled and port > 0,
        web_port=port or 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        worker_redirect_stdouts=False,
    )
    from amb.security import faust_credentials

    credentials = faust_credentials(settings, "worker")  # None unless AMB_KAFKA_SECURE
    if credentials is not None:
        conf["broker_credentials"] = credentials
    conf.update(overrides)
    return BulkApp(app_id(settings), **conf)
