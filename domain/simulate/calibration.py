"""Calibration tables of the simulator: every number the generator draws from, with its source.

Sources are the national reference figures in docs/domain.md (NHS England AmbSYS / Ambulance
Quality Indicators 2024-25, handover figures for October 2024, NHS 111 for 2024-25). Where
domain.md gives no figure, the value is a plausible choice and the table says so. Tests in
tests/test_simulate.py check that one simulated day reproduces the headline figures.

Daily incidents per trust (A7, all incidents)
=============================================
England ~24,600/day; London ~3,700/day and Isle of Wight ~90/day are fixed from domain.md. The
other 20,810/day are shared by LSOA 2021 count (LSOAs hold ~1,500 people each, so the count is a
population proxy), from data/geo/ambulance_trust_lsoa21.csv: 0.7258 incidents per LSOA per day.

=====  ======  ==========  ==============  ===========
trust  LSOAs   incidents   hear-and-treat  111 calls
=====  ======  ==========  ==============  ===========
RX6    1,682    1,221       8%             (all trusts:
RX7    4,588    3,330      15%              54,800/day
RX8    3,145    2,283      15%              shared like
RX9    3,036    2,203      13%              incidents)
RYA    3,574    2,594      21%
RYC    3,758    2,727      14%
RRU    4,994    3,700      21%
RYD    2,960    2,148      15%
RYE    2,518    1,828      16%
RYF    3,411    2,476      14%
R1F       89       90       8%
total 33,755   24,600      15.8% (weighted)
=====  ======  ==========  ==============  ===========

Hear-and-treat runs from ~8% (North East, Isle of Wight) to ~21% (West Midlands, London), per
domain.md; the middle values are chosen so the volume-weighted England share is 15.8%. The rest of
each trust's incidents split like England's face-to-face mix: see and treat 29.6/84.2, conveyed to
ED 49.9/84.2, conveyed elsewhere 4.7/84.2, so England comes out at 15.8/29.6/49.9/4.7.

Category (final, after any re-triage): C1 12%, C2 60%, C3 22%, C4 6% (a plausible choice; AmbSYS
publishes counts by category but domain.md does not). Hear and treat is rarer for urgent calls:
the relative propensity by category is C1 0.1, C2 0.6, C3 2.0, C4 3.0, scaled per trust so the
trust's hear-and-treat share is exactly the table's.

Response times (clock start -> first arrival), lognormal fitted to a mean and a 90th centile
(a lognormal needs q90/mean < 2.27, so the published 90th centiles are trimmed where needed):

====  ==========  ===============  =========================================
cat   mean        90th centile     source
====  ==========  ===============  =========================================
C1    8 min 40 s  15 min 25 s      domain.md (December 2024 mean)
C2    47 min 26 s 1 h 42 min       domain.md mean; 90th plausible (Dec 2024)
C3    2 h 30 min  5 h 30 min       plausible winter figures
C4    3 h         6 h 30 min       plausible winter figures
====  ==========  ===============  =========================================

Handover (arrival at hospital -> handover), conveyed-to-ED incidents only (380,000 a month ~
12,500 a day ~ 49.9% of 24,600): a piecewise-linear CDF through domain.md's October 2024 shares,
over 15 min 262k/380k = 69.0%, over 30 min 127k/380k = 33.4%, over 60 min 54k/380k = 14.2%, with
a tail to 8 hours tuned so hours lost come to ~0.37 h per handover (~1.7 million a year against
domain.md's ~1.6 million). Hospitals differ: a Gaussian copula ranks handovers by a per-site
pressure and the hour of day, which keeps the England distribution exact while some sites are
persistently worse than others.

Demand curve: share of a day's incidents by local (Europe/London) hour, a weekday factor and a
month factor, all plausible shapes (night trough ~04:00, late-morning peak, Monday busiest,
December ~6% above average: 806,405 incidents in December 2024 = 26,013/day).
"""

from __future__ import annotations

import math
from typing import Final

from domain.events import TRUSTS

ENGLAND_DAILY_INCIDENTS: Final = 24_600

