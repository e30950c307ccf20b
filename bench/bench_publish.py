"""Publisher speed: TrustPublisher against raw confluent-kafka produce of the same bytes.

    python bench/bench_publish.py [--quick] [--json PATH] [--bootstrap HOST:PORT]

Starts its own Kafka (Kafka only, free ports, temporary data dir; stopped at the end) unless
``--bootstrap`` names a running broker. Each round produces the same events to a fresh topic and
counts them delivered (``flush()`` returned, no delivery failure):

* baseline: a plain ``Producer.produce`` loop over the already-encoded values and keys, with the
  publisher's own producer settings (idempotent, acks=all, same batching), delivery reports only
  for failures, as the publisher does; a second baseline is the textbook loop with a per-message
  ``on_delivery`` callback that sees every delivery;
* ``publish_events``: TrustPublisher's hot path from domain Events: validate, encode, produce;
* ``publish_records``: from interchange dicts (as read from JSON Lines/CSV): parse, validate,
  encode, produce (the row path);
* ``publish_csv`` (columnar): the same records as the bytes of a CSV export, split, validated and
  encoded in bulk (amb_native), produced: what ``amb publish`` does with a CSV file. Its messages are checked to be byte-identical to the baseline's before timing.

Rounds alternate baseline and publisher so both see the same machine; the best round of each is
reported (on a shared 2-core box the median is mostly other people's noise).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_codec import NOW_MS, sample_events  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from amb import config  # noqa: E402
from amb.codec import Codec  # noqa: E402
from amb.columnar import BLOCK_ROWS, load_native, read_csv  # noqa: E402
from amb.publisher import PRODUCER_DEFAULTS, TrustPublisher  # noqa: E402
from amb.stack import Stack, private_settings  # noqa: E402
from amb.topics import TopicSpec, ensure_topics  # noqa: E402
from domain.validation import INTERCHANGE_FIELDS, to_record  # noqa: E402


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def new_topic(bootstrap: str) -> str:
    name = f"bench-publish-{uuid.uuid4().hex[:12]}"
    ensure_topics(bootstrap, [TopicSpec(name, 4, "bench")])
    return name


def warm_up(producer: Producer, topic: str) -> None:
    """Connect and get the idempotent producer id before the clock starts (on a fresh broker that
    waits for the transaction coordinator), so neither side pays for set-up in its figure."""
    producer.produce(topic, b"warm-up", b"warm-up")
    if producer.flush(60):
        raise SystemExit(f"cannot produce to {topic}: is the broker up?")


def raw_round(bootstrap: str, topic: str, values: list[bytes], keys: list[str], every_report: bool = False) -> float:
    """Delivered events/s of a plain produce loop over pre-encoded bytes.

    Default: the cheapest correct loop (the publisher's settings, the delivery callback set once in
    the config and reporting only failures, positional arguments). ``every_report``: the textbook
    loop, a per-message ``on_delivery`` callback that sees every delivery.
    """
    failed = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    conf = {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, "log_level": 3, "on_delivery": on_delivery}
    if every_report:
        conf["delivery.report.only.error"] = False
    producer = Producer(conf)
    warm_up(producer, topic)
    started = time.perf_counter()
    produce = producer.produce
    for value, key in zip(values, keys, strict=True):
        try:
            if every_report:
                produce(topic, value, key, on_delivery=on_delivery)
            else:
                produce(topic, value, key)
        except BufferError:
            producer.poll(0.05)
            produce(topic, value, key)
    producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if failed or remaining:
        raise SystemExit(f"baseline lost events: {failed} failed, {remaining} unacknowledged")
    return len(values) / elapsed


def publisher_round(settings: config.Settings, topic: str, send: Callable[[TrustPublisher], int], n: int) -> float:
    pub = TrustPublisher(settings, "RX7", topic=topic, check_broker=False, clock=lambda: NOW_MS / 1000,
                         producer_config={"log_level": 3})
    warm_up(pub._producer, topic)
    started = time.perf_counter()
    sent = send(pub)
    pub.close(120)
    elapsed = time.perf_counter() - started
    if sent != n or pub.stats.delivered != n or pub.stats.rejected:
        raise SystemExit(f"publisher lost events: sent {sent}, delivered {pub.stats.delivered}, "
                         f"rejected {pub.stats.rejected} of {n}")
    return n / elapsed


def csv_export(records: list[dict[str, Any]]) -> bytes:
    """The records as a trust's CSV export file (header line, one event per line)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, INTERCHANGE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode()


def publish_csv(pub: TrustPublisher, data: bytes) -> int:
    """What `amb publish` does with a plain CSV file: split and encode it natively, block by block."""
    export = read_csv(data)
    if isinstance(export, tuple):
        raise SystemExit(f"the bench CSV is not read column-wise: {export[1]}")
    return pub.publish_csv(export)


def check_same_bytes(data: bytes, values: list[bytes], keys: list[str], header: bytes) -> None:
    """The columnar path must produce exactly the baseline's messages and keys."""
    native = load_native()
    if native is None:
        raise SystemExit("amb_native is not installed: pip install ./native")
    export = read_csv(data)
    assert not isinstance(export, tuple)
    got_v, got_k, _slow, end = native.encode_csv(export.data, export.start, len(values), export.slots(), "RX7",
                                                 NOW_MS, header)
    if got_v != values or got_k != [k.encode() for k in keys] or end != len(export.data):
        raise SystemExit("the columnar path's messages differ from the baseline's")


