"""Sink throughput: decoding fact messages and loading them (sinks/loader.py) into chDB.

Two figures, each next to a baseline measured in the same run on the same rows:

* decode: the sink's columnar decoder (``loader.decode_columns``: one pyarrow.json call per
  partition batch) vs one ``fact_codec.decode`` per message plus ``to_arrow`` (the fallback path);
* load: ``load_kind`` (crash-safe staging, version lookup, signed changes feeding the rollups'
  materialised views, facts) vs one bare Arrow insert of the same table into a table with the
  facts' columns and engine; with the share of the load time each step takes (statement timings).
  These facts are the worst case: every one a new incident at version 1, ids in random order;
* the worker's fact stream: a simulated feed (duplicates, late and corrected events) through the
  worker's batch step, its fact messages in the order the worker sends them (several versions
  per incident), loaded as ``amb sink`` does (``sinks.sink.load_batch``: decode, one staged load
  per batch, all kinds) in batches of ``amb.config.SINK_BATCH_MESSAGES`` (the sink's default), into
  a store already holding earlier days; facts/s received (and applied) vs the bare insert of the
  decoded rows; and the same stream, into a store filled alike, in batches of 20,000 (the old default).

    python bench/bench_sink.py [--quick] [--n N] [--json PATH]      # default 1M facts; --quick 200k
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_store import START_MS, YEAR_MS, facts, geography, log  # noqa: E402
from tqdm import tqdm  # noqa: E402

from domain.facts import IncidentFact  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks.loader import INCIDENTS, decode_columns, load_kind, to_arrow  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402
from streams import fact_codec  # noqa: E402

BATCH = 50_000
OLD_BATCH = 20_000  # the sink's default batch before amb.config.SINK_BATCH_MESSAGES
STEPS = {"SELECT `trust`": "version lookup", "INSERT INTO incident_changes_staged": "staging insert",
         "INSERT INTO incident_changes ": "changes + 3 rollup views", "INSERT INTO incident_facts": "facts insert",
         "TRUNCATE": "commit (truncate staging)", "SELECT load_id": "recovery check"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k facts instead of 1M")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n = args.n or (200_000 if args.quick else 1_000_000)
    rng = np.random.default_rng(3)
    geo = geography()
    results: list[dict[str, Any]] = []

    def result(name: str, value: float, unit: str, baseline: str, baseline_value: float) -> None:
        results.append({"name": name, "value": value, "unit": unit, "baseline": baseline,
                        "baseline_value": baseline_value})

    log("decoding: columnar vs one message at a time")
    sample = facts(min(n, 100_000), 0, geo, rng)
    values = [fact_codec.encode_incident(IncidentFact(**r), None) for r in sample.to_pylist()]
    t = time.perf_counter()
    cols = decode_columns(values)
    columnar = time.perf_counter() - t
    t = time.perf_counter()
    one = to_arrow(INCIDENTS, [fact_codec.decode(v).incident for v in values])
    each = time.perf_counter() - t
    assert cols is not None and cols[INCIDENTS.name].equals(one)
    result("decode fact messages -> Arrow (decode_columns)", len(values) / columnar, "rows/s",
           "fact_codec.decode per message + to_arrow", len(values) / each)

    tmp = Path(tempfile.mkdtemp(prefix="amb-bench-sink-"))
    store = ChdbStore(tmp / "chdb")
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    run = store._run

    def timed_run(sql: str, params: Any, fmt: str) -> Any:
        t = time.perf_counter()
        try:
            return run(sql, params, fmt)
        finally:
            step = next((v for k, v in STEPS.items() if sql.startswith(k)), "other")
            spent[step] += time.perf_counter() - t

    try:
        mig.migrate(store)
        store.command(mig.load()[0].up[1].replace("incident_facts", "bare_facts", 1))
        store._run = timed_run  # type: ignore[method-assign]
        bare_s = load_s = 0.0
        step = YEAR_MS * BATCH // n
        for first in tqdm(range(0, n, BATCH), unit="batch", file=sys.stderr):
            batch = facts(min(BATCH, n - first), first, geo, rng,
                          span=(START_MS + step * (first // BATCH), step)).combine_chunks()
            t = time.perf_counter()
            store.insert_arrow("bare_facts", batch, f"bare:{first}")
            bare_s += time.perf_counter() - t
            spent.pop("other", None)
            t = time.perf_counter()
            load_kind(store, INCIDENTS, batch, f"load:{first}")
            load_s += time.perf_counter() - t
        result(f"load_kind, batches of {BATCH:,}", n / load_s, "rows/s",
               "bare Arrow insert of the same tables", n / bare_s)
        python_s = load_s - sum(spent.values())
        for name, secs in [*sorted(spent.items(), key=lambda kv: -kv[1]), ("Python (plan, Arrow joins)", python_s)]:
            result(f"  share of load time: {name}", 100 * secs / load_s, "%", "", float("nan"))
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    stream_figures(results, args.quick)
    print(f"bench_sink: {n:,} incident facts, chDB {__import__('chdb').engine_version}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'figure':<56} {'value':>12} {'unit':<7} {'baseline':>12}  baseline")
    for r in results:
        print(f"{r['name']:<56} {r['value']:>12,.1f} {r['unit']:<7} {r['baseline_value']:>12,.1f}  {r['baseline']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def worker_stream(days: int) -> list[Any]:
    """The fact messages the worker sends for ``days`` simulated days of England, in order."""
    from datetime import date

    from amb import config
    from amb.codec import default_codec
    from amb.simulate_io import load_pool
    from domain.simulate import Mess, SimConfig, clean_events
    from sinks.sink import held_message
    from streams.geo import IndexGeo
    from streams.pipeline import BatchStep, DictStore, InMessage

    cfg = SimConfig(start=date(2025, 10, 1), days=days, seed=11, mess=Mess.preset("default"))
    events = list(clean_events(cfg, load_pool(config.load())))
    geo = IndexGeo.load(config.load().geo_index_dir)
    codec, now = default_codec(), int(time.time() * 1000)
    step = BatchStep(geo, geo, DictStore())
    out: list[Any] = []
    for i in range(0, len(events), 10_000):
        chunk = events[i:i + 10_000]
        msgs = [InMessage(f"amb.events.{e.trust}", hash(e.key) % 4, i + j, e.key.encode(), codec.encode(e, now))
                for j, e in enumerate(chunk)]
        out += [held_message("amb.incident-facts", f.partition, len(out) + k, b"", f.value)
                for k, f in enumerate(step.process(msgs, now).facts)]
    return out


def stream_figures(results: list[dict[str, Any]], quick: bool) -> None:
    from amb.config import SINK_BATCH_MESSAGES
    from sinks.sink import load_batch

    warm_days, days = (1, 2) if quick else (3, 7)
    log(f"the worker's fact stream: {warm_days} day(s) to fill the store, then {days} days timed")
    stream = worker_stream(warm_days + days)
    cut = len(stream) * warm_days // (warm_days + days)
    warm, timed = stream[:cut], stream[cut:]  # the first days fill the store, untimed
    rates: dict[int, tuple[float, float]] = {}
    for size in (SINK_BATCH_MESSAGES, OLD_BATCH):  # each into its own fresh store, filled alike
        tmp = Path(tempfile.mkdtemp(prefix="amb-bench-sink-stream-"))
        store = ChdbStore(tmp / "chdb")
        try:
            mig.migrate(store)
            store.command(mig.load()[0].up[1].replace("incident_facts", "bare_facts", 1))
            for i in range(0, len(warm), OLD_BATCH):
                load_batch(store, warm[i:i + OLD_BATCH], lambda m, r: None)
            applied = 0
            t = time.perf_counter()
            for i in tqdm(range(0, len(timed), size), unit="batch", file=sys.stderr, desc=f"batches of {size:,}"):
                out = load_batch(store, timed[i:i + size], lambda m, r: None)
                applied += sum(r.applied for r in out.results.values())
            load_s = time.perf_counter() - t
            rates[size] = (len(timed) / load_s, applied / load_s)
            if size == SINK_BATCH_MESSAGES:
                rows = decode_columns([m.value() for m in timed])
                assert rows is not None
                t = time.perf_counter()
                for i in range(0, rows["incident"].num_rows, size):
                    store.insert_arrow("bare_facts", rows["incident"].slice(i, size), f"bare-stream:{i}")
                bare = rows["incident"].num_rows / (time.perf_counter() - t)
        finally:
            store.close()
            shutil.rmtree(tmp, ignore_errors=True)
    big, old = rates[SINK_BATCH_MESSAGES], rates[OLD_BATCH]
    results.append({"name": f"worker's fact stream through load_batch, batches of {SINK_BATCH_MESSAGES:,}, msgs/s",
                    "value": big[0], "unit": "rows/s", "baseline": "bare Arrow insert of its decoded incident rows",
                    "baseline_value": bare})
    results.append({"name": f"  of which applied (new versions), of {len(timed):,} messages", "value": big[1],
                    "unit": "rows/s", "baseline": "", "baseline_value": float("nan")})
    results.append({"name": f"the same stream in batches of {OLD_BATCH:,} (the old default), msgs/s", "value": old[0],
                    "unit": "rows/s", "baseline": f"batches of {SINK_BATCH_MESSAGES:,}", "baseline_value": big[0]})


if __name__ == "__main__":
    main()