TRUST_LSOA21: Final[dict[str, int]] = {
    "RX6": 1682, "RX7": 4588, "RX8": 3145, "RX9": 3036, "RYA": 3574, "RYC": 3758,
    "RRU": 4994, "RYD": 2960, "RYE": 2518, "RYF": 3411, "R1F": 89,
}

TRUST_DAILY_INCIDENTS: Final[dict[str, int]] = {
    "RX6": 1221, "RX7": 3330, "RX8": 2283, "RX9": 2203, "RYA": 2594, "RYC": 2727,
    "RRU": 3700, "RYD": 2148, "RYE": 1828, "RYF": 2476, "R1F": 90,
}

TRUST_HEAR_AND_TREAT: Final[dict[str, float]] = {
    "RX6": 0.08, "RX7": 0.15, "RX8": 0.15, "RX9": 0.13, "RYA": 0.21, "RYC": 0.14,
    "RRU": 0.21, "RYD": 0.15, "RYE": 0.16, "RYF": 0.14, "R1F": 0.08,
}

# England shares of all incidents (A17, A55, A53, A54), domain.md.
ENGLAND_DISPOSITION_SHARES: Final = (0.158, 0.296, 0.499, 0.047)
# Face-to-face split (see and treat, conveyed ED, conveyed elsewhere), same for every trust.
FACE_TO_FACE_SPLIT: Final = (0.296 / 0.842, 0.499 / 0.842, 0.047 / 0.842)

CATEGORY_MIX: Final = (0.12, 0.60, 0.22, 0.06)
HEAR_AND_TREAT_PROPENSITY: Final = (0.1, 0.6, 2.0, 3.0)

# (mean seconds, 90th centile seconds) per category C1..C4.
RESPONSE_TARGETS: Final = ((520.0, 925.0), (2846.0, 6120.0), (9000.0, 19800.0), (10800.0, 23400.0))
RESPONSE_MIN_S: Final = 45.0
RESPONSE_MAX_S: Final = 24 * 3600.0

# Handover minutes CDF knots (minutes, cumulative share).
HANDOVER_KNOTS_MIN: Final = (3.0, 8.0, 12.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 480.0)
HANDOVER_KNOTS_CDF: Final = (0.0, 0.10, 0.22, 0.31, 0.46, 0.666, 0.79, 0.858, 0.93, 0.962, 0.985, 0.996, 1.0)
# October 2024 shares over 15, 30 and 60 minutes (262k, 127k, 54k of 380k).
HANDOVER_OVER_15_30_60: Final = (262 / 380, 127 / 380, 54 / 380)
# Copula weights: how much site pressure and hour of day move a handover up the distribution.
HANDOVER_SITE_WEIGHT: Final = 0.6
HANDOVER_HOUR_WEIGHT: Final = 0.3

# Share of a day's incidents in each local hour 00..23 (normalised at import).
_HOUR_RAW: Final = (
    3.6, 3.2, 2.8, 2.5, 2.3, 2.3, 2.6, 3.2, 4.0, 4.8, 5.3, 5.5,
    5.5, 5.4, 5.3, 5.2, 5.1, 5.0, 4.9, 4.8, 4.6, 4.4, 4.1, 3.8,
)
HOUR_SHARE: Final[tuple[float, ...]] = tuple(h / sum(_HOUR_RAW) for h in _HOUR_RAW)
_WEEKDAY_RAW: Final = (1.06, 1.00, 0.98, 0.97, 1.00, 1.00, 0.99)  # Monday..Sunday
WEEKDAY_FACTOR: Final[tuple[float, ...]] = tuple(w * 7 / sum(_WEEKDAY_RAW) for w in _WEEKDAY_RAW)
_MONTH_RAW: Final = (1.03, 0.98, 0.98, 0.97, 0.98, 0.98, 1.01, 0.98, 0.97, 1.00, 1.02, 1.06)
MONTH_FACTOR: Final[tuple[float, ...]] = tuple(m * 12 / sum(_MONTH_RAW) for m in _MONTH_RAW)

