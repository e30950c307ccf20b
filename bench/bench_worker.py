"""Stream worker speed, end to end through a real broker: events topics -> `amb worker` -> facts.

    python bench/bench_worker.py [--quick] [--json PATH] [--bootstrap HOST:PORT]

Starts its own Kafka (free ports, temporary data dir; stopped at the end) unless ``--bootstrap``
names a running broker. A simulated feed of every trust (the default mess: duplicates, late,
shuffled, corrected events) is published once per contestant to its own topic prefix (so its own
consumer group); publishing is not timed. Then, in the same run:

* ``amb worker``: the real worker process (bulk batches through streams.bulk, rocksdict table),
  its rate from its first batch to its last one delivered (changelog, facts and dead letters
  broker-acked);
* baseline: ``amb worker --naive --store memory``, a per-event agent without batching (every
  event its own table write, fact send and attributor call, the Python step), on the first
  ``NAIVE_EVENTS`` events of the same feed (its rate per event does not depend on the backlog's
  length, and the whole feed took it 20 minutes at about 100 events/s);
* baseline: raw confluent-kafka consume of the same topics (the ceiling of reading them at all);
* the batch step alone, in process, on the same bytes (decode -> validate -> fold -> attribute
  -> facts, no Kafka), per second of CPU time, native (the worker's) against the Python definition;
* the worker's CPU: events per CPU-second of the worker process (user + system, from its rusage,
  less that of the same worker started on empty topics: start-up, the --timeout wait, shut-down),
  which other people's load on a shared machine changes much less than the wall-clock rate;
* the whole path at once: the worker running, then the feed published to it by one producer as
  fast as it goes (pre-encoded), events/s from the first publish to the last fact delivered;
* ``amb worker --batch-within 1.0``: batches given a second to fill instead of 0.2 s, same feed;
* Faust alone, an agent that does nothing (bench/faust_paths.py): its per-message stream
  (``take_events``, the worker's path before streams.bulk) against streams.bulk's batches of
  records, on the same topics: how much of the worker's rate each path leaves;
* worker RSS holding 100k incident states (1M without ``--quick``), against the same worker's RSS
  with no state (from its own process_resident_memory_bytes). bench/bench_state_rss.py measures
  1M and 10M states without Kafka.

The target is 50,000 events/s; the table says how far each contestant is from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from amb import config  # noqa: E402
from amb.codec import default_codec  # noqa: E402
from amb.config import Settings, to_environ  # noqa: E402
from amb.geo.index import GeoIndex  # noqa: E402
from amb.publisher import TrustPublisher  # noqa: E402
from amb.simulate_io import load_pool  # noqa: E402
from amb.stack import Stack, private_settings, process  # noqa: E402
from amb.topics import ensure_topics, events_topic, events_topics, project_topics  # noqa: E402
from domain.events import TRUSTS, Category, Event, EventType, Location, Source  # noqa: E402
from domain.simulate import Mess, SimConfig, clean_events  # noqa: E402
from streams.geo import IndexGeo  # noqa: E402
from streams.pipeline import BatchStep, DictStore, InMessage  # noqa: E402

TARGET = 50_000
AMB = ("from amb import cli; from amb.commands import worker; "
       "cli.cli.commands.get('worker') or cli.cli.add_command(worker.command); cli.main()")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def with_prefix(s: Settings, tag: str) -> Settings:
    p = dataclasses.replace(s, topic_prefix=f"bw{uuid.uuid4().hex[:8]}{tag}")
    ensure_topics(p.bootstrap, project_topics(p))
    return p




def feed(n: int) -> list[Event]:
    """At least ``n`` simulated events of every trust (valid ones; duplicates, late, corrections)."""
    scale = max(0.05, n / 130_000)  # a day of England at scale 1 is ~130k events with 111 calls
    cfg = SimConfig(start=date(2025, 10, 1), days=1, trusts=TRUSTS, seed=5, scale=scale,
                    mess=Mess.preset("default"))
    events = list(clean_events(cfg, load_pool(config.load())))
    return events[:n] if len(events) >= n else events


def publish(s: Settings, events: list[Event]) -> None:
    pubs: dict[str, TrustPublisher] = {}
    try:
        for e in events:
            pub = pubs.get(e.trust)
            if pub is None:
                pub = pubs[e.trust] = TrustPublisher(s, e.trust, producer_config={"log_level": 3})
            pub.publish(e)
    finally:
        for p in pubs.values():
            p.close(300)


def run_worker(s: Settings, workdir: Path, *args: str, sample_rss: bool = False) -> dict[str, Any]:
    """Run `amb worker --timeout 5` to the end of the backlog; its summary (and RSS samples)."""
    port = process.free_ports(1)[0]
    log_path = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
    argv = [sys.executable, "-c", AMB, "worker", "--worker-id", uuid.uuid4().hex[:6], "--workers-dir", str(workdir),
            "--metrics-port", str(port), "--web-port", "0", "--timeout", "5", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("w") as err:
        proc = subprocess.Popen(argv, env=to_environ(s), stdout=subprocess.DEVNULL, stderr=err)
        rss: list[tuple[float, float]] = []  # (states, bytes)
        while proc.poll() is None:
            if sample_rss:
                m = metrics(port)
                if "process_resident_memory_bytes" in m:
                    rss.append((m.get("amb_worker_state_incidents", 0.0), m["process_resident_memory_bytes"]))
            time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker is reaped: its CPU is in here
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}):\n{text[-3000:]}")
    lines = [ln for ln in text.splitlines() if " msg/s while busy" in ln]
    if not lines:  # nothing to read (the idle run that measures start-up and shut-down CPU)
        return {"summary": "no messages", "rate": 0.0, "rss": rss, "wait_us": 0.0, "process_us": 0.0,
                "send_us": 0.0, "cpu_s": cpu, "messages": 0.0}
    line = lines[-1]
    return {"summary": line.split(": ", 1)[1], "rate": _num(line, " msg/s while busy"), "rss": rss,
            "wait_us": _num(line, " us waiting"), "process_us": _num(line, " us processing"),
            "send_us": _num(line, " us sending"), "cpu_s": cpu, "messages": _num(line, " messages in ")}


def _num(line: str, suffix: str) -> float:
    head = line.split(suffix, 1)[0]
    return float(head.rsplit(" ", 1)[-1].replace(",", ""))


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#") and "{" not in ln:
            name, value = ln.rsplit(" ", 1)
            out[name] = float(value)
    return out


def events_done(port: int) -> float:
    """Events the worker has processed and delivered (amb_worker_events_total over its labels)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("amb_worker_events_total{"))


