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
from domain.facts import Areas
from domain.geo.status import STATUS_NAMES

if TYPE_CHECKING:
    from amb.geo.index import GeoIndex


class IndexGeo:
    """Attributor and Hierarchy over a :class:`GeoIndex` (see the module docstring)."""

    def __init__(self, index: GeoIndex) -> None:
        self.index = index
        self._lsoa_pos = {str(code): i for i, code in enumerate(index.lsoa_codes.tolist())}
        self._areas: dict[tuple[int, int], Areas | None] = {}
        self.calls = 0
        self.locations = 0

    @classmethod
    def load(cls, index_dir: Path) -> IndexGeo:
        from amb.geo.index import GeoIndex

        return cls(GeoIndex(index_dir))

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
        pos = self._lsoa_pos.get(lsoa21)
        if pos is None:
            return None
        vi = int(self.index.vintages_at([at_ms], 1)[0]) if len(self.index.vintages) > 1 else 0
        key = (pos, vi)
        try:
            return self._areas[key]
        except KeyError:
            pass
        h = self.index.hierarchies[vi]
        idx = np.array([pos], dtype=np.int32)
        codes = [str(h.codes(level, idx)[0]) for level in ("msoa", "lad", "sicbl", "icb", "region")]
        found = None if not all(codes) else Areas(*codes)
        self._areas[key] = found
        return found
