"""A real round trip through the session broker: 10,000 keyed messages from an idempotent
producer come back complete, unchanged, and in order per key (the property the platform relies on
to keep one incident's events ordered)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

N_MESSAGES = 10_000
N_KEYS = 37  # more keys than partitions, not a multiple of them


@pytest.mark.kafka
def test_10k_messages_come_back_complete_and_ordered_per_key(
    kafka_bootstrap: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    topic = new_topic(partitions=4)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "log_level": 3})
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    sent: dict[str, list[int]] = defaultdict(list)
    for i in range(N_MESSAGES):
        key = f"RX6:incident-{i % N_KEYS:03d}"
        seq = len(sent[key])
        sent[key].append(i)
        value = json.dumps({"key": key, "seq": seq, "i": i, "pad": "x" * (i % 50)})
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value.encode(), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry this message
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still queued after 60 s"
    assert failures == []

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": new_group(),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 3})
    consumer.subscribe([topic])
    received: dict[str, list[dict[str, object]]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    total = 0
    deadline = time.monotonic() + 60
    try:
        while total < N_MESSAGES and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                err = msg.error()
                assert err is None, str(err)
                key = (msg.key() or b"").decode()
                payload = json.loads(msg.value() or b"{}")
                assert payload["key"] == key
                received[key].append(payload)
                partition_of[key].add(msg.partition() or 0)
                total += 1
    finally:
        consumer.close()

    assert total == N_MESSAGES
    assert set(received) == set(sent)
    for key, payloads in received.items():
        assert [p["seq"] for p in payloads] == list(range(len(sent[key]))), f"{key} out of order"
        assert [p["i"] for p in payloads] == sent[key]
        assert all(p["pad"] == "x" * (int(str(p["i"])) % 50) for p in payloads)
        assert len(partition_of[key]) == 1, f"{key} spread over partitions {partition_of[key]}"
