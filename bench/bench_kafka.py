"""Kafka benchmark: warm broker start, raw confluent-kafka produce and consume on the local broker.

Starts its own stack (Kafka only) on free ports in a temporary data dir, stops it at the end.
Every figure is printed next to a baseline measured in the same run:

* broker start (jars cached, data dir formatted; from JVM launch to answering metadata requests)
  with the AppCDS class-data archive `amb stack install` builds  vs  the same start without it;
* produce with the project's settings (idempotent, acks=all)  vs  acks=1 without idempotence
  (the cheapest durable-ish setting); a pure in-memory Python loop over the same messages is
  printed as the ceiling the client loop itself imposes;
* consume with the batch API (``consume(num_messages=500, timeout=0.1)``)  vs  one ``poll()`` per
  message.

    python bench/bench_kafka.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer  # noqa: E402

from amb.stack import Stack, kafka, maven, private_settings, process  # noqa: E402
from amb.topics import TopicSpec, ensure_topics  # noqa: E402

N_KEYS = 1000


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def payloads(size: int) -> tuple[list[bytes], list[bytes]]:
    """1000 keys and 1000 distinct values of ``size`` bytes, reused round-robin (no per-message alloc)."""
    keys = [f"RX6:incident-{i:06d}".encode() for i in range(N_KEYS)]
    values = [os.urandom(size // 2).hex().encode()[:size].ljust(size, b"0") for _ in range(N_KEYS)]
    return keys, values


def time_start(stack: Stack, cds: bool) -> float:
    """Seconds from JVM launch to the broker answering, on an already formatted data dir."""
    s = stack.settings
    dist = maven.dist_for(s)
    paths = kafka.write_config(s)
    started = time.monotonic()
    pid = kafka.start(dist, s, paths, cds="use" if cds else None, die_with_parent=True)
    try:
        kafka.wait_ready(s, pid, paths, timeout=120)
        return time.monotonic() - started
    finally:
        process.terminate(pid, timeout=30)
        paths.pid.unlink(missing_ok=True)


def produce(bootstrap: str, topic: str, n: int, keys: list[bytes], values: list[bytes],
            conf: dict[str, Any]) -> float:
    """Seconds to produce ``n`` messages and have every one acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 3,
                         "queue.buffering.max.messages": 1_000_000, **conf})
    errors = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    started = time.perf_counter()
    for i in range(n):
        k = i % N_KEYS
        while True:
            try:
                producer.produce(topic, values[k], keys[k], on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left or errors:
        raise SystemExit(f"produce to {topic}: {left} undelivered, {errors} errors")
    return elapsed


def memory_loop(n: int, keys: list[bytes], values: list[bytes]) -> float:
    """The same loop appending (key, value) to a list: what Python alone costs per message."""
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    started = time.perf_counter()
    for i in range(n):
        k = i % N_KEYS
        append((keys[k], values[k]))
    return time.perf_counter() - started


def consume(bootstrap: str, topic: str, n: int, batch: bool) -> float:
    """Seconds to read ``n`` messages from the start of ``topic`` with a fresh group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 3,
                         "fetch.max.bytes": 64 * 1024 * 1024})
    consumer.subscribe([topic])
    # Wait for the assignment and first message outside the timed part.
    first = None
    deadline = time.monotonic() + 60
    while first is None and time.monotonic() < deadline:
        first = consumer.poll(0.5)
    if first is None or first.error():
        raise SystemExit(f"consume {topic}: no first message ({first.error() if first else 'timeout'})")
    got = 1
    started = time.perf_counter()
    if batch:
        while got < n:
            # Small batches with a short timeout: consume(10_000, 5.0) measured 4x *slower* than
            # poll() here, because each call waits for the whole batch to be fetched.
            msgs = consumer.consume(num_messages=500, timeout=0.1)
            got += len(msgs)
            if not msgs and time.perf_counter() - started > 120:
                break
    else:
        while got < n:
            msg = consumer.poll(0.1)
            if msg is not None:
                got += 1
            elif time.perf_counter() - started > 120:
                break
    elapsed = time.perf_counter() - started
    consumer.close()
    if got < n:
        raise SystemExit(f"consume {topic}: only {got} of {n} messages")
    return elapsed


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k messages and one start of each kind")
    parser.add_argument("--messages", type=int, default=0, help="messages per produce run (default 1M, quick 200k)")
    parser.add_argument("--size", type=int, default=200, help="value size in bytes")
    parser.add_argument("--json", type=Path, help="also write the figures as a JSON list to this path")
    args = parser.parse_args()
    n = args.messages or (200_000 if args.quick else 1_000_000)
    repeats = 1 if args.quick else 3
    mb = n * args.size / 1e6

    results: list[dict[str, Any]] = []
    notes: list[tuple[str, float, str]] = []

    def record(name: str, value: float, unit: str, baseline: str, baseline_value: float) -> None:
        results.append({"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
                        "baseline_value": round(baseline_value, 3)})

    with tempfile.TemporaryDirectory(prefix="amb-bench-kafka-") as tmp:
        settings = private_settings(tmp)
        stack = Stack(settings, prometheus=False, echo=log, die_with_parent=True)
        try:
            stack.install()  # jars and class-data archive: cached, not timed
            t0 = time.monotonic()
            report = stack.up(timeout=120)
            log(f"fresh data dir: stack up (format, start, {len(report.topics_created)} topics) took "
                f"{time.monotonic() - t0:.1f} s, {report.kafka_ready_s:.1f} s of it from launch to ready")
            stack.down()
            log(f"timing {repeats}x warm start with and without the class-data archive")
            with_cds = median_of(repeats, lambda: time_start(stack, cds=True))
            without_cds = median_of(repeats, lambda: time_start(stack, cds=False))
            record("broker warm start (jars cached, AppCDS)", with_cds, "s",
                   "same start without AppCDS", without_cds)

            stack.up(timeout=120)
            bootstrap = stack.kafka_address
            parts = settings.kafka_partitions
            t_idem, t_acks1 = f"bench-idem-{uuid.uuid4().hex[:8]}", f"bench-acks1-{uuid.uuid4().hex[:8]}"
            ensure_topics(bootstrap, [TopicSpec(t_idem, parts, "bench"), TopicSpec(t_acks1, parts, "bench")])
            keys, values = payloads(args.size)

            log(f"producing {n:,} x {args.size} B, {N_KEYS} keys, {parts} partitions")
            mem = memory_loop(n, keys, values)
            acks1 = produce(bootstrap, t_acks1, n, keys, values, {"acks": 1, "enable.idempotence": False})
            idem = produce(bootstrap, t_idem, n, keys, values, {"enable.idempotence": True})
            record("produce idempotent (acks=all)", n / idem, "msgs/s", "produce acks=1, not idempotent",
                   n / acks1)
            record("produce idempotent (acks=all) MB/s", mb / idem, "MB/s", "produce acks=1, not idempotent",
                   mb / acks1)
            notes.append(("in-memory loop, same msgs (loop ceiling)", n / mem, "msgs/s"))

            log(f"consuming {n:,} messages")
            c_batch = consume(bootstrap, t_idem, n, batch=True)
            c_poll = consume(bootstrap, t_acks1, n, batch=False)
            record("consume batch (consume(500, 0.1 s))", n / c_batch, "msgs/s", "consume one poll() per message",
                   n / c_poll)
            record("consume batch MB/s", mb / c_batch, "MB/s", "consume one poll() per message", mb / c_poll)
        finally:
            stack.down(timeout=30)

    print(f"Kafka {settings.kafka_version} local single-node broker, {n:,} messages x {args.size} B, "
          f"{os.cpu_count()} cores")
    print(f"{'figure':<42} {'value':>12} {'unit':<7} {'baseline':<34} {'baseline':>12} {'ratio':>6}")
    for r in results:
        ratio = r["value"] / r["baseline_value"] if r["baseline_value"] else float("nan")
        print(f"{r['name']:<42} {r['value']:>12,.2f} {r['unit']:<7} {r['baseline']:<34} "
              f"{r['baseline_value']:>12,.2f} {ratio:>6.2f}")
    for name, value, unit in notes:
        print(f"{name:<42} {value:>12,.0f} {unit:<7}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