def cpu_profile(settings: config.Settings, data: bytes, values: list[bytes], keys: list[str],
                rounds: int) -> list[tuple[str, float]]:
    """Process CPU time per event (all threads, librdkafka's included) of each step, best of ``rounds``:
    where the columnar path's time goes, next to the produce loop the baseline is made of."""
    native = load_native()
    header = Codec("single").header
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds * 1e6 / len(values))

    for _ in range(rounds):
        t0 = time.process_time()
        export = read_csv(data)
        t1 = time.process_time()
        assert not isinstance(export, tuple)
        pos, slots = export.start, export.slots()
        while pos < len(data):
            _v, _k, _s, pos = native.encode_csv(data, pos, BLOCK_ROWS, slots, "RX7", NOW_MS, header)  # type: ignore[union-attr]
        t2 = time.process_time()
        keep("check the CSV is plain (amb_native, one pass)", t1 - t0)
        keep("split + validate + encode + make value/key bytes (amb_native)", t2 - t1)
        topic = new_topic(settings.bootstrap)
        producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": settings.bootstrap, "log_level": 3})
        warm_up(producer, topic)
        t3 = time.process_time()
        produce = producer.produce
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                producer.poll(0.05)
                produce(topic, value, key)
        t4 = time.process_time()
        producer.flush(120)
        t5 = time.process_time()
        keep("produce() loop, pre-encoded (the baseline's own work)", t4 - t3)
        keep("flush until acknowledged (librdkafka threads)", t5 - t4)
    return list(best.items())


Rows = list[tuple[str, float, str, float]]


def run(settings: config.Settings, n: int, rounds: int) -> tuple[Rows, list[tuple[str, float]]]:
    bootstrap = settings.bootstrap
    events = sample_events(n, "RX7")
    codec = Codec("single")
    values = codec.encode_batch(events, NOW_MS)
    keys = [e.key for e in events]
    records = [to_record(e) for e in events]
    data = csv_export(records)
    check_same_bytes(data, values, keys, codec.header)
    log(f"columnar CSV path checked: {n:,} messages byte-identical to the baseline's")
    best: dict[str, float] = {"raw": 0.0, "raw_cb": 0.0, "events": 0.0, "records": 0.0, "csv": 0.0}
    # an unmeasured round first: JIT-free Python still warms caches, the broker warms its log
    raw_round(bootstrap, new_topic(bootstrap), values[:5000], keys[:5000])
    publisher_round(settings, new_topic(bootstrap), lambda p: p.publish_events(events[:5000]), 5000)
    for r in range(rounds):
        best["raw"] = max(best["raw"], raw_round(bootstrap, new_topic(bootstrap), values, keys))
        best["raw_cb"] = max(best["raw_cb"], raw_round(bootstrap, new_topic(bootstrap), values, keys, True))
        best["events"] = max(best["events"], publisher_round(
            settings, new_topic(bootstrap), lambda p: p.publish_events(events), n))
        best["records"] = max(best["records"], publisher_round(
            settings, new_topic(bootstrap), lambda p: p.publish_records(enumerate(records, 1)), n))
        best["csv"] = max(best["csv"], publisher_round(
            settings, new_topic(bootstrap), lambda p: publish_csv(p, data), n))
        log(f"round {r + 1}/{rounds}: best so far raw {best['raw']:,.0f}/s, raw+callbacks "
            f"{best['raw_cb']:,.0f}/s, events {best['events']:,.0f}/s, records {best['records']:,.0f}/s, "
            f"columnar csv {best['csv']:,.0f}/s")
    cpu = cpu_profile(settings, data, values, keys, rounds)
    base = "raw produce of the same bytes"
    base_cb = "raw produce, per-message delivery callback"
    return [
        ("columnar CSV bytes: read+validate+encode+produce", best["csv"], base, best["raw"]),
        ("TrustPublisher.publish_events (validate+encode+produce)", best["events"], base, best["raw"]),
        ("TrustPublisher.publish_records (parse+validate+encode+produce)", best["records"], base, best["raw"]),
        ("TrustPublisher.publish_events (validate+encode+produce)", best["events"], base_cb, best["raw_cb"]),
    ], cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting a private one")
    args = ap.parse_args(argv)
    n, rounds = (50_000, 3) if args.quick else (300_000, 5)

    if args.bootstrap:
        rows, cpu = run(config.load({}, bootstrap_servers=args.bootstrap), n, rounds)
    else:
        with tempfile.TemporaryDirectory(prefix="amb-bench-publish-") as tmp:
            stack = Stack(private_settings(tmp), prometheus=False)
            log("starting a private Kafka broker")
            stack.up(timeout=120)
            try:
                rows, cpu = run(stack.settings, n, rounds)
            finally:
                stack.down(timeout=30)

    print(f"bench_publish: {n:,} events per round, best of {rounds} rounds, delivered and acknowledged (acks=all)")
    print(f"{'measure':<64} {'events/s':>10}   {'baseline':<44} {'events/s':>10} {'ratio':>6}")
    for name, value, base_name, base in rows:
        print(f"{name:<64} {value:>10,.0f}   {base_name:<44} {base:>10,.0f} {value / base:>6.2f}")
    print(f"CPU per event (process time, all threads; best of {rounds}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    for name, us in cpu:
        print(f"  {name:<62} {us:>7.3f} us")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": name, "value": round(value), "unit": "events/s", "baseline": base_name,
             "baseline_value": round(base)} for name, value, base_name, base in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
