"""Geography versions: which boundaries were in force when an incident happened.

A vintage is a set of LSOA 2021 -> MSOA / LAD / SICBL / ICB / region tables with a ``valid_from``
date. An incident takes the vintage in force on its clock-start date in Europe/London (a vintage
starts at local midnight, as ICBs do). Restating to another vintage is a query-time choice: the
LSOA stays, only the tables change.

A new vintage is data: either a full LSOA table, or a base vintage plus a remap of whole ICBs
(mergers) and/or single SICBLs (the SICBL moves that split an ICB). :func:`remap` derives it; no
code changes when NHS England redraws ICBs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

LONDON: Final = ZoneInfo("Europe/London")
LEVELS: Final = ("msoa", "lad", "sicbl", "icb", "region")
#: Columns of a full LSOA table (the shipped lsoa21_geography.csv).
TABLE_COLUMNS: Final = (
    "lsoa21_code", "msoa21_code", "msoa21_name", "lad_code", "lad_name", "sicbl_code", "sicbl_ods",
    "sicbl_name", "icb_code", "icb_ods", "icb_name", "region_code", "region_ods", "region_name",
)


class GeographyDataError(ValueError):
    """Reference data break an invariant (an LSOA without an ICB, a SICBL in two ICBs, ...)."""


@dataclass(frozen=True)
class Vintage:
    """One geography version. ``superseded_on`` marks a known end that no shipped data replaces."""

    id: str
    valid_from: date
    illustrative: bool = False
    superseded_on: date | None = None
    note: str = ""


@dataclass(frozen=True)
class Level:
    """The code list of one level (e.g. the 42 ICBs of a vintage), index-aligned."""

    codes: tuple[str, ...]
    ods: tuple[str, ...]
    names: tuple[str, ...]

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.codes)}


@dataclass(frozen=True)
class Hierarchy:
    """One vintage's tables: for each LSOA (index-aligned with the LSOA list) an index per level."""

    vintage: Vintage
    parents: Mapping[str, NDArray[np.int32]]
    levels: Mapping[str, Level]

    def codes(self, level: str, lsoa: NDArray[np.int32]) -> NDArray[np.str_]:
        """Codes at ``level`` for LSOA indexes; ``''`` where the index is -1 (unplaced)."""
        return _lookup(np.array(self.levels[level].codes + ("",), dtype=np.str_), self.parents[level], lsoa)

    def attr(self, level: str, what: str, lsoa: NDArray[np.int32]) -> NDArray[np.str_]:
        """``what`` in (codes, ods, names) at ``level`` for LSOA indexes."""
        values: tuple[str, ...] = getattr(self.levels[level], what)
        return _lookup(np.array(values + ("",), dtype=np.str_), self.parents[level], lsoa)


def _lookup(table: NDArray[np.str_], parent: NDArray[np.int32], lsoa: NDArray[np.int32]) -> NDArray[np.str_]:
    lsoa = np.asarray(lsoa, dtype=np.int64)
    idx = np.where(lsoa >= 0, parent[np.clip(lsoa, 0, None)], len(table) - 1)
    return table[idx]


def local_midnight_ms(d: date) -> int:
    """Epoch milliseconds of 00:00 Europe/London on ``d``."""
    return int(datetime(d.year, d.month, d.day, tzinfo=LONDON).timestamp() * 1000)


