"""Shared fixtures: one real Kafka 4 broker per test session, uuid topics and groups per test.

The broker is started lazily, the first time a test asks for it, through the same
``amb.stack.Stack`` API `amb stack up` uses, on free ports with its data in a temporary directory
(the jars and the JVM class-data archive come from the shared cache, AMB_CACHE_DIR, so after the
first install a session pays a few seconds). It is stopped at the end of the session, also when
tests fail. A broker that cannot start is an error for every test that needs it, never a skip.

Tests that use the broker must be marked ``@pytest.mark.kafka``; an unmarked test that asks for
a broker fixture fails, so ``pytest -m "not kafka"`` really runs without Java.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from amb.config import Settings
from amb.stack import Stack, private_settings

BROKER_FIXTURES = frozenset({"kafka_stack", "stack_settings", "kafka_bootstrap", "new_topic", "new_group"})


def pytest_runtest_setup(item: pytest.Item) -> None:
    uses_broker = BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if uses_broker and item.get_closest_marker("kafka") is None:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(uses_broker))} but is not marked "
                    "@pytest.mark.kafka", pytrace=False)


@pytest.fixture(scope="session")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's running stack (Kafka only; project topics created)."""
    settings = private_settings(tmp_path_factory.mktemp("amb-stack"))
    stack = Stack(settings, prometheus=False, die_with_parent=True)
    try:
        stack.up(timeout=120)
        yield stack
    finally:
        stack.down(timeout=15)


@pytest.fixture(scope="session")
def stack_settings(kafka_stack: Stack) -> Settings:
    """Settings pointing at the session broker (free ports for every other process too)."""
    return kafka_stack.settings


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_settings: Settings) -> str:
    return stack_settings.bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(partitions=4, config=None) -> name`` of a fresh uuid-named topic,
    ready (every partition has a leader) when returned; deleted after the test."""
    from confluent_kafka.admin import AdminClient

    from amb.topics import TopicSpec, ensure_topics

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    created: list[str] = []

    def make(partitions: int = 4, config: dict[str, str] | None = None) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, "test", config or {})])
        created.append(name)
        deadline = time.monotonic() + 30
        while True:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions and all(
                    p.leader >= 0 for p in meta.partitions.values()):
                return name
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {name} has no leader for every partition after 30 s")
            time.sleep(0.05)

    yield make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            # Best effort: the broker and its data go at session end anyway.
            with contextlib.suppress(Exception):
                fut.result(30)


@pytest.fixture
def new_group() -> Callable[[], str]:
    """Factory: a fresh uuid consumer group id per call."""
    return lambda: f"test-group-{uuid.uuid4().hex[:16]}"