def publish_to_facts(s: Settings, events: list[Event], workdir: Path, broker_pid: int | None,
                     *args: str) -> dict[str, float]:
    """The whole path at once: a running worker, then the feed published as fast as one producer
    goes (pre-encoded, as bench_publish's native path writes it); events/s from the first publish
    to the last event's facts delivered (the worker's own counter, updated after delivery)."""
    port = process.free_ports(1)[0]
    argv = [sys.executable, "-c", AMB, "worker", "--worker-id", uuid.uuid4().hex[:6], "--workers-dir", str(workdir),
            "--metrics-port", str(port), "--web-port", "0", "--timeout", "5", *args]
    with (workdir / f"worker-{uuid.uuid4().hex[:6]}.log").open("w") as err:
        proc = subprocess.Popen(argv, env=to_environ(s), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while metrics(port).get("amb_worker_assigned_partitions", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # joined its group and has its partitions: nothing of start-up is timed
        rows = encoded(s, events)  # encoded before the clock starts: amb publish encodes in Rust, columnar
        broker0, worker0, own0 = proc_cpu(broker_pid), proc_cpu(proc.pid), time.process_time()
        t0 = time.perf_counter()
        publish_fast(s, rows)
        producer = time.process_time() - own0
        while events_done(port) < len(events) and proc.poll() is None:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        broker, worker = proc_cpu(broker_pid) - broker0, proc_cpu(proc.pid) - worker0
        proc.terminate()
        proc.wait(60)
    return {"rate": len(events) / elapsed, "elapsed_s": elapsed, "broker_cpu_s": broker, "worker_cpu_s": worker,
            "producer_cpu_s": producer}


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a running process has used: /proc/PID/stat."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_consume(s: Settings, n: int) -> float:
    """Events/s of a plain confluent-kafka consumer reading the topics from the start (partitions
    assigned directly, so no group join is timed; the clock starts before the first fetch)."""
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "log_level": 3})
    parts = []
    for topic in events_topics(s):
        meta = c.list_topics(topic, timeout=10).topics[topic]
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    got = 0
    t0 = time.perf_counter()
    c.assign(parts)
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(10_000, 1.0) if m.error() is None)
    elapsed = time.perf_counter() - t0
    c.close()
    if got < n:
        raise SystemExit(f"raw consumer read {got} of {n}")
    return n / elapsed


