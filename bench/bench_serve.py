"""Serve benchmark: query latency through `amb serve` vs the same query straight on chDB.

Builds synthetic incident facts (bench_store's generator: real LSOA hierarchy, a year of clock
starts) in a temporary chDB store, starts the service in-process on a free port and runs each
workload with 10 concurrent clients; every figure is printed next to a baseline measured in the
same run on the same store:

* GET /v1/metrics/dispositions?level=icb&by=month (scoping, disclosure control with secondary
  suppression, audit, HTTP, JSON)  vs  ``queries.run`` of the same table on the store;
* GET /v1/metrics/response?level=icb&by=month (exact 90th centile)  vs  ``queries.run``;
* clickhouse-connect ``SELECT icb, sum(incidents) ... FROM non_conveyance_icb_month GROUP BY icb``
  through the SQL endpoint (guard, protected view snapshot, chDB over Arrow, Native bytes passed
  through)  vs  the same SQL on the store directly;
* the two GET workloads right after the data changed (``Service.invalidate``, as the in-process
  sink does after each load): as served (stale while revalidate) and as a true cache miss
  (``max_stale = 0``: the table is queried and protected again), one client;
* one cold protected snapshot of the view (read + disclosure control)  vs  reading the view.

Repeated requests are answered from the service's cache (protected tables and rendered bodies,
kept per store version), so the hot figures are the service's own overhead: authentication,
lookup, audit row, HTTP.

    python bench/bench_serve.py [--quick] [--json PATH] [--store DIR]   # --quick: 200k incidents; else 2M
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from bench_store import facts, geography, handovers  # noqa: E402
from tqdm import tqdm  # noqa: E402

from amb.identities import Registry, TokenRecord, hash_token, load_geography  # noqa: E402
from amb.serve import Running, Service, ThreadLocalChdb  # noqa: E402
from domain.access import Identity  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks import queries  # noqa: E402
from sinks.loader import HANDOVERS, INCIDENTS, load_kind  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402

CLIENTS = 10
TOKEN = "amb_bench-token"
IDENT = Identity("icb", "QOP")
SQL = "SELECT icb, sum(incidents) AS incidents, sum(hear_and_treat) AS ht FROM non_conveyance_icb_month GROUP BY icb"


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def latencies(fn: Callable[[int], Any], per_client: int, clients: int = CLIENTS) -> tuple[list[float], float]:
    """Each of ``clients`` threads calls ``fn(client_index)`` ``per_client`` times after one warm-up;
    returns (every latency in seconds, wall seconds)."""
    for c in range(clients):
        fn(c)
    lat: list[float] = []
    lock = threading.Lock()

    def worker(c: int) -> None:
        mine = []
        for _ in range(per_client):
            t = time.perf_counter()
            fn(c)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return lat, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k incidents, fewer requests")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--store", type=Path, help="keep the loaded store here and reuse it on the next run")
    args = ap.parse_args()
    n = 200_000 if args.quick else 2_000_000
    per_client = 20 if args.quick else 100

    tmp = Path(tempfile.mkdtemp(prefix="amb-bench-serve-"))
    where = args.store or tmp / "chdb"
    reuse = args.store is not None and (where / f"loaded-{n}").exists()
    store = ChdbStore(where)
    results: list[dict[str, Any]] = []
    rows: list[tuple[str, str, str]] = []
    try:
        if not reuse:
            mig.migrate(store)
            mig.load_reference(store)
            geo, rng = geography(), np.random.default_rng(7)
            batch = 100_000
            for first in tqdm(range(0, n, batch), desc="load facts", unit="batch", file=sys.stderr):
                inc = facts(min(batch, n - first), first, geo, rng)
                load_kind(store, INCIDENTS, inc, f"bench:{first}")
                load_kind(store, HANDOVERS, handovers(inc), f"bench-h:{first}")
            if args.store is not None:
                (where / f"loaded-{n}").touch()
        audit_before = int(store.query("SELECT count() FROM audit_log").scalar())
        reg = Registry((IDENT,), (TokenRecord("bench", IDENT.id, hash_token(TOKEN)),))
        service = Service(store, reg, load_geography(ROOT / "data" / "geo"), b"k" * 32, audit_interval=1.0)
        server = Running(service, workers=CLIENTS).start()
        host, port = server.url.split("//")[1].split(":")
        conns: dict[int, http.client.HTTPConnection] = {}

        def http_get(path: str) -> Callable[[int], Any]:
            def go(c: int) -> Any:
                conn = conns.setdefault(c, http.client.HTTPConnection(host, int(port), timeout=120))
                conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == 200, body[:200]
                return body
            return go

        # the baseline: chDB directly, one connection per client thread (a shared one is unsafe)
        direct_store = ThreadLocalChdb(store)

        def direct(metric: str) -> Callable[[int], Any]:
            q = queries.Query(metric, "icb", "month")
            return lambda _c: queries.run(direct_store, q)

        def report(name: str, served: tuple[list[float], float], base: tuple[list[float], float], calls: int) -> None:
            for stat, q in (("p50", 50), ("p99", 99)):
                v, b = pct(served[0], q), pct(base[0], q)
                results.append({"name": f"{name} {stat}", "value": round(v, 2), "unit": "ms",
                                "baseline": "same query on chDB directly", "baseline_value": round(b, 2)})
                rows.append((f"{name} {stat}", f"{v:9.2f} ms", f"{b:9.2f} ms"))
            qps, bqps = calls / served[1], calls / base[1]
            results.append({"name": f"{name} throughput", "value": round(qps, 1), "unit": "queries/s",
                            "baseline": "same query on chDB directly", "baseline_value": round(bqps, 1)})
            rows.append((f"{name} throughput", f"{qps:9.1f} q/s", f"{bqps:9.1f} q/s"))

        calls = CLIENTS * per_client
        for metric in ("dispositions", "response"):
            log(f"{metric}: {CLIENTS} clients x {per_client} requests, served then direct")
            served = latencies(http_get(f"/v1/metrics/{metric}?level=icb&by=month"), per_client)
            base = latencies(direct(metric), per_client)
            report(f"GET /v1/metrics/{metric} icb x month", served, base, calls)

        rounds = 5 if args.quick else 10
        for metric in ("dispositions", "response"):
            # right after a load: as served (the previous answer while one rebuild runs, up to
            # max_stale seconds), and with max_stale = 0 (every such request rebuilds: a true miss)
            for label, max_stale in (("after a load", service.cache.max_stale), ("cold (cache miss)", 0.0)):
                log(f"{metric}: one client, {rounds} requests each right after the data changed, {label}")
                service.cache.max_stale = max_stale
                go, base_go = http_get(f"/v1/metrics/{metric}?level=icb&by=month"), direct(metric)
                cold_s: list[float] = []
                cold_b: list[float] = []
                for _ in range(rounds):
                    service.invalidate()
                    t0 = time.perf_counter()
                    go(0)
                    cold_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    base_go(0)
                    cold_b.append(time.perf_counter() - t0)
                    time.sleep(0.5)  # let the background rebuild finish
                for stat, q in (("p50", 50), ("max", 100)):
                    cv, cb = pct(cold_s, q), pct(cold_b, q)
                    name = f"GET /v1/metrics/{metric} {label} {stat}"
                    results.append({"name": name, "value": round(cv, 2), "unit": "ms", "baseline_value": round(cb, 2),
                                    "baseline": "same query on chDB directly, one client"})
                    rows.append((name, f"{cv:9.2f} ms", f"{cb:9.2f} ms"))
            service.cache.max_stale = 2.0

        import clickhouse_connect

        t0 = time.perf_counter()
        service.invalidate()
        service.snapshot("non_conveyance_icb_month")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.query("SELECT * FROM non_conveyance_icb_month")
        bare = time.perf_counter() - t0
        results.append({"name": "protected view snapshot (cold)", "value": round(cold * 1000, 2), "unit": "ms",
                        "baseline": "SELECT * FROM the view", "baseline_value": round(bare * 1000, 2)})
        rows.append(("protected view snapshot (cold)", f"{cold * 1000:9.2f} ms", f"{bare * 1000:9.2f} ms"))

        clients = [clickhouse_connect.get_client(host=host, port=int(port), username=IDENT.login, password=TOKEN)
                   for _ in range(CLIENTS)]
        log(f"SQL endpoint: {CLIENTS} clickhouse-connect clients x {per_client} queries, served then direct")
        served = latencies(lambda c: clients[c].query(SQL).result_rows, per_client)
        base = latencies(lambda _c: direct_store.query(SQL).rows, per_client)
        report("SQL endpoint (clickhouse-connect)", served, base, calls)
        for cl in clients:
            cl.close()
        for conn in conns.values():
            conn.close()
        server.stop()
        service.close()
        direct_store.close()
        audited = int(store.query("SELECT count() FROM audit_log").scalar()) - audit_before
        results.append({"name": "audit rows written", "value": audited, "unit": "rows",
                        "baseline": "requests made", "baseline_value": 3 * (calls + CLIENTS) + 4 * rounds})
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    import os

    print(f"bench_serve: {n:,} incidents, {CLIENTS} concurrent clients, {per_client} requests each "
          f"(load average {os.getloadavg()[0]:.1f})")
    width = max(len(r[0]) for r in rows)
    print(f"{'workload':<{width}}  {'through amb serve':>18}  {'chDB directly':>14}")
    for name, v, b in rows:
        print(f"{name:<{width}}  {v:>18}  {b:>14}")
    print(f"audit rows written: {results[-1]['value']:,}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
