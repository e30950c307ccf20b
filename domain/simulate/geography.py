"""Where simulated incidents happen and where patients are taken.

``LocationPool`` holds real postcodes (with their coordinates and LSOA 2021) grouped by LSOA, and
each LSOA's trust, ICB and demand weight; the shell fills it from the geography index. ``SitePlan``
is the hospitals: no open list of ED site codes ships with the project, so sites are clearly
synthetic (letters and digits, as ODS site codes are), ``SYN<ICB ODS><nn>`` for emergency departments (one per ~200 LSOAs of the ICB; the
pool should hold the first geography vintage, so site codes do not change with ICB mergers) and
``SYN<ICB ODS>U<n>`` for other destinations (UTC, SDEC, mental health), plus the Isle of Wight's
own ``SYNQRLIW``. All codes are 8 characters (ICB ODS codes are 3). E.g. ``SYNQOP03`` is the third ED in Greater Manchester.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from domain.simulate import calibration as cal

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Str = npt.NDArray[np.str_]

# Form codes for a location, in LOCATION_FORM_MIX order, plus the unplaceable kinds.
FORM_POSTCODE: Final = 0
FORM_LATLON: Final = 1
FORM_EN: Final = 2
FORM_POSTCODE_LATLON: Final = 3
FORM_UNKNOWN_POSTCODE: Final = 4
FORM_SEA: Final = 5
FORM_SCOTTISH: Final = 6

# Postcodes no index can place in England: NHS pseudo-postcodes ("no fixed abode" etc.) and
# well-formed ones in the unused QQ area.
UNKNOWN_POSTCODES: Final = ("ZZ99 3VZ", "ZZ99 3CZ", "ZZ99 3WZ", "QQ1 1QQ", "QQ9 9QQ", "QQ4 2QZ")
# Real Scottish postcodes (Code-Point Open): outside every English trust.
SCOTTISH_POSTCODES: Final = ("EH1 1RP", "EH32 9FY", "G1 1XJ", "G61 1JQ", "IV1 1QU", "DD1 1SW", "DD3 9QU")
# Points at sea (lat, lon): North Sea, English Channel, Irish Sea; jittered by up to 0.1 degree.
SEA_POINTS: Final = ((54.30, 1.80), (50.25, -1.00), (53.75, -4.20))


@dataclass(frozen=True)
class TrustLocations:
    """One trust's slice of the pool, ready to sample."""

    trust: str
    lsoa_index: I64          # indices into the pool's LSOA arrays
    cumulative_weight: F64   # normalised, last element 1.0
    icb_index: I64           # distinct ICB indices this trust serves (pool.icb_codes)

    def sample_lsoa(self, rng: np.random.Generator, n: int) -> I64:
        """LSOAs, weighted by demand."""
        pick = np.searchsorted(self.cumulative_weight, rng.random(n), side="right")
        return self.lsoa_index[np.minimum(pick, len(self.lsoa_index) - 1)]


@dataclass(frozen=True)
class LocationPool:
    """Real postcodes by LSOA, and each LSOA's trust, ICB and demand weight.

    Postcode arrays are sorted by LSOA: the postcodes of LSOA ``i`` are rows
    ``lsoa_start[i] : lsoa_start[i] + lsoa_count[i]``.
    """

    postcode: Str
    easting: I64
    northing: I64
    lat: F64
    lon: F64
    lsoa_code: Str
    lsoa_trust: Str
    lsoa_icb: I64            # index into icb_codes
    lsoa_weight: F64
    lsoa_start: I64
    lsoa_count: I64
    icb_codes: Str           # ICB ODS codes (Q..), sorted
    _trusts: dict[str, TrustLocations] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        postcode: Str,
        easting: npt.ArrayLike,
        northing: npt.ArrayLike,
        lat: npt.ArrayLike,
        lon: npt.ArrayLike,
        postcode_lsoa: Str,
        lsoa_code: Str,
        lsoa_trust: Str,
        lsoa_icb: Str,
        lsoa_weight: npt.ArrayLike | None = None,
    ) -> LocationPool:
        """Group postcodes (each with its LSOA 2021 code) under an LSOA table (code, trust, ICB ODS).

        Postcodes in LSOAs outside the table, and LSOAs without postcodes, are left out.
        """
        lsoa_code = np.asarray(lsoa_code, dtype=np.str_)
        order = np.argsort(lsoa_code, kind="stable")
        codes = lsoa_code[order]
        trust = np.asarray(lsoa_trust, dtype=np.str_)[order]
        icb = np.asarray(lsoa_icb, dtype=np.str_)[order]
        weight = (np.ones(len(codes)) if lsoa_weight is None else np.asarray(lsoa_weight, dtype=np.float64)[order])
        pc_lsoa = np.asarray(postcode_lsoa, dtype=np.str_)
        pos = np.searchsorted(codes, pc_lsoa)
        pos_c = np.minimum(pos, max(len(codes) - 1, 0))
        known = (pos < len(codes)) & (codes[pos_c] == pc_lsoa) if len(codes) else np.zeros(len(pc_lsoa), bool)
        rows = np.flatnonzero(known)
        rows = rows[np.argsort(pos_c[rows], kind="stable")]
        lsoa_of_row = pos_c[rows]
        count = np.bincount(lsoa_of_row, minlength=len(codes)).astype(np.int64)
        keep = count > 0
        count = count[keep]
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        icb_codes, icb_idx = np.unique(icb[keep], return_inverse=True)
        return cls(
            postcode=np.asarray(postcode, dtype=np.str_)[rows],
            easting=np.asarray(easting, dtype=np.float64)[rows].round().astype(np.int64),
            northing=np.asarray(northing, dtype=np.float64)[rows].round().astype(np.int64),
            lat=np.asarray(lat, dtype=np.float64)[rows],
            lon=np.asarray(lon, dtype=np.float64)[rows],
            lsoa_code=codes[keep],
            lsoa_trust=trust[keep],
            lsoa_icb=icb_idx.astype(np.int64),
            lsoa_weight=weight[keep],
            lsoa_start=start,
            lsoa_count=count,
            icb_codes=icb_codes.astype(np.str_),
        )

    def trust(self, trust: str) -> TrustLocations:
        """The trust's LSOAs (cached); ValueError if the pool has none for it."""
        got = self._trusts.get(trust)
        if got is None:
            idx = np.flatnonzero(self.lsoa_trust == trust).astype(np.int64)
            if len(idx) == 0:
                raise ValueError(f"the location pool has no postcodes for trust {trust}")
            w = self.lsoa_weight[idx]
            cw = np.cumsum(w) / w.sum()
            cw[-1] = 1.0
            got = TrustLocations(trust, idx, cw, np.unique(self.lsoa_icb[idx]))
            self._trusts[trust] = got
        return got

    def sample_postcode(self, rng: np.random.Generator, lsoa: I64) -> I64:
        """A postcode row uniformly within each given LSOA."""
        return self.lsoa_start[lsoa] + (rng.random(len(lsoa)) * self.lsoa_count[lsoa]).astype(np.int64)

    @property
    def trusts(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.lsoa_trust.tolist())))


