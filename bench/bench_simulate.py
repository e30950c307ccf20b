"""Simulator speed: England-wide events generated and written as JSONL, against the serialisation ceiling.

    python bench/bench_simulate.py [--quick] [--json PATH]

Every figure is printed beside a baseline measured in the same run on the same events:

* ``amb simulate --out FILE`` (generate, merge into delivery order, write)  vs  ``json.dumps`` of
  the same records already built as dicts, joined and written: what any Python JSONL writer pays
  before it has generated anything;
* ``--out-dir`` (one file per trust)  vs  the same baseline;
* the ``generate()`` dict API (what tests and tools use)  vs  ``json.loads`` of the same lines.

Rates are events per second of wall time and per second of this process's CPU time ("one core":
the machine may be shared). Best of several rounds. Locations come from the geography index when it
is built (no cache is written), otherwise from the built-in sample pool; output goes to a temporary
directory that is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amb import config, simulate_io  # noqa: E402
from domain.simulate import LocationPool, Mess, SimConfig, chunks, generate  # noqa: E402
from domain.simulate.sample_pool import sample_pool  # noqa: E402


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def best(fn: Callable[[], int], rounds: int) -> tuple[float, float]:
    """(events per wall second, events per CPU second) of the fastest of ``rounds`` runs of ``fn``."""
    wall, cpu = 0.0, 0.0
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        n = fn()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        wall, cpu = max(wall, n / dt), max(cpu, n / max(dc, 1e-9))
    return wall, cpu


def load_pool() -> tuple[LocationPool, str]:
    settings = config.load()
    if (settings.geo_index_dir / "manifest.json").exists():
        return simulate_io.load_pool(settings, cache=False), "geography index"
    return sample_pool(), "built-in sample (no geography index)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one day, two rounds (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    args = ap.parse_args(argv)
    days, rounds = (1, 2) if args.quick else (3, 3)

    t = time.perf_counter()
    pool, pool_name = load_pool()
    log(f"location pool: {pool_name}, {len(pool.postcode):,} postcodes in {time.perf_counter() - t:.1f} s")
    cfg = SimConfig(start=date(2026, 10, 1), days=days, seed=1, mess=Mess.preset("default"))
    lines = [x for c in chunks(cfg, pool) for x in c.lines.tolist()]
    records = [json.loads(x) for x in lines]
    n = len(lines)

    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        out = Path(tmp)

        def to_file() -> int:
            return simulate_io.simulate_to_file(cfg, pool, out / "all.jsonl", progress=False).events

        def to_dir() -> int:
            return simulate_io.simulate_to_dir(cfg, pool, out / "dir", progress=False).events

        def dumps_baseline() -> int:
            dumps = json.JSONEncoder(separators=(",", ":")).encode
            with (out / "baseline.jsonl").open("w", encoding="utf-8", buffering=1 << 20) as f:
                f.write("\n".join([dumps(r) for r in records]))
                f.write("\n")
            return n

        def dict_api() -> int:
            return sum(1 for _ in generate(cfg, pool))

        def loads_baseline() -> int:
            loads = json.loads
            for x in lines:
                loads(x)
            return n

        measures = [
            ("simulate --out FILE", to_file, "json.dumps of built dicts + write", dumps_baseline),
            ("simulate --out-dir DIR", to_dir, "json.dumps of built dicts + write", dumps_baseline),
            ("generate() dicts", dict_api, "json.loads of the same lines", loads_baseline),
        ]
        rows = []
        for name, fn, base_name, base_fn in measures:
            (wall, cpu), (bwall, bcpu) = best(fn, rounds), best(base_fn, rounds)
            rows.append((name, wall, base_name, bwall))
            rows.append((f"{name} (per CPU second)", cpu, f"{base_name} (per CPU second)", bcpu))
        size = (out / "all.jsonl").stat().st_size / n

    print(f"bench_simulate: England, {days} day(s), mess default: {n:,} events ({size:.0f} bytes each), "
          f"locations from the {pool_name}; best of {rounds} rounds")
    print(f"{'measure':<40} {'events/s':>12}   {'baseline':<52} {'events/s':>12} {'x':>6}")
    for name, value, base_name, base in rows:
        print(f"{name:<40} {value:>12,.0f}   {base_name:<52} {base:>12,.0f} {value / base:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": name, "value": round(value), "unit": "events/s", "baseline": base_name,
             "baseline_value": round(base)} for name, value, base_name, base in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
