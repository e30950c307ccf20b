"""Worker memory against incident states held: the batch step over a real rocksdict store, no Kafka.

    python bench/bench_state_rss.py [--quick] [--json PATH] [--states N ...]

What a worker holds per incident state is (a) the table row, in RocksDB (rocksdict, with the
worker's options: 2 x 16 MB write buffers, 64 MB block cache), bounded in memory whatever the row
count, and (b) the batch step's in-memory side state, which grows with it: the expiry index (a dict
entry and a heap entry per state) and the watermarks. The live view holds today's incidents only.

Two ways of filling, in the same run:

* ``batch step``: incident_created events through ``BatchStep.process`` into the rocksdict store
  (the worker's real path without Kafka), up to ``--step-states`` (default 200k; 50k quick);
* ``direct``: the same rows (a real encoded record with its key varied) written to the store and
  noted in the expiry index without decoding events: fast enough for 10M, and checked against the
  batch step's bytes per state at the size both reach.

RSS is this process's resident set (``/proc/self/statm``), against the same process before any
state (the baseline). Faust's own per-key memory (its store's key-index LRU) is bounded and not
included; the Kafka clients add a constant (see bench_worker's RSS line for a whole worker).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from amb.codec import default_codec  # noqa: E402
from domain.events import TRUSTS, Category, Event, EventType, Location, Source  # noqa: E402
from domain.incident import DAY_MS, expires_at, update  # noqa: E402
from streams.live import LiveView  # noqa: E402
from streams.pipeline import BatchStep, InMessage  # noqa: E402
from streams.state import encode_record, new_record  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import DictAttributor, DictHierarchy  # noqa: E402

PARTITIONS = 8
MB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RocksStore:
    """streams.pipeline.StateStore over one rocksdict DB per partition, with the worker's options
    (streams.agents: the Faust table's rocksdict driver options)."""

    def __init__(self, path: Path) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict

        opts = Options()
        opts.create_if_missing(True)
        opts.set_write_buffer_size(16 << 20)
        opts.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(64 << 20))
        opts.set_block_based_table_factory(table)
        self.dbs = [Rdict(str(path / f"p{p}"), opts) for p in range(PARTITIONS)]

    def get(self, key: bytes, topic: str, partition: int) -> bytes | None:
        value: bytes | None = self.dbs[partition].get(key)
        return value

    def put(self, key: bytes, value: bytes, topic: str, partition: int) -> None:
        self.dbs[partition][key] = value

    def delete(self, key: bytes, topic: str, partition: int) -> None:
        self.dbs[partition].delete(key)

    def close(self) -> None:
        for db in self.dbs:
            db.close()


def created(i: int, t0: int) -> Event:
    trust = TRUSTS[i % len(TRUSTS)]
    return Event(str(uuid.UUID(int=i, version=4)), EventType.INCIDENT_CREATED, trust, f"S{i:09d}", t0 + i,
                 clock_start=t0 + i, category=Category.C2, source=Source.CALL_999,
                 location=Location(postcode=f"P{i % 5000}"))


def fill_step(step: BatchStep, n: int, t0: int, batch: int = 5000) -> None:
    codec, now = default_codec(), int(time.time() * 1000)
    for a in tqdm(range(0, n, batch), desc="batch step", unit_scale=batch, file=sys.stderr):
        msgs = []
        for i in range(a, min(n, a + batch)):
            e = created(i, t0)
            msgs.append(InMessage(f"x.events.{e.trust}", i % PARTITIONS, i, e.key.encode(), codec.encode(e, now)))
        step.process(msgs, now)


def fill_direct(step: BatchStep, start: int, n: int, t0: int) -> None:
    """Rows as the batch step writes them (one real record, key and times varied), no decoding."""
    first = created(0, t0)
    template = new_record(first.trust, "incident", first.incident_id, 0)
    update(template.state, first)  # type: ignore[arg-type]
    put, note = step.store.put, step.expiry.note
    for i in tqdm(range(start, n), desc="direct", unit_scale=True, file=sys.stderr, mininterval=2):
        trust = TRUSTS[i % len(TRUSTS)]
        key = f"{trust}:incident:S{i:09d}".encode()
        template.state.last_event_time = t0 + i
        template.partition = p = i % PARTITIONS
        topic = f"x.events.{trust}"
        exp = expires_at(template.state, step.horizon_ms, step.stale_ms)
        put(key, encode_record(template, exp), topic, p)
        note(key, exp, topic, p)
        step.watermarks.advance(topic, p, t0 + i)


def measure(sizes: list[int], step_states: int, workdir: Path) -> list[dict[str, Any]]:
    t0 = int(time.time() * 1000) - 3 * DAY_MS
    rows: list[dict[str, Any]] = []
    gc.collect()
    base = rss_bytes()
    store = RocksStore(workdir / "step")
    step = BatchStep(DictAttributor(), DictHierarchy(), store, live=LiveView())
    fill_step(step, step_states, t0)
    gc.collect()
    step_rss = rss_bytes() - base
    rows.append({"name": f"RSS over baseline, {step_states:,} states via the batch step", "value": step_rss / MB,
                 "unit": "MB", "baseline": "process before any state", "baseline_value": base / MB,
                 "bytes_per_state": step_rss / step_states, "states": step_states})
    store.close()
    del step, store
    gc.collect()
    base = rss_bytes()
    store = RocksStore(workdir / "direct")
    step = BatchStep(DictAttributor(), DictHierarchy(), store, live=LiveView())
    have = 0
    for n in sorted(sizes):
        fill_direct(step, have, n, t0)
        have = n
        gc.collect()
        grown = rss_bytes() - base
        rows.append({"name": f"RSS over baseline, {n:,} states (direct fill)", "value": grown / MB, "unit": "MB",
                     "baseline": "process before any state", "baseline_value": base / MB,
                     "bytes_per_state": grown / n, "states": n, "held": step.states_held})
        print(f"# {n:,} states: +{grown / MB:,.0f} MB ({grown / n:,.0f} B/state)", file=sys.stderr, flush=True)
    store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k and 1M states direct, 50k through the batch step")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    ap.add_argument("--states", type=int, nargs="+", help="direct-fill sizes (default 1M and 10M)")
    ap.add_argument("--step-states", type=int, help="states through the batch step (default 200k)")
    args = ap.parse_args(argv)
    sizes = args.states or ([100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])
    step_states = args.step_states or (50_000 if args.quick else 200_000)
    with tempfile.TemporaryDirectory(prefix="amb-bench-rss-") as tmp:
        rows = measure(sizes, step_states, Path(tmp))
    print(f"bench_state_rss: batch step + rocksdict store ({PARTITIONS} partitions), incident states held")
    print(f"{'measure':<58} {'value':>9} {'unit':<4} {'B/state':>8}  {'baseline':<26} {'value':>8}")
    for r in rows:
        print(f"{r['name']:<58} {r['value']:>9,.0f} {r['unit']:<4} {r['bytes_per_state']:>8,.0f}  "
              f"{r['baseline']:<26} {r['baseline_value']:>8,.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