def imd_weight(decile: npt.ArrayLike) -> F64:
    """Demand weight of an LSOA from its IMD decile (1 most deprived: x1.9; 10: x1.0)."""
    d = np.asarray(decile, dtype=np.float64)
    return 1.0 + cal.IMD_DEMAND_SLOPE * (10.0 - d)


@dataclass(frozen=True)
class SitePlan:
    """Synthetic hospital sites per ICB, with a per-site handover pressure (standard normal)."""

    ed_code: Str
    ed_pressure: F64
    ed_start: I64        # per ICB (pool.icb_codes order)
    ed_count: I64
    other_code: Str
    other_start: I64
    other_count: I64
    island_site: int     # index into ed_code of the Isle of Wight's own site

    @classmethod
    def for_pool(cls, pool: LocationPool, seed: int) -> SitePlan:
        """Sites for every ICB in the pool; the pool's LSOAs per ICB set how many EDs each has."""
        lsoa_per_icb = np.bincount(pool.lsoa_icb, minlength=len(pool.icb_codes))
        ed: list[str] = []
        other: list[str] = []
        ed_start: list[int] = []
        ed_count: list[int] = []
        o_start: list[int] = []
        o_count: list[int] = []
        for icb in pool.icb_codes.tolist():
            if len(icb) != 3:
                raise ValueError(f"ICB ODS code {icb!r} is not 3 characters: site codes would not line up")
            n = max(1, round(int(lsoa_per_icb[len(ed_start)]) / cal.LSOA_PER_ED_SITE))
            ed_start.append(len(ed))
            ed_count.append(n)
            ed.extend(f"SYN{icb}{k:02d}" for k in range(1, n + 1))
            m = max(1, n // 3)
            o_start.append(len(other))
            o_count.append(m)
            other.extend(f"SYN{icb}U{k}" for k in range(1, m + 1))
        island = len(ed)
        ed.append(cal.ISLAND_SITE)
        rng = np.random.default_rng([seed, 0x5175])
        return cls(
            ed_code=np.array(ed, dtype=np.str_),
            ed_pressure=rng.standard_normal(len(ed)),
            ed_start=np.array(ed_start, dtype=np.int64),
            ed_count=np.array(ed_count, dtype=np.int64),
            other_code=np.array(other, dtype=np.str_),
            other_start=np.array(o_start, dtype=np.int64),
            other_count=np.array(o_count, dtype=np.int64),
            island_site=island,
        )

    def destination_icb(self, rng: np.random.Generator, own_icb: I64, served: I64) -> I64:
        """The ICB a patient is taken to: their own, or another the trust serves (cross border)."""
        icb = own_icb.copy()
        if len(served) > 1:
            cross = np.flatnonzero(rng.random(len(icb)) < cal.CROSS_BORDER_SHARE)
            pick = served[rng.integers(0, len(served), len(cross))]
            same = pick == icb[cross]
            pick[same] = served[(np.searchsorted(served, pick[same]) + 1) % len(served)]
            icb[cross] = pick
        return icb

    def ed_site(self, rng: np.random.Generator, icb: I64) -> I64:
        return self.ed_start[icb] + (rng.random(len(icb)) * self.ed_count[icb]).astype(np.int64)

    def other_site(self, rng: np.random.Generator, icb: I64) -> I64:
        return self.other_start[icb] + (rng.random(len(icb)) * self.other_count[icb]).astype(np.int64)