def faust_path(s: Settings, n: int, mode: str) -> float:
    """Messages/s Faust hands a do-nothing agent by ``mode`` (bench/faust_paths.py, a subprocess)."""
    script = Path(__file__).with_name("faust_paths.py")
    out = subprocess.run([sys.executable, str(script), "--bootstrap", s.bootstrap, "--prefix", s.topic_prefix,
                          "--n", str(n), "--mode", mode], capture_output=True, text=True, timeout=600)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(f"{mode} ")), None)
    if line is None:
        raise SystemExit(f"faust_paths {mode} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return float(line.split()[1])


def batch_step_alone(events: list[Event], geo: IndexGeo, batch: int = 10_000, native: bool = True) -> float:
    codec, now = default_codec(), int(time.time() * 1000)
    msgs = [InMessage(f"x.events.{e.trust}", i % 4, i, e.key.encode(), codec.encode(e, now))
            for i, e in enumerate(events)]
    best = 0.0
    for _ in range(2):  # per second of this process's CPU: other people's load does not count
        step = BatchStep(geo, geo, DictStore(), native=native)
        t0 = time.process_time()
        for i in range(0, len(msgs), batch):
            step.process(msgs[i:i + batch], now)
        best = max(best, len(msgs) / (time.process_time() - t0))
    return best


def incidents_only(n: int) -> list[Event]:
    """``n`` incident_created events (one per incident) of every trust: state size, not realism."""
    pool = load_pool(config.load())
    t0 = int(time.time() * 1000) - 3 * 86_400_000
    out = []
    for i in range(n):
        trust = TRUSTS[i % len(TRUSTS)]
        out.append(Event(str(uuid.UUID(int=i, version=4)), EventType.INCIDENT_CREATED, trust, f"S{i:08d}",
                         t0 + i, clock_start=t0 + i, category=Category.C2, source=Source.CALL_999,
                         location=Location(postcode=str(pool.postcode[i % len(pool.postcode)]))))
    return out


def encoded(s: Settings, events: list[Event]) -> list[tuple[str, bytes, bytes]]:
    """(topic, value, key) of each event, Avro-encoded as the publisher sends it."""
    codec, now = default_codec(), int(time.time() * 1000)
    return [(events_topic(s, e.trust), codec.encode(e, now), e.key.encode()) for e in events]


NAIVE_EVENTS = 15_000


def publish_fast(s: Settings, rows: list[tuple[str, bytes, bytes]]) -> None:
    """Pre-validated, already encoded events (:func:`encoded`) straight to their topics, so only
    producing is timed (the RSS feed is too big to publish slowly)."""
    p = Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                  "queue.buffering.max.messages": 1_000_000, "log_level": 3})
    for topic, value, key in rows:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.1)
    if p.flush(300):
        raise SystemExit("could not publish the RSS feed")


