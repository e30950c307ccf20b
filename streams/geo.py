"""The geography index seen through the fact builder's two protocols (domain.facts).

``domain.facts`` wants an :class:`~domain.facts.Attributor` (locations -> LSOA, in batches) and a
:class:`~domain.facts.Hierarchy` (LSOA + date -> the areas above it). :class:`IndexGeo` is both,
over one loaded :class:`amb.geo.index.GeoIndex`: ``attribute`` is ONE vectorised index call per
batch, and ``areas`` is a dictionary lookup cached per (LSOA, vintage), so a worker that attributes
thousands of incidents a second pays the numpy set-up once per batch, not once per incident.

The worker and the oracle in the tests use the same adapter, so they agree by construction on
everything but the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from domain.events import Location
from domain.facts import GEO_NOT_IN_HIERARCHY, GEO_OK, GEO_UNMATCHED, Areas
from domain.geo.status import STATUS_NAMES
from domain.metrics import UNKNOWN

Place = tuple[str, str, str, str, str, str, str]
"""(lsoa, msoa, lad, sicbl, icb, region, status): a domain.facts.Geo as a tuple."""

if TYPE_CHECKING:
    from amb.geo.index import GeoIndex


class _Unplaced(dict[str, Place]):
    """status -> the unknown-everywhere place with that status."""

    def __missing__(self, status: str) -> Place:
        place = self[status] = (UNKNOWN,) * 6 + (status,)
        return place


class IndexGeo:
    """Attributor and Hierarchy over a :class:`GeoIndex` (see the module docstring)."""

    def __init__(self, index: GeoIndex) -> None:
        self.index = index
        self._lsoa_pos = {str(code): i for i, code in enumerate(index.lsoa_codes.tolist())}
        self._tables: dict[int, list[Areas | None]] = {}
        self._head_tables: dict[int, list[tuple[str, str, str, str, str, str] | None]] = {}
        self._unplaced: dict[str, Place] = _Unplaced()
        self.calls = 0
        self.locations = 0

    @classmethod
    def load(cls, index_dir: Path) -> IndexGeo:
        from amb.geo.index import GeoIndex

        return cls(GeoIndex(index_dir))

    def warm(self) -> None:
        """Build what the index builds on first use (the nearest-postcode tree, the coordinate
        transformers, ~1.5 s): at start-up, not inside the first batch of events."""
        nan = np.array([np.nan])
        for vi in range(len(self.index.vintages)):
            self._heads(vi)
        self.index.attribute_columns(postcode=[None], easting=np.array([530000.0]), northing=np.array([180000.0]),
                                     lat=nan, lon=nan, n=1)
        self.index.attribute_columns(postcode=["SW1A 1AA"], easting=nan, northing=nan, lat=np.array([51.5]),
                                     lon=np.array([-0.1]), n=1)

    def attribute(self, locations: Sequence[Location], times_ms: Sequence[int]) -> list[tuple[str | None, str]]:
        """One ``(lsoa21 code or None, status name)`` per location, from one index call."""
        self.calls += 1
        self.locations += len(locations)
        if not locations:
            return []
        att = self.index.attribute(list(locations), np.asarray(times_ms, dtype=np.int64))
        codes = self.index.lsoa_codes
        out: list[tuple[str | None, str]] = []
        for lsoa, status in zip(att.lsoa.tolist(), att.status.tolist(), strict=True):
            out.append((str(codes[lsoa]) if lsoa >= 0 else None, STATUS_NAMES[status]))
        return out

    def areas(self, lsoa21: str, at_ms: int) -> Areas | None:
        """The areas of one LSOA in the vintage in force at ``at_ms``; None for an unknown code."""
        if lsoa21 not in self._lsoa_pos:
            return None
        vi = int(self.index.vintages_at([at_ms], 1)[0]) if len(self.index.vintages) > 1 else 0
        return self._areas_at(lsoa21, vi)

    def places(self, postcode: Sequence[str | None], lat: np.ndarray, lon: np.ndarray, easting: np.ndarray,
               northing: np.ndarray, times_ms: np.ndarray) -> list[Place]:
        """``domain.facts.attribute`` of non-empty locations given as columns (NaN = absent), as
        :data:`Place` tuples: one columnar index call and a cached tuple per (LSOA, vintage), for
        the native batch step, which has no Location objects to give."""
        n = len(postcode)
        self.calls += 1
        self.locations += n
        if n == 0:
            return []
        att = self.index.attribute_columns(postcode=postcode, easting=easting, northing=northing, lat=lat, lon=lon,
                                           times_ms=times_ms, n=n)
        multi = len(self.index.vintages) > 1
        vintages = att.vintage.tolist() if multi else None
        heads = self._heads(0)
        unplaced = self._unplaced
        out: list[Place] = []
        for k, (lsoa, status) in enumerate(zip(att.lsoa.tolist(), att.status.tolist(), strict=True)):
            name = STATUS_NAMES[status]
            if lsoa < 0:
                out.append(unplaced[GEO_UNMATCHED if name == GEO_OK else name])
                continue
            head = (self._heads(vintages[k]) if vintages is not None else heads)[lsoa]
            out.append(unplaced[GEO_NOT_IN_HIERARCHY] if head is None else head + (name,))
        return out

    def _heads(self, vi: int) -> list[tuple[str, str, str, str, str, str] | None]:
        """Per LSOA index: (lsoa, msoa, lad, sicbl, icb, region) in vintage ``vi`` (None: not in it)."""
        heads = self._head_tables.get(vi)
        if heads is None:
            codes = [str(c) for c in self.index.lsoa_codes.tolist()]
            heads = self._head_tables[vi] = [
                None if a is None else (c, a.msoa, a.lad, a.sicbl, a.icb, a.region)
                for c, a in zip(codes, self._areas(vi), strict=True)]
        return heads

    def _areas_at(self, lsoa21: str, vi: int) -> Areas | None:
        pos = self._lsoa_pos.get(lsoa21)
        if pos is None:
            return None
        return self._areas(vi)[pos]

    def _areas(self, vi: int) -> list[Areas | None]:
        """Every LSOA's areas in vintage ``vi`` (by LSOA index), built once in one vectorised pass
        per level (a per-LSOA lookup rebuilt the level's code array each time: ~5 ms a new LSOA,
        minutes for a day of England's postcodes)."""
        table = self._tables.get(vi)
        if table is None:
            h = self.index.hierarchies[vi]
            idx = np.arange(len(self.index.lsoa_codes), dtype=np.int32)
            cols = [h.codes(level, idx).tolist() for level in ("msoa", "lad", "sicbl", "icb", "region")]
            table = self._tables[vi] = [Areas(*(str(c) for c in row)) if all(row) else None
                                        for row in zip(*cols, strict=True)]
        return table
