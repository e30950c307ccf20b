"""Run every bench/bench_*.py and write bench/results.md and bench/results.json.

Each benchmark prints its own table and, given ``--json PATH``, writes a list of figures:
``{"name", "value", "unit", "baseline", "baseline_value"}``, the baseline measured in the same run.
Benchmarks never fail on a threshold; a benchmark that crashes is reported as such and the rest go on.

    python bench/run_all.py [--quick] [--only geo,kafka]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_facts() -> dict[str, str]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": str(os.cpu_count()),
        "memory_gib": f"{mem_kb / 1024 / 1024:.1f}",
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smaller sizes)")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. geo,kafka for bench_geo.py, bench_kafka.py")
    args = parser.parse_args()

    only = {n.strip() for n in args.only.split(",") if n.strip()}
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not only or p.stem.removeprefix("bench_") in only)
    facts = machine_facts()
    results: list[dict[str, object]] = []
    for script in scripts:
        print(f"\n=== {script.name}", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            out = Path(tmp.name)
        cmd = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if args.quick else [])
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        elapsed = time.perf_counter() - started
        figures: list[dict[str, object]] = []
        if out.exists() and out.stat().st_size:
            try:
                figures = json.loads(out.read_text())
            except json.JSONDecodeError:
                figures = []
        out.unlink(missing_ok=True)
        results.append({
            "script": script.name, "exit_code": proc.returncode, "seconds": round(elapsed, 1), "figures": figures,
        })

    (HERE / "results.json").write_text(json.dumps({"machine": facts, "quick": args.quick, "results": results}, indent=2))
    lines = [
        "# Benchmark results", "",
        f"Date {facts['date']}; {facts['cores']} cores, {facts['memory_gib']} GiB; {facts['cpu']}; "
        f"Python {facts['python']}{'; quick sizes' if args.quick else ''}.", "",
        "Every figure is measured against a baseline in the same run; ratio = value / baseline value.", "",
        "| benchmark | figure | value | unit | baseline | baseline value | ratio |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for r in results:
        figures = r["figures"]
        assert isinstance(figures, list)
        if not figures:
            lines.append(f"| {r['script']} | (no figures; exit {r['exit_code']}) | | | | | |")
        for f in figures:
            value, base = f.get("value"), f.get("baseline_value")
            ratio = f"{value / base:.2f}" if isinstance(value, int | float) and isinstance(base, int | float) and base else ""
            lines.append(
                f"| {r['script']} | {f.get('name')} | {_fmt(value)} | {f.get('unit', '')} | "
                f"{f.get('baseline', '')} | {_fmt(base)} | {ratio} |"
            )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    failed = [r["script"] for r in results if r["exit_code"] != 0]
    if failed:
        print(f"\nbenchmarks that did not finish: {', '.join(map(str, failed))}")
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
