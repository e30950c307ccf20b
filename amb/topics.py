"""The project's Kafka topics, named in one place.

* ``<prefix>.events.<ODS>``: one per ambulance trust (domain.events.TRUSTS), the trust's raw
  incident-lifecycle events keyed by ``Event.key`` (trust:incident) so an incident stays ordered.
* ``<prefix>.dlq``: events refused anywhere on the way in, with the reason; kept 30 days so bad
  input is never silently dropped.
* ``<prefix>.incident-facts``: the worker's attributed per-incident facts, read by the sink.

`amb stack up` creates them on the local broker; :func:`ensure_topics` does the same on any
cluster (``AMB_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amb.config import Settings
from amb.errors import AmbError
from domain.events import TRUSTS

DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str
    config: Mapping[str, str] = field(default_factory=dict)


def events_topic(settings: Settings, trust: str) -> str:
    """The events topic of one trust (its ODS code, e.g. ``RX6``)."""
    if trust not in TRUSTS:
        raise AmbError(f"unknown trust ODS code {trust!r}: expected one of {', '.join(TRUSTS)}")
    return settings.topic(f"events.{trust}")


def events_topics(settings: Settings) -> list[str]:
    return [events_topic(settings, trust) for trust in TRUSTS]


def events_pattern(settings: Settings) -> str:
    """A regex matching every trust's events topic (for pattern subscriptions)."""
    return "^" + re.escape(settings.topic("events.")) + r"[A-Z0-9]+$"


def dlq_topic(settings: Settings) -> str:
    return settings.topic("dlq")


def incident_facts_topic(settings: Settings) -> str:
    return settings.topic("incident-facts")


def project_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the platform needs, with partitions from ``AMB_KAFKA_PARTITIONS``."""
    n = settings.kafka_partitions
    specs = [TopicSpec(events_topic(settings, t), n, f"incident-lifecycle events from trust {t}") for t in TRUSTS]
    specs.append(TopicSpec(dlq_topic(settings), n, "refused events with the reason",
                           {"retention.ms": str(DLQ_RETENTION_MS)}))
    specs.append(TopicSpec(incident_facts_topic(settings), n, "attributed per-incident facts for the sink"))
    return specs


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], config: Mapping[str, Any] | None = None,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet (replication -1: the broker's
    ``default.replication.factor`` applies). ``config`` adds client properties, e.g. the SASL login of
    :func:`amb.security.client_config`. Returns the created names.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    specs = list(specs)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(config or {})})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise AmbError(f"cannot list topics on {bootstrap}: {exc.args[0]}") from None
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=dict(s.config))
         for s in wanted],
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise AmbError(f"cannot create topic {name} on {bootstrap}: {err}") from None
    return sorted(created)
