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
  encode, produce.

Rounds alternate baseline and publisher so both see the same machine; the best round of each is
reported (on a shared 2-core box the median is mostly other people's noise).
"""

from __future__ import annotations

import argparse
import json
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
from amb.publisher import PRODUCER_DEFAULTS, TrustPublisher  # noqa: E402
from amb.stack import Stack, private_settings  # noqa: E402
from amb.topics import TopicSpec, ensure_topics  # noqa: E402
from domain.validation import to_record  # noqa: E402


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


def run(settings: config.Settings, n: int, rounds: int) -> list[tuple[str, float, str, float]]:
    bootstrap = settings.bootstrap
    events = sample_events(n, "RX7")
    codec = Codec("single")
    values = codec.encode_batch(events, NOW_MS)
    keys = [e.key for e in events]
    records = [to_record(e) for e in events]
    best: dict[str, float] = {"raw": 0.0, "raw_cb": 0.0, "events": 0.0, "records": 0.0}
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
        log(f"round {r + 1}/{rounds}: best so far raw {best['raw']:,.0f}/s, raw+callbacks "
            f"{best['raw_cb']:,.0f}/s, events {best['events']:,.0f}/s, records {best['records']:,.0f}/s")
    base = "raw produce of the same bytes"
    base_cb = "raw produce, per-message delivery callback"
    return [
        ("TrustPublisher.publish_events (validate+encode+produce)", best["events"], base, best["raw"]),
        ("TrustPublisher.publish_records (parse+validate+encode+produce)", best["records"], base, best["raw"]),
        ("TrustPublisher.publish_events (validate+encode+produce)", best["events"], base_cb, best["raw_cb"]),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting a private one")
    args = ap.parse_args(argv)
    n, rounds = (50_000, 3) if args.quick else (300_000, 5)

    if args.bootstrap:
        rows = run(config.load({}, bootstrap_servers=args.bootstrap), n, rounds)
    else:
        with tempfile.TemporaryDirectory(prefix="amb-bench-publish-") as tmp:
            stack = Stack(private_settings(tmp), prometheus=False)
            log("starting a private Kafka broker")
            stack.up(timeout=120)
            try:
                rows = run(stack.settings, n, rounds)
            finally:
                stack.down(timeout=30)

    print(f"bench_publish: {n:,} events per round, best of {rounds} rounds, delivered and acknowledged (acks=all)")
    print(f"{'measure':<64} {'events/s':>10}   {'baseline':<44} {'events/s':>10} {'ratio':>6}")
    for name, value, base_name, base in rows:
        print(f"{name:<64} {value:>10,.0f}   {base_name:<44} {base:>10,.0f} {value / base:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": name, "value": round(value), "unit": "events/s", "baseline": base_name,
             "baseline_value": round(base)} for name, value, base_name, base in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
