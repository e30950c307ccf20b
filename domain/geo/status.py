"""Why a location was or was not placed in an English LSOA.

Every attribution row carries one status code (uint8). Nothing unplaceable is dropped or given a
silent default: the stream worker charges such an incident to its trust with `unknown` geography
(empty codes) and counts it by status in the data-quality figures.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

import numpy as np
from numpy.typing import NDArray


class Status(IntEnum):
    """Outcome of placing one location. Values are stable: they are stored in indexes and tables."""

    OK = 0
    #: A postcode that has been terminated; placed at the LSOA it last had (ONS keeps it).
    TERMINATED_POSTCODE = 1
    NO_LOCATION = 2
    INVALID_POSTCODE = 3
    UNKNOWN_POSTCODE = 4
    #: A live postcode without a grid reference (PO boxes, some large users): no place to charge.
    NON_GEOGRAPHIC_POSTCODE = 5
    OUTSIDE_ENGLAND = 6
    INVALID_COORDINATES = 7
    TOO_FAR_FROM_POSTCODE = 8


#: Statuses whose rows carry an LSOA (and so the whole hierarchy).
PLACED: Final = frozenset({Status.OK, Status.TERMINATED_POSTCODE})

STATUS_NAMES: Final[tuple[str, ...]] = tuple(s.name.lower() for s in Status)

_REASONS: Final[dict[Status, str]] = {
    Status.OK: "ok",
    Status.TERMINATED_POSTCODE: "terminated postcode, placed at its last known LSOA",
    Status.NO_LOCATION: "no postcode, easting/northing or lat/lon given",
    Status.INVALID_POSTCODE: "not a well-formed UK postcode",
    Status.UNKNOWN_POSTCODE: "well-formed postcode not in ONS May 2022 or Code-Point Open",
    Status.NON_GEOGRAPHIC_POSTCODE: "postcode has no grid reference (non-geographic)",
    Status.OUTSIDE_ENGLAND: "outside England",
    Status.INVALID_COORDINATES: "coordinates out of range",
    Status.TOO_FAR_FROM_POSTCODE: "no postcode centroid within the distance limit",
}


class Country(IntEnum):
    """Country of a postcode, as far as the sources say."""

    UNKNOWN = 0
    ENGLAND = 1
    WALES = 2
    SCOTLAND = 3
    NORTHERN_IRELAND = 4
    CHANNEL_ISLANDS = 5
    ISLE_OF_MAN = 6


COUNTRY_NAMES: Final[tuple[str, ...]] = (
    "unknown", "England", "Wales", "Scotland", "Northern Ireland", "the Channel Islands", "the Isle of Man",
)


class Fit(IntEnum):
    """How a postcode's LSOA 2021 was derived (quality of the placement)."""

    NONE = 0
    #: The postcode's LSOA 2011 maps to exactly one LSOA 2021 (unchanged or merged).
    EXACT = 1
    #: The LSOA 2011 was split in 2021; the best-fit (largest area) LSOA 2021 is used. ICB still exact.
    BEST_FIT = 2
    #: Postcode newer than the ONS May 2022 lookup: LSOA of the nearest older postcode centroid.
    NEAREST = 3


FIT_NAMES: Final[tuple[str, ...]] = ("none", "exact", "best_fit", "nearest_postcode")


def status_name(code: int) -> str:
    return STATUS_NAMES[code]


def status_from_name(name: str) -> Status:
    """`ok` / `outside_england` ... -> Status; ValueError on an unknown name."""
    try:
        return Status[name.upper()]
    except KeyError:
        raise ValueError(f"unknown geography status {name!r}; expected one of {', '.join(STATUS_NAMES)}") from None


def placed_mask(status: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """True where the row has an LSOA."""
    return status <= Status.TERMINATED_POSTCODE


def reason(code: int, country: int = Country.UNKNOWN, distance_m: float = float("nan"),
           max_distance_m: float = float("nan")) -> str:
    """One-line human reason for a status; names the country or the distance where known."""
    st = Status(code)
    if st == Status.OUTSIDE_ENGLAND and country not in (Country.UNKNOWN, Country.ENGLAND):
        return f"in {COUNTRY_NAMES[country]}"
    if st == Status.TOO_FAR_FROM_POSTCODE and max_distance_m == max_distance_m:
        return f"no postcode within {max_distance_m:.0f} m (sea, or outside Great Britain)"
    return _REASONS[st]


def reasons(status: NDArray[np.uint8], country: NDArray[np.uint8], max_distance_m: float) -> NDArray[np.object_]:
    """Vectorised :func:`reason` (one Python call per distinct status x country pair)."""
    out = np.empty(len(status), dtype=object)
    pairs = status.astype(np.int32) * 16 + country.astype(np.int32)
    for pair in np.unique(pairs):
        out[pairs == pair] = reason(int(pair) // 16, int(pair) % 16, max_distance_m=max_distance_m)
    return out
