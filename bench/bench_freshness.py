"""Event -> queryable latency: from a trust publishing an event to its incident being in the store.

    python bench/bench_freshness.py [--quick] [--rate R] [--seconds S] [--json PATH] [--bootstrap HOST:PORT]

Starts its own Kafka (free ports, temporary data dir; stopped at the end) unless ``--bootstrap``
names a running broker. A steady feed of new incidents (one incident_created event each, every
trust, event time = now) is published at ``--rate`` events/s (default 100/s: a busy hour of
England is about 3 events/s, `make demo` publishes a day in seconds) while the real `amb worker`
runs (subprocess; up to 10,000 events per batch within the time limit compared) and the sink's own loop
(sinks.sink.FactSink: consume, load, commit, the code `amb sink` runs) runs in THIS process, so
after every sink batch the bench can look in the same chDB store for the incidents it published
(chDB allows one opener). Latency per event = first time its incident is found in
``incident_facts`` minus the time it was handed to the producer. Three configurations in the same
run: batches of at most 1.0 s in the worker and the sink, then 0.5 s, then 0.2 s (the defaults). The issue's target: queryable within 2 s at demo load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import AMB, log, with_prefix  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from amb import config  # noqa: E402
from amb.codec import default_codec  # noqa: E402
from amb.config import Settings, to_environ  # noqa: E402
from amb.simulate_io import load_pool  # noqa: E402
from amb.stack import Stack, private_settings  # noqa: E402
from amb.topics import dlq_topic, events_topic, incident_facts_topic  # noqa: E402
from domain.events import TRUSTS, Category, Event, EventType, Location, Source  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks.sink import FactSink, consumer_config  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402

TARGET_S = 2.0


def centile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)]


def measure(base: Settings, work: Path, rate: float, seconds: float, worker_within: float,
            sink_seconds: float) -> dict[str, Any]:
    s = with_prefix(base, f"f{int(worker_within * 10)}")
    pool = load_pool(config.load())
    codec = default_codec()
    store = ChdbStore(work / f"chdb-{uuid.uuid4().hex[:6]}")
    mig.migrate(store)
    consumer = Consumer(consumer_config(s.bootstrap, f"{s.topic_prefix}-sink"))
    consumer.subscribe([incident_facts_topic(s)])
    producer = Producer({"bootstrap.servers": s.bootstrap, "log_level": 3})
    sink = FactSink(store, consumer, producer, dlq_topic(s), batch_seconds=sink_seconds)  # default batch size
    log_path = work / f"worker-{uuid.uuid4().hex[:6]}.log"
    argv = [sys.executable, "-c", AMB, "worker", "--worker-id", uuid.uuid4().hex[:6], "--workers-dir", str(work),
            "--metrics-port", "0", "--web-port", "0", "--batch-within", str(worker_within)]
    sent: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()

    def publish() -> None:
        pub = Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 0, "log_level": 3})
        n = int(rate * seconds)
        start = time.time()
        for i in range(n):
            wait = start + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            now = int(time.time() * 1000)
            trust = TRUSTS[i % len(TRUSTS)]
            iid = f"F{uuid.uuid4().hex[:12]}"
            e = Event(str(uuid.uuid4()), EventType.INCIDENT_CREATED, trust, iid, now, produced_time=now,
                      clock_start=now, category=Category.C2, source=Source.CALL_999,
                      location=Location(postcode=str(pool.postcode[i % len(pool.postcode)])))
            topic = events_topic(s, trust)
            with lock:
                sent[iid] = time.time()
            pub.produce(topic, codec.encode(e, now, topic), e.key.encode())
            pub.poll(0)
        pub.flush(30)
        done.set()

    with log_path.open("w") as err:
        worker = subprocess.Popen(argv, env=to_environ(s), stdout=subprocess.DEVNULL, stderr=err)
        try:
            # warm-up: the worker joins its group and the sink's consumer gets its partitions
            deadline = time.time() + 60
            while time.time() < deadline and not consumer.assignment():
                sink.step()
            time.sleep(8)
            th = threading.Thread(target=publish, daemon=True)
            th.start()
            seen: dict[str, float] = {}
            batches = 0
            end = time.time() + seconds + 60
            while time.time() < end:
                got = sink.step()
                batches += bool(got)
                with lock:
                    pending = [k for k in sent if k not in seen]
                if pending:
                    found = store.query("SELECT incident_id FROM incident_facts WHERE incident_id IN {ids:Array(String)}",
                                        {"ids": pending}).rows
                    now = time.time()
                    for (iid,) in found:
                        seen[str(iid)] = now
                if done.is_set() and len(seen) == len(sent):
                    break
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            consumer.close()
            store.close()
    lat = [seen[k] - sent[k] for k in seen]
    if not lat:
        raise SystemExit(f"nothing became queryable; worker log {log_path}:\n{log_path.read_text()[-2000:]}")
    return {"worker_within": worker_within, "sink_seconds": sink_seconds, "sent": len(sent), "seen": len(seen),
            "batches": batches, "p50_s": statistics.median(lat), "p99_s": centile(lat, 0.99), "max_s": max(lat),
            "within_2s": sum(x <= TARGET_S for x in lat) / len(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 s per configuration instead of 60 s")
    ap.add_argument("--rate", type=float, default=100.0, help="events per second published (default 100)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds of publishing per configuration")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to PATH")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting a private one")
    ap.add_argument("--config", action="append", metavar="WORKER_S:SINK_S",
                    help="batch time limits to compare (repeatable; default 1:1, 0.5:0.5, 0.2:0.2)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    configs = [(float(c.split(":")[0]), float(c.split(":")[1])) for c in args.config] if args.config else [
        (1.0, 1.0), (0.5, 0.5), (0.2, 0.2)]
    with tempfile.TemporaryDirectory(prefix="amb-bench-fresh-") as tmp:
        work = Path(tmp)
        stack = None
        if args.bootstrap:
            base = config.load({}, bootstrap_servers=args.bootstrap)
        else:
            stack = Stack(private_settings(work / "stack", geo_dir=config.load().geo_index_dir), prometheus=False)
            log("starting a private Kafka broker")
            stack.up(timeout=120)
            base = stack.settings
        try:
            rows = []
            for within, sink_s in configs:
                log(f"worker batch within {within} s, sink batch {sink_s} s: publishing {args.rate:g}/s "
                    f"for {seconds:g} s")
                rows.append(measure(base, work, args.rate, seconds, within, sink_s))
        finally:
            if stack is not None:
                stack.down(timeout=30)
    print(f"bench_freshness: publish -> queryable in chDB, {args.rate:g} new incidents/s for {seconds:g} s, "
          f"real broker and worker; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'worker within':>13} {'sink batch':>10} {'events':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
          f"{'within 2 s':>10}")
    for r in rows:
        print(f"{r['worker_within']:>13g} {r['sink_seconds']:>10g} {r['seen']:>7} {r['p50_s']:>7.2f} "
              f"{r['p99_s']:>7.2f} {r['max_s']:>7.2f} {r['within_2s']:>10.1%}")
    if args.json:  # bench/run_all.py's form: each figure beside the first configuration's
        base = rows[0]
        figs = [{"name": f"publish -> queryable {k[:3]}, batches <= {r['worker_within']:g} s / {r['sink_seconds']:g} s",
                 "value": r[k], "unit": "s", "baseline": f"batches <= {base['worker_within']:g} s / "
                 f"{base['sink_seconds']:g} s", "baseline_value": base[k]} for r in rows for k in ("p50_s", "p99_s")]
        args.json.write_text(json.dumps(figs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