def local_date(ms: int) -> date:
    """The Europe/London calendar date of an epoch-millisecond instant."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(LONDON).date()


def starts_ms(vintages: Sequence[Vintage]) -> NDArray[np.int64]:
    """Start instants of vintages, which must be in ``valid_from`` order."""
    starts = np.array([local_midnight_ms(v.valid_from) for v in vintages], dtype=np.int64)
    if len(starts) == 0 or np.any(np.diff(starts) <= 0):
        raise GeographyDataError("vintages must be non-empty with strictly increasing valid_from")
    return starts


def select(starts: NDArray[np.int64], times_ms: NDArray[np.int64] | Sequence[int] | None,
           n: int) -> NDArray[np.int8]:
    """Vintage index in force at each time. Before the first vintage the first is used (clamped);
    ``None`` (no time) means the newest vintage."""
    if times_ms is None:
        return np.full(n, len(starts) - 1, dtype=np.int8)
    t = np.asarray(times_ms, dtype=np.int64)
    return np.clip(np.searchsorted(starts, t, side="right") - 1, 0, None).astype(np.int8)


def select_date(vintages: Sequence[Vintage], on: date | None) -> int:
    """Index of the vintage in force on local date ``on`` (None = newest)."""
    if on is None:
        return len(vintages) - 1
    idx = 0
    for i, v in enumerate(vintages):
        if v.valid_from <= on:
            idx = i
    return idx


def _level(codes: list[str], ods: list[str], names: list[str]) -> Level:
    return Level(tuple(codes), tuple(ods), tuple(names))


def from_rows(vintage: Vintage, lsoa_codes: Sequence[str], rows: Iterable[Mapping[str, str]]) -> Hierarchy:
    """Build a vintage from full-table rows (``TABLE_COLUMNS``), checking the nesting rules:
    every LSOA exactly once, each SICBL in one ICB, each ICB in one region."""
    pos = {c: i for i, c in enumerate(lsoa_codes)}
    n = len(lsoa_codes)
    parents = {lv: np.full(n, -1, dtype=np.int32) for lv in LEVELS}
    tables: dict[str, dict[str, tuple[int, str, str]]] = {lv: {} for lv in LEVELS}
    up: dict[str, dict[str, str]] = {"sicbl": {}, "icb": {}}
    for row in rows:
        missing = [c for c in TABLE_COLUMNS if not row.get(c, "")]
        if missing:
            raise GeographyDataError(f"{vintage.id}: LSOA {row.get('lsoa21_code')!r} has blank {missing}")
        i = pos.get(row["lsoa21_code"])
        if i is None:
            raise GeographyDataError(f"{vintage.id}: LSOA {row['lsoa21_code']} is not in the LSOA list")
        if parents["icb"][i] >= 0:
            raise GeographyDataError(f"{vintage.id}: LSOA {row['lsoa21_code']} appears twice")
        for lv, code, ods, name in (
            ("msoa", row["msoa21_code"], "", row["msoa21_name"]),
            ("lad", row["lad_code"], "", row["lad_name"]),
            ("sicbl", row["sicbl_code"], row["sicbl_ods"], row["sicbl_name"]),
            ("icb", row["icb_code"], row["icb_ods"], row["icb_name"]),
            ("region", row["region_code"], row["region_ods"], row["region_name"]),
        ):
            entry = tables[lv].setdefault(code, (len(tables[lv]), ods, name))
            parents[lv][i] = entry[0]
        for child, parent in (("sicbl", "icb"), ("icb", "region")):
            ckey = row[f"{child}_code"]
            pkey = row[f"{parent}_code"]
            if up[child].setdefault(ckey, pkey) != pkey:
                raise GeographyDataError(f"{vintage.id}: {child} {ckey} lies in two {parent}s "
                                         f"({up[child][ckey]}, {pkey})")
    unplaced = np.flatnonzero(parents["icb"] < 0)
    if len(unplaced):
        raise GeographyDataError(f"{vintage.id}: {len(unplaced)} LSOAs have no row, e.g. {lsoa_codes[unplaced[0]]}")
    levels = {}
    for lv in LEVELS:
        items = sorted(tables[lv].items(), key=lambda kv: kv[1][0])
        levels[lv] = _level([k for k, _ in items], [v[1] for _, v in items], [v[2] for _, v in items])
    return Hierarchy(vintage, parents, levels)


REMAP_COLUMNS: Final = ("new_icb_code", "new_icb_ods", "new_icb_name", "new_region_code")


def remap(base: Hierarchy, vintage: Vintage, rows: Iterable[Mapping[str, str]]) -> Hierarchy:
    """Derive a vintage from ``base`` by moving whole ICBs (``old_icb_code``) or single SICBLs
    (``sicbl_code``; wins over an ICB row) into new ICBs. MSOA, LAD and SICBL lists are kept;
    ICBs not mentioned keep their code. ``new_region_code`` must be a region of the base."""
    icb_idx = base.levels["icb"].index()
    sicbl_idx = base.levels["sicbl"].index()
    region_idx = base.levels["region"].index()
    by_icb: dict[int, Mapping[str, str]] = {}
    by_sicbl: dict[int, Mapping[str, str]] = {}
    for row in rows:
        for c in REMAP_COLUMNS:
            if c != "new_icb_ods" and not row.get(c, ""):
                raise GeographyDataError(f"{vintage.id}: remap row {dict(row)} has blank {c}")
        if row["new_region_code"] not in region_idx:
            raise GeographyDataError(f"{vintage.id}: unknown region {row['new_region_code']}")
        if row.get("sicbl_code", ""):
            if row["sicbl_code"] not in sicbl_idx:
                raise GeographyDataError(f"{vintage.id}: unknown SICBL {row['sicbl_code']}")
            by_sicbl[sicbl_idx[row["sicbl_code"]]] = row
        elif row.get("old_icb_code", ""):
            if row["old_icb_code"] not in icb_idx:
                raise GeographyDataError(f"{vintage.id}: unknown ICB {row['old_icb_code']}")
            by_icb[icb_idx[row["old_icb_code"]]] = row
        else:
            raise GeographyDataError(f"{vintage.id}: remap row {dict(row)} names neither sicbl_code nor old_icb_code")

    # Per SICBL: its new (icb code, ods, name, region index).
    b_icb, b_lv = base.parents["icb"], base.levels
    sicbl_parent = np.full(len(b_lv["sicbl"].codes), -1, dtype=np.int64)
    sicbl_parent[base.parents["sicbl"]] = b_icb
    icb_region = np.full(len(b_lv["icb"].codes), -1, dtype=np.int64)
    icb_region[b_icb] = base.parents["region"]
    new_icbs: dict[str, tuple[int, str, str, int]] = {}
    sicbl_new_icb = np.empty(len(sicbl_parent), dtype=np.int32)
    for s, old in enumerate(sicbl_parent):
        moved = by_sicbl.get(s) or by_icb.get(int(old))
        if moved is None:
            code, ods, name, reg = (b_lv["icb"].codes[old], b_lv["icb"].ods[old], b_lv["icb"].names[old],
                                    int(icb_region[old]))
        else:
            code, ods, name, reg = (moved["new_icb_code"], moved.get("new_icb_ods", ""), moved["new_icb_name"],
                                    region_idx[moved["new_region_code"]])
        entry = new_icbs.setdefault(code, (len(new_icbs), ods, name, reg))
        if entry[3] != reg:
            raise GeographyDataError(f"{vintage.id}: ICB {code} given two regions")
        sicbl_new_icb[s] = entry[0]
    items = sorted(new_icbs.items(), key=lambda kv: kv[1][0])
    icb_level = _level([k for k, _ in items], [v[1] for _, v in items], [v[2] for _, v in items])
    icb_of_lsoa = sicbl_new_icb[base.parents["sicbl"]]
    region_of_icb = np.array([v[3] for _, v in items], dtype=np.int32)
    parents = dict(base.parents)
    parents["icb"] = icb_of_lsoa.astype(np.int32)
    parents["region"] = region_of_icb[icb_of_lsoa]
    levels = dict(base.levels)
    levels["icb"] = icb_level
    return Hierarchy(vintage, parents, levels)
