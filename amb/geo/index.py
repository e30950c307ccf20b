"""`GeoIndex`: the built geography index, loaded for batch attribution.

Arrays are memory-mapped from the index directory, so several processes share one copy. The
nearest-postcode tree (scipy cKDTree) and the WGS84 -> OSGB36 transformer (pyproj) are built on
first use: a postcode-only caller never pays for them. All decisions are made by the pure core in
``domain.geo``; this class only feeds it arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from amb.errors import AmbError
from amb.geo.layout import INDEX_FORMAT, MANIFEST, read_manifest
from domain.events import Location
from domain.geo import attribute as ga
from domain.geo import vintage as gv
from domain.geo.postcode import keys_to_postcodes, normalise_keys, normalise_postcode
from domain.geo.status import FIT_NAMES, STATUS_NAMES, Country, Status, reason, reasons

#: Columns a batch result adds (the `amb geo lookup --in/--out` contract).
OUTPUT_COLUMNS = ("lsoa21_code", "msoa21_code", "lad_code", "sicbl_code", "icb_code", "region_code", "status")


class GeoIndexError(AmbError):
    """The index is missing, stale or from another format: rebuild it."""


@dataclass(frozen=True)
class Placement:
    """One location, fully attributed (the scalar wrapper's answer and `amb geo lookup`'s output)."""

    status: str
    reason: str
    method: str
    postcode: str
    distance_m: float | None
    lsoa_fit: str
    lsoa21_code: str
    lsoa21_name: str
    msoa21_code: str
    msoa21_name: str
    lad_code: str
    lad_name: str
    sicbl_code: str
    sicbl_ods: str
    sicbl_name: str
    icb_code: str
    icb_ods: str
    icb_name: str
    region_code: str
    region_ods: str
    region_name: str
    trust_ods: str
    trust_name: str
    icb_trusts: tuple[str, ...]
    imd_decile: int | None
    vintage: str
    vintage_valid_from: str
    vintage_illustrative: bool
    vintage_superseded_on: str | None
    vintage_stale: bool

    @property
    def placed(self) -> bool:
        return bool(self.lsoa21_code)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GeoIndex:
    """The geography index: postcode table, centroid tree, LSOA attributes and vintage tables."""

    def __init__(self, index_dir: Path, max_distance_m: float = ga.DEFAULT_MAX_DISTANCE_M, mmap: bool = True) -> None:
        manifest = read_manifest(index_dir)
        if manifest is None:
            raise GeoIndexError(f"no geography index in {index_dir}: run `amb geo build`")
        if manifest.get("format") != INDEX_FORMAT:
            raise GeoIndexError(f"geography index in {index_dir} has format {manifest.get('format')}, "
                                f"this code reads {INDEX_FORMAT}: run `amb geo build`")
        self.index_dir = index_dir
        self.manifest = manifest
        self.max_distance_m = float(max_distance_m)
        mode: Any = "r" if mmap else None

        def load(name: str) -> NDArray[Any]:
            # np.asarray drops the memmap subclass (its __getitem__ is Python) but keeps the mapping.
            arr: NDArray[Any] = np.asarray(np.load(index_dir / f"{name}.npy", mmap_mode=mode, allow_pickle=False))
            return arr

        self.postcodes = ga.PostcodeTable(load("pc_key"), load("pc_lsoa"), load("pc_status"), load("pc_country"),
                                          load("pc_fit"))
        self.points = ga.PointTable(load("pt_lsoa"), load("pt_country"), load("pt_pc"))
        self._pt_e, self._pt_n = load("pt_e"), load("pt_n")
        self.lsoa_codes: NDArray[np.str_] = load("lsoa_code")
        self.lsoa_names: NDArray[np.str_] = load("lsoa_name")
        self.lsoa_imd_decile: NDArray[np.int8] = load("lsoa_imd_decile")
        self.lsoa_trust: NDArray[np.int8] = load("lsoa_trust")
        self.trusts: list[dict[str, str]] = manifest["trusts"]
        self.vintages: list[gv.Vintage] = []
        self.hierarchies: list[gv.Hierarchy] = []
        for vi, vj in enumerate(manifest["vintages"]):
            v = gv.Vintage(vj["id"], date.fromisoformat(vj["valid_from"]), bool(vj["illustrative"]),
                           date.fromisoformat(vj["superseded_on"]) if vj["superseded_on"] else None, vj["note"])
            levels = {lv: gv.Level(tuple(d["codes"]), tuple(d["ods"]), tuple(d["names"]))
                      for lv, d in vj["levels"].items()}
            parents = {lv: np.asarray(load(f"v{vi}_{lv}")) for lv in gv.LEVELS}
            self.vintages.append(v)
            self.hierarchies.append(gv.Hierarchy(v, parents, levels))
        self._starts = gv.starts_ms(self.vintages)
        self._tree: Any = None
        self._icb_trusts: dict[int, dict[str, list[tuple[str, float, bool]]]] = {}
        self._fwd: Any = None
        self._inv: Any = None

    @classmethod
    def load(cls, index_dir: Path | None = None, max_distance_m: float = ga.DEFAULT_MAX_DISTANCE_M) -> GeoIndex:
        """Open the index in ``index_dir`` (default: settings' AMB_GEO_DIR / AMB_DATA_DIR/geo)."""
        if index_dir is None:
            from amb import config

            index_dir = config.load().geo_index_dir
        return cls(index_dir, max_distance_m=max_distance_m)

    # --- lazily built helpers ----------------------------------------------------------------
    @property
    def tree(self) -> Any:
        if self._tree is None:
            from scipy.spatial import cKDTree

            xy = np.column_stack([self._pt_e, self._pt_n]).astype(np.float64)
            self._tree = cKDTree(xy, balanced_tree=False, compact_nodes=False)
        return self._tree

    def _transformers(self) -> tuple[Any, Any]:
        if self._fwd is None:
            from pyproj.transformer import TransformerGroup

            with warnings.catch_warnings():
                # Without the OSTN15 grid pyproj warns and uses the best Helmert fit (EPSG: ~2 m).
                warnings.simplefilter("ignore")
                self._fwd = TransformerGroup(4326, 27700, always_xy=True).transformers[0]
                self._inv = TransformerGroup(27700, 4326, always_xy=True).transformers[0]
        return self._fwd, self._inv

    @property
    def transform_description(self) -> str:
        fwd, _ = self._transformers()
        return f"{fwd.description} (stated accuracy {fwd.accuracy} m)"

    def to_osgb(self, lat: NDArray[np.float64], lon: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """WGS84 -> OSGB36 National Grid metres, vectorised."""
        fwd, _ = self._transformers()
        e, n = fwd.transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        return np.asarray(e), np.asarray(n)

    def to_wgs84(self, easting: NDArray[Any], northing: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """OSGB36 -> (lat, lon)."""
        _, inv = self._transformers()
        lon, lat = inv.transform(np.asarray(easting, dtype=np.float64), np.asarray(northing, dtype=np.float64))
        return np.asarray(lat), np.asarray(lon)

    # --- vintages ------------------------------------------------------------------------------
    def vintage_index(self, which: str | date | None = None) -> int:
        """Vintage by id, by the local date it must be in force on, or the newest (None)."""
        if isinstance(which, str):
            for i, v in enumerate(self.vintages):
                if v.id == which:
                    return i
            raise GeoIndexError(f"no vintage {which!r}; the index has {', '.join(v.id for v in self.vintages)}")
        return gv.select_date(self.vintages, which)

    def vintages_at(self, times_ms: NDArray[np.int64] | Sequence[int] | None, n: int) -> NDArray[np.int8]:
        return gv.select(self._starts, times_ms, n)

    # --- batch attribution ---------------------------------------------------------------------
    def attribute_postcodes(self, postcodes: Sequence[str | None] | NDArray[Any],
                            times_ms: NDArray[np.int64] | Sequence[int] | None = None) -> ga.Attribution:
        """Postcodes in any spelling -> attribution (``times_ms`` pick the vintage; None = newest)."""
        keys, pre = normalise_keys(postcodes)
        att = ga.lookup_keys(self.postcodes, keys, pre)
        return att.with_vintage(self.vintages_at(times_ms, len(att)))

    def attribute_osgb(self, easting: NDArray[Any] | Sequence[float], northing: NDArray[Any] | Sequence[float],
                       times_ms: NDArray[np.int64] | Sequence[int] | None = None,
                       _method: ga.Method = ga.Method.OSGB) -> ga.Attribution:
        """OSGB36 easting/northing (metres) -> LSOA of the nearest postcode centroid within the limit."""
        e = np.asarray(easting, dtype=np.float64)
        n = np.asarray(northing, dtype=np.float64)
        pre = ga.classify_osgb(e, n)
        ok = np.flatnonzero(pre == Status.OK)
        point = np.full(len(e), np.iinfo(np.int64).max, dtype=np.int64)
        dist = np.full(len(e), np.inf)
        if len(ok):
            # Query in grid-cell order: neighbouring queries then walk the same tree nodes.
            cell = (e[ok] // 4000) * 1000 + n[ok] // 4000
            order = np.argsort(cell, kind="stable")
            qi = ok[order]
            d, p = self.tree.query(np.column_stack([e[qi], n[qi]]), k=1,
                                   distance_upper_bound=self.max_distance_m)
            point[qi], dist[qi] = p, d
        att = ga.from_nearest(self.points, point, dist, pre, self.max_distance_m, _method)
        return att.with_vintage(self.vintages_at(times_ms, len(att)))

    def attribute_coordinates(self, lat: NDArray[Any] | Sequence[float], lon: NDArray[Any] | Sequence[float],
                              times_ms: NDArray[np.int64] | Sequence[int] | None = None) -> ga.Attribution:
        """WGS84 lat/lon -> OSGB36 (pyproj) -> nearest postcode centroid."""
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        pre = ga.classify_wgs84(la, lo)
        e = np.full(len(la), np.nan)
        n = np.full(len(la), np.nan)
        ok = pre == Status.OK
        if ok.any():
            e[ok], n[ok] = self.to_osgb(la[ok], lo[ok])
        # Inputs that project outside the grid are abroad: too far, not invalid.
        grid_pre = ga.classify_osgb(e, n)
        att = self.attribute_osgb(np.where(ok & (grid_pre != Status.OK), -1.0, e), n, times_ms, ga.Method.WGS84)
        status = np.where(pre != Status.OK, pre, np.where(grid_pre != Status.OK, Status.TOO_FAR_FROM_POSTCODE,
                                                          att.status)).astype(np.uint8)
        return ga.Attribution(att.lsoa, status, att.country, att.postcode, att.distance_m,
                              np.where(pre == Status.NO_LOCATION, ga.Method.NONE, ga.Method.WGS84).astype(np.uint8),
                              att.vintage)

    def attribute(self, locations: Sequence[Location | None],
                  event_times_ms: NDArray[np.int64] | Sequence[int] | None = None) -> ga.Attribution:
        """Incident locations -> attribution: the postcode first; where it gives no answer (missing,
        malformed, unknown, non-geographic) easting/northing, then lat/lon."""
        n = len(locations)
        pcs = [loc.postcode if loc is not None else None for loc in locations]
        att = self.attribute_postcodes(pcs)
        todo = ga.fallback_mask(att.status)
        if todo.any():
            idx = np.flatnonzero(todo)
            sub = [locations[int(i)] for i in idx]
            e = np.array([_f(loc.easting) if loc else np.nan for loc in sub], dtype=np.float64)
            nn = np.array([_f(loc.northing) if loc else np.nan for loc in sub], dtype=np.float64)
            la = np.array([_f(loc.lat) if loc else np.nan for loc in sub], dtype=np.float64)
            lo = np.array([_f(loc.lon) if loc else np.nan for loc in sub], dtype=np.float64)
            att = _fill(att, idx, self._coordinates_fallback(e, nn, la, lo), att.status[idx])
        return att.with_vintage(self.vintages_at(event_times_ms, n))

    def attribute_columns(self, postcode: Sequence[str | None] | None = None,
                          easting: NDArray[Any] | None = None, northing: NDArray[Any] | None = None,
                          lat: NDArray[Any] | None = None, lon: NDArray[Any] | None = None,
                          times_ms: NDArray[np.int64] | Sequence[int] | None = None, n: int | None = None) -> ga.Attribution:
        """Columnar form of :meth:`attribute` (same priority), for CSV batches and Arrow tables."""
        size = n if n is not None else len(next(c for c in (postcode, easting, lat) if c is not None))
        nan = np.full(size, np.nan)
        att = self.attribute_postcodes(postcode) if postcode is not None else ga.empty(size)
        idx = np.flatnonzero(ga.fallback_mask(att.status))
        if len(idx) and any(c is not None for c in (easting, lat)):
            e = (np.asarray(easting, dtype=np.float64) if easting is not None else nan)[idx]
            nn = (np.asarray(northing, dtype=np.float64) if northing is not None else nan)[idx]
            la = (np.asarray(lat, dtype=np.float64) if lat is not None else nan)[idx]
            lo = (np.asarray(lon, dtype=np.float64) if lon is not None else nan)[idx]
            att = _fill(att, idx, self._coordinates_fallback(e, nn, la, lo), att.status[idx])
        return att.with_vintage(self.vintages_at(times_ms, size))

    def _coordinates_fallback(self, e: NDArray[np.float64], n: NDArray[np.float64], lat: NDArray[np.float64],
                              lon: NDArray[np.float64]) -> ga.Attribution:
        # A complete grid reference wins; an incomplete one only when there is no lat/lon either.
        has_en = (~np.isnan(e) & ~np.isnan(n)) | ((~np.isnan(e) | ~np.isnan(n)) & (np.isnan(lat) | np.isnan(lon)))
        en = self.attribute_osgb(e, n)
        ll = self.attribute_coordinates(lat, lon)
        return ga.choose(ll, en, has_en)

    # --- codes and names -----------------------------------------------------------------------
    def columns(self, att: ga.Attribution, vintage: str | date | None = None) -> dict[str, NDArray[Any]]:
        """The batch output columns (``OUTPUT_COLUMNS``) for an attribution, each row in its own
        vintage, or all rows restated to ``vintage`` when given."""
        n = len(att)
        out: dict[str, NDArray[Any]] = {c: np.full(n, "", dtype=object) for c in OUTPUT_COLUMNS[:-1]}
        out["lsoa21_code"] = np.where(att.lsoa >= 0, self.lsoa_codes[np.clip(att.lsoa, 0, None)], "").astype(object)
        vint = (np.full(n, self.vintage_index(vintage), dtype=np.int8) if vintage is not None else att.vintage)
        for vi in np.unique(vint):
            rows = np.flatnonzero(vint == vi)
            h = self.hierarchies[int(vi)]
            for col, lv in (("msoa21_code", "msoa"), ("lad_code", "lad"), ("sicbl_code", "sicbl"),
                            ("icb_code", "icb"), ("region_code", "region")):
                out[col][rows] = h.codes(lv, att.lsoa[rows])
        out["status"] = np.array(STATUS_NAMES, dtype=object)[att.status]
        return out

    def reasons(self, att: ga.Attribution) -> NDArray[np.object_]:
        return reasons(att.status, att.country, self.max_distance_m)

    def lsoa_index(self, lsoa_codes: Sequence[str] | NDArray[Any]) -> NDArray[np.int32]:
        """LSOA 2021 codes -> index (-1 for codes not in England's 33,755)."""
        q = np.asarray(lsoa_codes, dtype="U9")
        pos = np.clip(np.searchsorted(self.lsoa_codes, q), 0, len(self.lsoa_codes) - 1)
        return np.where(self.lsoa_codes[pos] == q, pos, -1).astype(np.int32)

    def hierarchy(self, lsoa_codes: Sequence[str] | NDArray[Any], on: str | date | None = None) -> dict[str, NDArray[np.str_]]:
        """MSOA, LAD, SICBL, ICB and region codes of LSOAs in the vintage in force on ``on`` (a date),
        or the named vintage (restating), or the newest. Unknown LSOAs give ``''``."""
        h = self.hierarchies[self.vintage_index(on)]
        idx = self.lsoa_index(lsoa_codes)
        return {f"{lv}_code" if lv != "msoa" else "msoa21_code": h.codes(lv, idx) for lv in gv.LEVELS}

    def icb_trusts(self, vintage: str | date | None = None) -> dict[str, list[tuple[str, float, bool]]]:
        """ICB code -> serving trusts [(ODS, share of the ICB's LSOAs, primary)], from the LSOA-level
        trust areas, so it holds for every vintage (merged ICBs inherit both trusts)."""
        vi = self.vintage_index(vintage)
        if vi in self._icb_trusts:
            return self._icb_trusts[vi]
        h = self.hierarchies[vi]
        icb = h.parents["icb"]
        counts = np.zeros((len(h.levels["icb"].codes), len(self.trusts)), dtype=np.int64)
        np.add.at(counts, (icb, np.asarray(self.lsoa_trust, dtype=np.int64)), 1)
        out: dict[str, list[tuple[str, float, bool]]] = {}
        for i, code in enumerate(h.levels["icb"].codes):
            total = counts[i].sum()
            top = int(np.argmax(counts[i]))
            out[code] = [(self.trusts[t]["ods"], round(float(counts[i, t] / total), 4), t == top)
                         for t in np.flatnonzero(counts[i])]
        self._icb_trusts[vi] = out
        return out

    def live_postcodes(self, icb_code: str | None = None, trust_ods: str | None = None,
                       vintage: str | date | None = None) -> dict[str, NDArray[Any]]:
        """Live English postcodes with centroids (for the simulator), optionally within one ICB
        (of ``vintage``) or one trust's area: postcode, easting, northing, lat, lon, lsoa21_code."""
        pt_lsoa = np.asarray(self.points.lsoa)
        pt_pc = np.asarray(self.points.postcode)
        keep = (pt_lsoa >= 0) & (np.asarray(self.postcodes.status)[pt_pc] == Status.OK)
        if icb_code is not None:
            h = self.hierarchies[self.vintage_index(vintage)]
            i = h.levels["icb"].index().get(icb_code)
            if i is None:
                raise GeoIndexError(f"no ICB {icb_code} in vintage {h.vintage.id}")
            keep &= h.parents["icb"][np.clip(pt_lsoa, 0, None)] == i
        if trust_ods is not None:
            t = [x["ods"] for x in self.trusts].index(trust_ods) if trust_ods in [x["ods"] for x in self.trusts] else -1
            if t < 0:
                raise GeoIndexError(f"no trust {trust_ods}")
            keep &= np.asarray(self.lsoa_trust)[np.clip(pt_lsoa, 0, None)] == t
        rows = np.flatnonzero(keep)
        e = np.asarray(self._pt_e)[rows].astype(np.float64)
        n = np.asarray(self._pt_n)[rows].astype(np.float64)
        lat, lon = self.to_wgs84(e, n)
        return {"postcode": keys_to_postcodes(np.asarray(self.postcodes.keys)[pt_pc[rows]]), "easting": e,
                "northing": n, "lat": lat, "lon": lon, "lsoa21_code": self.lsoa_codes[pt_lsoa[rows]]}

    # --- scalar convenience --------------------------------------------------------------------
    def lookup(self, postcode: str | None = None, lat: float | None = None, lon: float | None = None,
               easting: float | None = None, northing: float | None = None, on: date | None = None,
               vintage: str | None = None) -> Placement:
        """One location -> :class:`Placement` (same rules as the batch path)."""
        loc = Location(postcode=postcode, lat=lat, lon=lon, easting=easting, northing=northing)
        att = self.attribute([loc])
        vi = self.vintage_index(vintage if vintage is not None else on)
        return self._placement(att, 0, vi, on, postcode)

    def _placement(self, att: ga.Attribution, i: int, vi: int, on: date | None, given: str | None) -> Placement:
        h = self.hierarchies[vi]
        v = h.vintage
        lsoa = np.asarray(att.lsoa[i: i + 1], dtype=np.int32)
        placed = lsoa[0] >= 0
        st = int(att.status[i])
        prow = int(att.postcode[i])
        pc_text = str(keys_to_postcodes(np.asarray(self.postcodes.keys)[[prow]])[0]) if prow >= 0 else (
            normalise_postcode(given) or "")
        dist = float(att.distance_m[i])

        def val(level: str, what: str) -> str:
            return str(h.attr(level, what, lsoa)[0])

        trust = int(self.lsoa_trust[lsoa[0]]) if placed else -1
        icb = val("icb", "codes")
        icb_trusts = tuple(t for t, _, _ in self.icb_trusts(v.id).get(icb, [])) if placed else ()
        stale = bool(v.superseded_on and (on or date.today()) >= v.superseded_on and vi == len(self.vintages) - 1)
        return Placement(
            status=STATUS_NAMES[st],
            reason=reason(st, int(att.country[i]), dist, self.max_distance_m),
            method=ga.METHOD_NAMES[int(att.method[i])],
            postcode=pc_text,
            distance_m=None if dist != dist else round(dist, 1),
            lsoa_fit=FIT_NAMES[int(self.postcodes.fit[prow])] if prow >= 0 and placed else "none",
            lsoa21_code=str(self.lsoa_codes[lsoa[0]]) if placed else "",
            lsoa21_name=str(self.lsoa_names[lsoa[0]]) if placed else "",
            msoa21_code=val("msoa", "codes"), msoa21_name=val("msoa", "names"),
            lad_code=val("lad", "codes"), lad_name=val("lad", "names"),
            sicbl_code=val("sicbl", "codes"), sicbl_ods=val("sicbl", "ods"), sicbl_name=val("sicbl", "names"),
            icb_code=icb, icb_ods=val("icb", "ods"), icb_name=val("icb", "names"),
            region_code=val("region", "codes"), region_ods=val("region", "ods"), region_name=val("region", "names"),
            trust_ods=self.trusts[trust]["ods"] if placed else "",
            trust_name=self.trusts[trust]["name"] if placed else "",
            icb_trusts=icb_trusts,
            imd_decile=int(self.lsoa_imd_decile[lsoa[0]]) if placed else None,
            vintage=v.id, vintage_valid_from=v.valid_from.isoformat(), vintage_illustrative=v.illustrative,
            vintage_superseded_on=v.superseded_on.isoformat() if v.superseded_on else None, vintage_stale=stale,
        )

    def memory_bytes(self) -> int:
        """Bytes of the arrays (mapped or not) plus the tree's copy of the centroids, when built."""
        total = sum(int(np.asarray(a).nbytes) for a in (
            *vars(self.postcodes).values(), *vars(self.points).values(), self._pt_e, self._pt_n,
            self.lsoa_codes, self.lsoa_names, self.lsoa_imd_decile, self.lsoa_trust))
        total += sum(int(p.nbytes) for h in self.hierarchies for p in h.parents.values())
        if self._tree is not None:
            total += int(self._tree.data.nbytes + self._tree.indices.nbytes) + int(self._tree.size) * 64
        return total


def _f(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _fill(att: ga.Attribution, idx: NDArray[np.intp], sub: ga.Attribution, prior: NDArray[np.uint8]) -> ga.Attribution:
    """Put coordinate results into rows ``idx``; rows with no coordinates keep the postcode's status."""
    cols = {k: np.array(v, copy=True) for k, v in vars(att).items()}
    use = sub.status != Status.NO_LOCATION
    rows = idx[use]
    for k in cols:
        cols[k][rows] = getattr(sub, k)[use]
    return ga.Attribution(**cols)


__all__ = ["GeoIndex", "GeoIndexError", "Placement", "OUTPUT_COLUMNS", "MANIFEST", "Country"]
