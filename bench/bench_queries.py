"""Query latency at national scale: `amb query` tables at every level over 10M (or 50M) incidents.

The store is filled fast and columnar, not through the sink (bench_store.py measures loading):
synthetic incident facts (bench_store.facts: real LSOA hierarchy, a year of clock starts) go
straight into ``incident_facts`` and, as +1 rows, ``incident_changes`` with the materialised views
detached; then each rollup is filled by ONE ``INSERT ... SELECT`` of its own view's query over
the changes, so the tables hold exactly what the views would have written. Then, per level from
England to LSOA, the dispositions table by month over a year and by day over a month, and the
response and handover tables (exact 90th centiles) at ICB level: p50 and p99 of repeated runs,
each next to the same table summed from ``incident_changes`` (the path without rollups), p50,
measured in the same run.

    python bench/bench_queries.py [--quick] [--n N] [--repeat R] [--json PATH] [--store DIR]   # default 10M; --quick 1M

``--store DIR`` keeps the filled store in DIR and reuses it on the next run with the same N (a 50M
fill takes about half an hour), so query changes can be measured again on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from bench_store import START_MS, YEAR_MS, facts, geography, handovers, log, store_bytes  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sinks import migrate as mig  # noqa: E402
from sinks import queries  # noqa: E402
from sinks.loader import HANDOVERS, INCIDENTS, SIGN  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402

CHUNK = 500_000
ROLLUPS = [f"{f}_rollup_{g}" for f in ("incident", "handover") for g in ("hourly", "daily", "monthly")]


def fill(store: ChdbStore, n: int, rng: np.random.Generator) -> None:
    """``n`` incidents (and their handovers) into facts and changes, views detached, then rollups."""
    geo = geography()
    for mv in ROLLUPS:
        store.command(f"DETACH TABLE {mv}_mv")
    try:
        for first in tqdm(range(0, n, CHUNK), unit="chunk", file=sys.stderr, desc="facts"):
            inc = facts(min(CHUNK, n - first), first, geo, rng, span=(START_MS, YEAR_MS))
            hand = handovers(inc)
            for kind, t in ((INCIDENTS, inc), (HANDOVERS, hand)):
                t = t.combine_chunks()
                store.insert_arrow(kind.facts_table, t)
                store.insert_arrow(kind.changes_table, t.append_column(SIGN, pa.array(np.ones(t.num_rows, np.int8))))
    finally:
        for mv in ROLLUPS:
            store.command(f"ATTACH TABLE {mv}_mv")
    for mv in tqdm(ROLLUPS, unit="rollup", file=sys.stderr, desc="rollups"):
        select = str(store.query("SELECT as_select FROM system.tables WHERE database = currentDatabase() "
                                 "AND name = {n:String}", {"n": f"{mv}_mv"}).scalar())
        store.command(f"INSERT INTO {mv} {select}")
        store.command(f"OPTIMIZE TABLE {mv} FINAL")


def timings(fn: Any, repeat: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M incidents instead of 10M")
    ap.add_argument("--n", type=int, default=None, help="incidents (overrides --quick), e.g. 50000000")
    ap.add_argument("--repeat", type=int, default=20, help="runs per query (p50, p99 of these)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--store", type=Path, help="keep the filled store here and reuse it when it holds N incidents")
    args = ap.parse_args()
    n = args.n or (1_000_000 if args.quick else 10_000_000)
    tmp = args.store or Path(tempfile.mkdtemp(prefix="amb-bench-queries-"))
    results: list[dict[str, Any]] = []
    store = ChdbStore(tmp / "chdb")
    try:
        mig.migrate(store)
        held = int(store.query("SELECT count() FROM incident_facts").scalar())
        if held == n and args.store:
            log(f"reusing the {n:,} incidents already in {args.store}")
        elif held:
            raise SystemExit(f"bench_queries: {tmp} holds {held:,} incidents, not {n:,}; empty it or pick another --store")
        else:
            t = time.perf_counter()
            fill(store, n, np.random.default_rng(11))
            log(f"filled {n:,} incidents in {time.perf_counter() - t:.0f} s")
        one = {lvl: str(store.query(f"SELECT {lvl} FROM incident_facts LIMIT 1").scalar())
               for lvl in ("region", "icb", "sicbl", "lad", "msoa", "lsoa")}
        year, month = (date(2025, 4, 1), date(2026, 3, 31)), (date(2025, 10, 1), date(2025, 10, 31))
        cases: list[tuple[str, queries.Query]] = []
        for lvl in ("england", "region", "icb", "sicbl", "lad", "msoa", "lsoa"):
            code = None if lvl == "england" else one[lvl]
            cases.append((f"dispositions {lvl} x month, a year, one area",
                          queries.Query("dispositions", lvl, "month", code, *year)))
            cases.append((f"dispositions {lvl} x day, a month, one area",
                          queries.Query("dispositions", lvl, "day", code, *month)))
        cases += [
            ("dispositions icb x month, a year, all ICBs", queries.Query("dispositions", "icb", "month", None, *year)),
            ("response icb x month (exact p90), a year, one ICB",
             queries.Query("response", "icb", "month", one["icb"], *year)),
            ("handover icb x day (exact p90), a month, all ICBs", queries.Query("handover", "icb", "day", None, *month)),
        ]
        for name, q in tqdm(cases, unit="query", file=sys.stderr, desc="queries"):
            rows = queries.run(store, q)
            assert rows and rows == queries.run(store, q, direct=True), name
            got = timings(lambda q=q: queries.run(store, q), args.repeat)
            base = timings(lambda q=q: queries.run(store, q, direct=True), max(3, args.repeat // 4))
            results.append({"name": f"query {name}", "p50_ms": pct(got, 0.5), "p99_ms": pct(got, 0.99),
                            "baseline": "same table summed from incident_changes, p50",
                            "baseline_ms": statistics.median(base)})
        size = store_bytes(store, "incident_%") + store_bytes(store, "handover_%")
        results.append({"name": "store MB per million incidents (facts, changes, rollups; unmerged changes)",
                        "p50_ms": size / n, "p99_ms": float("nan"), "baseline": "", "baseline_ms": float("nan")})
    finally:
        store.close()
        if not args.store:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench_queries: {n:,} incidents, {args.repeat} runs per query, chDB {__import__('chdb').engine_version}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'figure':<64} {'p50 ms':>9} {'p99 ms':>9} {'base p50':>9}  baseline")
    for r in results:
        print(f"{r['name']:<64} {r['p50_ms']:>9,.1f} {r['p99_ms']:>9,.1f} {r['baseline_ms']:>9,.1f}  {r['baseline']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