def run(settings: Settings, n: int, rss_states: int, workdir: Path, broker_pid: int | None = None) -> list[dict[str, Any]]:
    geo = IndexGeo(GeoIndex(config.load().geo_index_dir))
    events = feed(n)
    n = len(events)
    log(f"feed: {n:,} events of {len(TRUSTS)} trusts")
    batched, naive = with_prefix(settings, "a"), with_prefix(settings, "b")
    publish(batched, events)
    publish(naive, events[:NAIVE_EVENTS])
    idle = run_worker(with_prefix(settings, "e"), workdir)
    fixed = float(idle["cpu_s"])
    log(f"idle worker (empty topics): {fixed:.1f} CPU-s for start-up, --timeout wait and shut-down")

    def per_cpu(r: dict[str, Any]) -> float:
        return float(r["messages"]) / max(1e-9, float(r["cpu_s"]) - fixed)

    log("published; running the batched worker")
    w = run_worker(batched, workdir)
    log(f"batched: {w['summary']}")
    big_batches = with_prefix(settings, "d")
    publish(big_batches, events)
    wb = run_worker(big_batches, workdir, "--batch-within", "1.0")
    log(f"batched, 1 s to fill: {wb['summary']}")
    paths = {mode: faust_path(batched, n, mode) for mode in ("stream", "bulk")}
    log(f"Faust, agent doing nothing: per-message stream {paths['stream']:,.0f}/s, bulk {paths['bulk']:,.0f}/s")
    path = publish_to_facts(with_prefix(settings, "w"), events, workdir, broker_pid)
    whole = path["rate"]
    log(f"publish -> facts with the worker running: {whole:,.0f}/s in {path['elapsed_s']:.1f} s; CPU-s: "
        f"broker {path['broker_cpu_s']:.1f}, worker {path['worker_cpu_s']:.1f}, producer {path['producer_cpu_s']:.1f}")
    path_1s = publish_to_facts(with_prefix(settings, "x"), events, workdir, broker_pid, "--batch-within", "1.0")
    log(f"publish -> facts, worker --batch-within 1.0: {path_1s['rate']:,.0f}/s; worker CPU-s {path_1s['worker_cpu_s']:.1f}")
    log("naive worker")
    nv = run_worker(naive, workdir, "--naive", "--store", "memory")
    log(f"naive: {nv['summary']}")
    raw = raw_consume(batched, n)
    log(f"raw consume: {raw:,.0f}/s")
    alone = batch_step_alone(events, geo)
    alone_py = batch_step_alone(events, geo, native=False)
    log(f"batch step alone: native {alone:,.0f}/s, Python {alone_py:,.0f}/s")
    big = with_prefix(settings, "c")
    publish_fast(big, encoded(big, incidents_only(rss_states)))
    log(f"published {rss_states:,} incidents for the RSS run")
    r = run_worker(big, workdir, sample_rss=True)
    held = [b for states, b in r["rss"] if states >= rss_states]
    empty = [b for states, b in r["rss"] if states == 0]
    rss_full = max(held) if held else max((b for _, b in r["rss"]), default=0.0)
    rss_empty = min(empty) if empty else min((b for _, b in r["rss"]), default=0.0)
    log(f"rss run: {r['summary']}")
    mb = 1024 * 1024
    return [
        {"name": "amb worker (bulk batches, rocksdict table), events/s", "value": w["rate"],
         "unit": "events/s", "baseline": "raw confluent-kafka consume of the same topics", "baseline_value": raw},
        {"name": "amb worker (bulk batches, rocksdict table), events/s", "value": w["rate"],
         "unit": "events/s", "baseline": "naive per-event agent, memory table", "baseline_value": nv["rate"]},
        {"name": "publish -> facts, worker running, events/s", "value": whole, "unit": "events/s",
         "baseline": "amb worker on the published backlog", "baseline_value": w["rate"]},
        {"name": "publish -> facts, worker --batch-within 1.0, events/s", "value": path_1s["rate"],
         "unit": "events/s", "baseline": "publish -> facts, worker (0.2 s to fill)", "baseline_value": whole},
        *[{"name": f"  publish -> facts: {who} CPU, % of the 2 cores' time", "unit": "%",
           "value": 100 * path[f"{who}_cpu_s"] / (path["elapsed_s"] * (os.cpu_count() or 1)),
           "baseline": f"{who} CPU-s per 100k events", "baseline_value": 1e5 * path[f"{who}_cpu_s"] / n}
          for who in ("broker", "worker", "producer")],
        {"name": "amb worker --batch-within 1.0, events/s", "value": wb["rate"], "unit": "events/s",
         "baseline": "amb worker (0.2 s to fill a batch)", "baseline_value": w["rate"]},
        {"name": "amb worker, events per worker CPU-second", "value": per_cpu(w),
         "unit": "events/s", "baseline": "naive per-event agent, memory table", "baseline_value": per_cpu(nv)},
        {"name": "Faust bulk path, agent doing nothing, msgs/s", "value": paths["bulk"], "unit": "msgs/s",
         "baseline": "Faust per-message stream (take_events), same", "baseline_value": paths["stream"]},
        {"name": "batch step alone, per CPU second (decode..facts, no Kafka)", "value": alone, "unit": "events/s",
         "baseline": "the same step in Python (native=False)", "baseline_value": alone_py},
        {"name": f"worker RSS holding {rss_states:,} incident states", "value": rss_full / mb, "unit": "MB",
         "baseline": "the same worker with no state", "baseline_value": rss_empty / mb},
        {"name": "worker: us/event waiting for the next batch", "value": w["wait_us"], "unit": "us",
         "baseline": "naive agent", "baseline_value": nv["wait_us"]},
        {"name": "worker: us/event in the batch step", "value": w["process_us"], "unit": "us",
         "baseline": "naive agent", "baseline_value": nv["process_us"]},
        {"name": "worker: us/event producing and awaiting delivery", "value": w["send_us"], "unit": "us",
         "baseline": "naive agent", "baseline_value": nv["send_us"]},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller feed and 100k (not 1M) states")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting a private one")
    ap.add_argument("--rss-states", type=int, help="incident states for the RSS run (default 100k quick, 1M full)")
    args = ap.parse_args(argv)
    n, rss_states = (30_000, 100_000) if args.quick else (130_000, 1_000_000)
    rss_states = args.rss_states or rss_states
    with tempfile.TemporaryDirectory(prefix="amb-bench-worker-") as tmp:
        work = Path(tmp)
        if args.bootstrap:
            rows = run(config.load({}, bootstrap_servers=args.bootstrap), n, rss_states, work)
        else:
            stack = Stack(private_settings(work / "stack", geo_dir=config.load().geo_index_dir), prometheus=False)
            log("starting a private Kafka broker")
            stack.up(timeout=120)
            try:
                rows = run(stack.settings, n, rss_states, work, stack.kafka_pid())
            finally:
                stack.down(timeout=30)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"bench_worker: one worker process, simulated feed of {len(TRUSTS)} trusts; target {TARGET:,} events/s; "
          f"load average {load} on {os.cpu_count()} CPUs")
    print(f"{'measure':<62} {'value':>10} {'unit':<9} {'baseline':<48} {'value':>10} {'ratio':>6}")
    for r in rows:
        share = r["unit"] == "%"  # a CPU share beside CPU-s per 100k events: no ratio
        ratio = r["value"] / r["baseline_value"] if r["baseline_value"] and not share else float("nan")
        f = ",.1f" if share else ",.0f"
        print(f"{r['name']:<62} {r['value']:>10{f}} {r['unit']:<9} {r['baseline']:<48} "
              f"{r['baseline_value']:>10{f}} {ratio:>6.2f}")
    worker = rows[0]["value"]
    print(f"target {TARGET:,} events/s per worker: {'met' if worker >= TARGET else 'NOT met'} "
          f"({worker / TARGET:.0%} of it)")
    if args.json:
        args.json.write_text(json.dumps([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                                         for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
