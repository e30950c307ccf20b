"""`make chaos`: every chaos scenario on a private broker (its own Stack, so it can be restarted),
then a table of faults injected, events sent, accepted, dead-lettered and differences found.

    python tests/chaos/run_chaos.py                  # the full set (about 10 minutes on 2 cores)
    python tests/chaos/run_chaos.py --quick          # smaller volumes
    python tests/chaos/run_chaos.py --scenario broker --seed 7

Exits 1 if any scenario finds a difference, a lost event or a poison message missing from the DLQ.
Seeded: the same --seed gives the same traffic, poison and fault schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for chaos.scenario)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout

from amb import config  # noqa: E402
from amb.stack import Stack, private_settings  # noqa: E402
from chaos.scenario import FAULTS, ChaosReport, format_reports, run_scenario  # noqa: E402
from domain.events import TRUSTS  # noqa: E402

SCENARIOS = {
    # name: (trusts, scale, chunks, faults)
    "workers": (("RX6", "RYE", "R1F"), 0.2, 6, ("kill_worker", "two_workers")),
    "sink": (("RX6", "RYE", "R1F"), 0.2, 6, ("kill_sink", "kill_archive")),
    "broker": (("RX6", "RRU"), 0.15, 4, ("restart_broker", "kill_worker")),
    "everything": (TRUSTS, 0.1, 10, FAULTS),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--quick", action="store_true", help="a third of the volume and chunks")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), action="append", help="run only these (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the reports as JSON here")
    args = ap.parse_args(argv)
    from streams.geo import IndexGeo

    geo = IndexGeo.load(config.load().geo_index_dir)
    reports: list[ChaosReport] = []
    with tempfile.TemporaryDirectory(prefix="amb-chaos-") as tmp:
        root = Path(tmp)
        stack = Stack(private_settings(root / "stack"), prometheus=False, die_with_parent=True)
        print(f"starting a private broker under {root}", file=sys.stderr)
        stack.up(timeout=180)
        try:
            for i, name in enumerate(args.scenario or list(SCENARIOS)):
                trusts, scale, chunks, faults = SCENARIOS[name]
                if args.quick:
                    scale, chunks = scale / 3, max(len(faults), chunks // 3)
                print(f"scenario {name}: trusts {','.join(trusts)}, scale {scale}, {chunks} chunks, "
                      f"faults {', '.join(faults)}", file=sys.stderr)
                t = time.monotonic()
                try:
                    rep = run_scenario(stack.settings, root / name, name=name, seed=args.seed + i, trusts=trusts,
                                       scale=scale, chunks=chunks, faults=faults, geo=geo, stack=stack,
                                       echo=lambda s: print(s, file=sys.stderr))
                except AssertionError as exc:  # a process that failed to drain: report it, run the rest
                    rep = ChaosReport(name, args.seed + i, differences=-1, details=[str(exc)[:2000]])
                reports.append(rep)
                print(f"  {name}: {'ok' if rep.ok else 'FAIL'} in {time.monotonic() - t:.0f} s", file=sys.stderr)
                for line in rep.details[:20]:
                    print(f"    {line}", file=sys.stderr)
        finally:
            stack.down(timeout=30)
    print(format_reports(reports))
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "faults": dict(r.faults), "ok": r.ok} for r in reports],
                                        indent=1))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
