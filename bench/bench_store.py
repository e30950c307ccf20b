"""Store benchmark: loading incident facts into chDB and reading the standard tables back.

Builds synthetic incident facts (real LSOA 2021 hierarchy from data/geo, a year of clock starts,
AmbSYS-like disposition shares) as Arrow, in a temporary chDB directory removed at the end.
Every figure is printed next to a baseline measured in the same run:

* load rows/s through ``sinks.loader`` (version lookup, signed changes feeding six rollups through
  materialised views, facts table)  vs  one bare Arrow insert of the same rows into a
  ReplacingMergeTree with the facts' columns (what a sink without rollups would pay);
* corrections rows/s (10% of incidents, spread over the year, get a new version that moves their
  disposition, place and day)  vs  the bare insert of the same rows;
* query latency of ``amb query`` tables (ICB x month, one LSOA x day, response with its exact
  90th centile)  vs  the same figures summed from the signed changes table (no rollups);
* store bytes per million incidents  vs  the bare facts table.

    python bench/bench_store.py [--quick] [--json PATH]      # --quick: 1M facts; else 10M
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
from tqdm import tqdm  # noqa: E402

from domain.metrics import HOUR_MS, periods  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks import queries  # noqa: E402
from sinks.loader import HANDOVERS, INCIDENTS, load_kind  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START_MS = 1_743_462_000_000  # 2025-04-01 00:00 BST
YEAR_MS = 365 * 24 * HOUR_MS
BATCH = 50_000  # facts per sink insert (about one insert per second at national peak x10)
DISPOSITIONS = np.array(["hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere"], dtype=object)
SHARES = np.array([0.158, 0.296, 0.499, 0.047])
TRUSTS = np.array(["RX6", "RX7", "RX8", "RX9", "RYA", "RYC", "RRU", "RYD", "RYE", "RYF", "R1F"], dtype=object)


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def geography() -> dict[str, np.ndarray]:
    with gzip.open(ROOT / "data" / "geo" / "lsoa21_geography.csv.gz") as f:
        geo = pcsv.read_csv(f)
    with gzip.open(ROOT / "data" / "geo" / "ambulance_trust_lsoa21.csv.gz") as f:
        trusts = pcsv.read_csv(f)
    geo = geo.join(trusts.select(["lsoa21_code", "trust_ods"]), keys="lsoa21_code").sort_by("lsoa21_code")
    names = {"lsoa": "lsoa21_code", "msoa": "msoa21_code", "lad": "lad_code", "sicbl": "sicbl_code",
             "icb": "icb_code", "region": "region_code", "trust": "trust_ods"}
    return {k: np.array(geo.column(v).to_pylist(), dtype=object) for k, v in names.items()}


def facts(n: int, first: int, geo: dict[str, np.ndarray], rng: np.random.Generator, version: int = 1,
          span: tuple[int, int] = (START_MS, YEAR_MS)) -> pa.Table:
    """``n`` incident facts with ids ``first..first+n-1``, columns exactly as IncidentFact, clock
    starts uniform in ``span`` (start ms, length ms)."""
    ids = np.arange(first, first + n)
    li = rng.integers(0, len(geo["lsoa"]), n)
    clock = span[0] + rng.integers(0, span[1] // 1000, n) * 1000
    hours = clock - clock % HOUR_MS
    uniq, inv = np.unique(hours, return_inverse=True)
    per = np.array([periods(int(h)) for h in uniq], dtype=np.int64)[inv]
    disp = DISPOSITIONS[rng.choice(4, n, p=SHARES)]
    is_open = rng.random(n) < 0.02
    disp[is_open] = None
    conveyed = np.isin(disp, ["conveyed_ed", "conveyed_elsewhere"])
    cat = np.array(["C1", "C2", "C3", "C4"], dtype=object)[rng.choice(4, n, p=[0.1, 0.6, 0.25, 0.05])]
    resp = (rng.lognormal(7.0, 0.8, n) * 1000).astype(np.int64)
    resp_null = (disp == "hear_and_treat") | (rng.random(n) < 0.03)
    site = np.array([f"R{i:02d}H1" for i in range(150)], dtype=object)[rng.integers(0, 150, n)]
    hand = (rng.lognormal(7.2, 0.6, n) * 1000).astype(np.int64)
    hand_null = ~conveyed
    false = np.zeros(n, dtype=bool)
    cols: dict[str, Any] = {
        # the trust is a function of the id, so that a correction keeps it
        "trust": TRUSTS[ids % len(TRUSTS)], "incident_id": np.char.add("INC", ids.astype(str)).astype(object),
        "version": np.full(n, version, np.uint32), "clock_start_ms": clock, "period_ms": clock,
        "hour_ms": per[:, 0], "day_ms": per[:, 1], "week_ms": per[:, 2], "month_ms": per[:, 3], "fy_ms": per[:, 4],
        "category": cat, "source": np.where(rng.random(n) < 0.1, "111", "999").astype(object),
        "disposition": disp, "open": is_open, "conveyed": conveyed, "complete": ~is_open,
        "response_ms": pa.array(resp, mask=resp_null), "response_negative": false,
        "destination_site": pa.array(site, mask=~conveyed), "site": pa.array(site, mask=~conveyed),
        "handover_duration_ms": pa.array(hand, mask=hand_null), "handover_negative": false,
        "lsoa": geo["lsoa"][li], "msoa": geo["msoa"][li], "lad": geo["lad"][li], "sicbl": geo["sicbl"][li],
        "icb": geo["icb"][li], "region": geo["region"][li], "geo_status": np.full(n, "ok", dtype=object),
        "first_event_ms": clock, "last_event_ms": clock + 3_600_000,
    }
    arrays = [pa.array(cols[f.name], type=f.type) if not isinstance(cols[f.name], pa.Array) else cols[f.name]
              for f in INCIDENTS.schema]
    return pa.Table.from_arrays(arrays, schema=INCIDENTS.schema)


def handovers(inc: pa.Table) -> pa.Table:
    """The handover facts of the conveyed incidents in ``inc`` (arrival 40 min after clock start)."""
    c = inc.filter(pc.and_(inc.column("conveyed"), pc.is_valid(inc.column("handover_duration_ms"))))
    arrived = pc.add(c.column("clock_start_ms"), 40 * 60_000)
    dur = c.column("handover_duration_ms")
    handover_at = pc.add(arrived, dur)
    cols = {
        "site": c.column("site"), "arrived_at_ms": arrived, "handover_at_ms": handover_at,
        "clear_at_ms": pc.add(handover_at, 15 * 60_000), "handover_duration_ms": dur,
        "clear_duration_ms": pc.add(dur, 15 * 60_000), "lost_ms": pc.max_element_wise(pc.subtract(dur, 900_000), 0),
    }
    arrays = [cols[f.name] if f.name in cols else c.column(f.name) for f in HANDOVERS.schema]
    return pa.Table.from_arrays(arrays, schema=HANDOVERS.schema)


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median seconds of ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def store_bytes(store: ChdbStore, like: str) -> int:
    return int(store.query(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table LIKE {t:String}", {"t": like}).scalar() or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M facts instead of 10M")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--n", type=int, default=None, help="number of incidents (overrides --quick)")
    args = ap.parse_args()
    n = args.n or (1_000_000 if args.quick else 10_000_000)
    rng = np.random.default_rng(7)
    geo = geography()
    tmp = Path(tempfile.mkdtemp(prefix="amb-bench-store-"))
    results: list[dict[str, Any]] = []

    def result(name: str, value: float, unit: str, baseline: str, baseline_value: float) -> None:
        results.append({"name": name, "value": value, "unit": unit, "baseline": baseline,
                        "baseline_value": baseline_value})

    store = ChdbStore(tmp / "chdb")
    try:
        mig.migrate(store)
        store.command(mig.load()[0].up[1].replace("incident_facts", "bare_facts", 1))
        store.command(mig.load()[1].up[1].replace("handover_facts", "bare_handovers", 1))
        log(f"generating and loading {n:,} facts in batches of {BATCH:,}")
        bare_s = load_s = 0.0
        rows = 0
        # A live sink's batches hold the last few hours' incidents, so each batch gets the next
        # slice of the year (a replay reads them in the same order).
        step = YEAR_MS * BATCH // n
        for first in tqdm(range(0, n, BATCH), unit="batch", file=sys.stderr):
            batch = facts(min(BATCH, n - first), first, geo, rng, span=(START_MS + step * (first // BATCH), step))
            hand = handovers(batch)
            rows += batch.num_rows + hand.num_rows
            t = time.perf_counter()
            store.insert_arrow("bare_facts", batch, f"bare:{first}")
            store.insert_arrow("bare_handovers", hand, f"bare:{first}")
            bare_s += time.perf_counter() - t
            t = time.perf_counter()
            load_kind(store, INCIDENTS, batch, f"load:{first}")
            load_kind(store, HANDOVERS, hand, f"load:{first}")
            load_s += time.perf_counter() - t
        result("load incident+handover facts (lookup, signed changes, 6 rollups, facts)", rows / load_s, "rows/s",
               "bare Arrow insert into the facts tables' engines", rows / bare_s)

        log("corrections: 10% of incidents get version 2 with a new disposition and place")
        m = n // 10
        ids = np.sort(rng.choice(n, m, replace=False))
        corr_s = bare_c = 0.0
        for i in tqdm(range(0, m, BATCH), unit="batch", file=sys.stderr):
            chunk = ids[i : i + BATCH]
            batch = facts(len(chunk), 0, geo, rng, version=2)  # new place, day and disposition
            batch = batch.set_column(0, "trust", pa.array(TRUSTS[chunk % len(TRUSTS)]))
            batch = batch.set_column(1, "incident_id", pa.array(np.char.add("INC", chunk.astype(str)).astype(object)))
            old = store.query("SELECT count() FROM incident_facts").scalar()
            t = time.perf_counter()
            load_kind(store, INCIDENTS, batch, f"corr:{i}")
            corr_s += time.perf_counter() - t
            assert store.query("SELECT count() FROM incident_facts").scalar() == old + len(chunk)
            t = time.perf_counter()
            store.insert_arrow("bare_facts", batch, f"bare-corr:{i}")
            bare_c += time.perf_counter() - t
        result("load corrections (moves counts between cells)", m / corr_s, "rows/s",
               "bare Arrow insert of the same rows", m / bare_c)
        total = store.query("SELECT sum(incidents + open) FROM incident_rollup_monthly WHERE level = 'england'").scalar()
        assert total == n, (total, n)  # corrections moved, never added

        log("merging (OPTIMIZE FINAL) before measuring size and latency")
        merged = [str(r[0]) for r in store.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                                 "AND engine LIKE '%MergeTree'").rows]
        for t in tqdm(merged, unit="table", file=sys.stderr):
            store.command(f"OPTIMIZE TABLE {t} FINAL")

        icb = str(store.query("SELECT icb FROM incident_facts LIMIT 1").scalar())
        # an LSOA with incidents in the month queried (a random one may have none at small n)
        lsoa = str(store.query("SELECT lsoa FROM incident_facts FINAL WHERE month_ms = {m:Int64} LIMIT 1",
                               {"m": periods(START_MS + 200 * 86_400_000)[3]}).scalar())
        year = (date(2025, 4, 1), date(2026, 3, 31))
        month = (date(2025, 10, 1), date(2025, 10, 31))
        cases = [
            ("dispositions ICB x month, all ICBs, a year", queries.Query("dispositions", "icb", "month", None, *year)),
            ("dispositions one ICB x month, a year", queries.Query("dispositions", "icb", "month", icb, *year)),
            ("dispositions one LSOA x day, a month", queries.Query("dispositions", "lsoa", "day", lsoa, *month)),
            ("dispositions all LSOAs x month, a month", queries.Query("dispositions", "lsoa", "month", None, *month)),
            ("response one ICB x month (exact p90), a year", queries.Query("response", "icb", "month", icb, *year)),
            ("response England x month (exact p90), a year", queries.Query("response", "england", "month", None, *year)),
            ("handover ICB x day (exact p90), a month", queries.Query("handover", "icb", "day", None, *month)),
        ]
        for name, q in cases:
            rows = queries.run(store, q)
            assert rows and rows == queries.run(store, q, direct=True), name
            got = timed(lambda q=q: queries.run(store, q))
            base = timed(lambda q=q: queries.run(store, q, direct=True))
            result(f"query {name}", got * 1000, "ms", "same table summed from incident_changes", base * 1000)

        size = store_bytes(store, "incident_%") + store_bytes(store, "handover_%")
        bare = store_bytes(store, "bare_%")
        result("store size per million incidents (facts, changes, rollups)", size / n * 1e6 / 1e6, "MB",
               "bare facts table", bare / (n + m) * 1e6 / 1e6)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"bench_store: {n:,} incident facts, batches of {BATCH:,}, chDB {__import__('chdb').engine_version}")
    print(f"{'figure':<70} {'value':>12} {'unit':<7} {'baseline':>12}  baseline")
    for r in results:
        print(f"{r['name']:<70} {r['value']:>12,.1f} {r['unit']:<7} {r['baseline_value']:>12,.1f}  {r['baseline']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