# NHS 111: ~20 million calls in 2024-25, ~12% ending in an ambulance disposition (domain.md).
ENGLAND_DAILY_111_CALLS: Final = 20_000_000 / 365
CALL_111_AMBULANCE_SHARE: Final = 0.12
# Share of incidents that arrive as a 111 transfer (source 111, linked to their 111 call): a
# plausible 16%, i.e. ~60% of 111 ambulance dispositions become an incident.
SOURCE_111_SHARE: Final = 0.16

# Location forms an incident or 111 call is sent with: postcode, lat/lon, easting/northing,
# postcode + lat/lon (a plausible mix: most CAD exports carry a postcode).
LOCATION_FORM_MIX: Final = (0.65, 0.20, 0.08, 0.07)

# Conveyed patients go to a hospital in the incident's ICB, except this share across a border
# (to another ICB the trust serves; where it serves one ICB, they stay).
CROSS_BORDER_SHARE: Final = 0.08
# Synthetic ED sites: one per ~200 LSOAs (England has ~170 type 1 EDs for 33,755 LSOAs).
LSOA_PER_ED_SITE: Final = 200
# The Isle of Wight's patients go to the island's own hospital, which no other trust uses.
ISLAND_SITE: Final = "SYNQRLIW"

# Lifecycle timings: (median seconds, lognormal sigma); plausible values.
HEAR_AND_TREAT_CLOSE: Final = (30 * 60.0, 0.7)   # clock start -> hear-and-treat disposition
ON_SCENE_SEE_AND_TREAT: Final = (55 * 60.0, 0.45)
ON_SCENE_CONVEYED: Final = (38 * 60.0, 0.40)
TRAVEL_TO_HOSPITAL: Final = (17 * 60.0, 0.50)
CLEAR_AFTER_HANDOVER: Final = (13 * 60.0, 0.45)
CALL_111_LEAD: Final = (12 * 60.0, 0.6)           # 111 call -> ambulance incident clock start
HANDOVER_EVENT_COUNTS: Final = (0.3, 0.3, 0.4)   # 1, 2 or 3 handover events per handover
DELIVERY_LAG_MEAN_S: Final = 4.0                 # export delay of an on-time event

# Deprivation: demand per LSOA rises with deprivation; IMD decile 1 (most deprived) x1.9 .. 10 x1.0.
IMD_DEMAND_SLOPE: Final = 0.1


def lognormal_fit(mean: float, q90: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and 90th centile (the smaller-sigma root)."""
    d = math.log(q90 / mean)
    z = 1.2815515655446004
    disc = z * z - 2 * d
    if disc < 0:
        raise ValueError(f"no lognormal has mean {mean} and 90th centile {q90} (q90/mean > 2.27)")
    sigma = z - math.sqrt(disc)
    return math.log(mean) - sigma * sigma / 2, sigma


RESPONSE_LOGNORMAL: Final[tuple[tuple[float, float], ...]] = tuple(
    lognormal_fit(m, q) for m, q in RESPONSE_TARGETS
)


def hear_and_treat_by_category(trust: str) -> tuple[float, float, float, float]:
    """P(hear and treat | category) for a trust, so the trust's overall share is its table value."""
    share = TRUST_HEAR_AND_TREAT[trust]
    norm = sum(p * m for p, m in zip(CATEGORY_MIX, HEAR_AND_TREAT_PROPENSITY, strict=True))
    a, b, c, d = (min(1.0, share * m / norm) for m in HEAR_AND_TREAT_PROPENSITY)
    return a, b, c, d


def daily_111_calls(trust: str) -> float:
    """A trust's 111 calls a day: England's, shared like incidents."""
    return ENGLAND_DAILY_111_CALLS * TRUST_DAILY_INCIDENTS[trust] / ENGLAND_DAILY_INCIDENTS


assert tuple(TRUST_DAILY_INCIDENTS) == TRUSTS
assert sum(TRUST_DAILY_INCIDENTS.values()) == ENGLAND_DAILY_INCIDENTS
