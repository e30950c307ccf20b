"""Pure geography core: incident location -> LSOA 2021 -> MSOA, LAD (place), SICBL, ICB, region.

No files, no network: callers pass numpy arrays (and plain mappings) and get arrays back, so the
stream worker and the simulator attribute whole batches at once. ``amb.geo`` loads the built index
and feeds these functions.
"""

from __future__ import annotations

from domain.geo.attribute import (
    DEFAULT_MAX_DISTANCE_M,
    Attribution,
    Method,
    PointTable,
    PostcodeTable,
    choose,
    classify_osgb,
    classify_wgs84,
    fallback_mask,
    from_nearest,
    lookup_keys,
)
from domain.geo.postcode import (
    key_to_postcode,
    keys_to_postcodes,
    normalise_keys,
    normalise_postcode,
    postcode_key,
)
from domain.geo.status import PLACED, STATUS_NAMES, Country, Fit, Status, placed_mask, reason
from domain.geo.vintage import GeographyDataError, Hierarchy, Level, Vintage, from_rows, remap, select

__all__ = [
    "DEFAULT_MAX_DISTANCE_M", "PLACED", "STATUS_NAMES", "Attribution", "Country", "Fit", "GeographyDataError",
    "Hierarchy", "Level", "Method", "PointTable", "PostcodeTable", "Status", "Vintage", "choose",
    "classify_osgb", "classify_wgs84", "fallback_mask", "from_nearest", "from_rows", "key_to_postcode",
    "keys_to_postcodes", "lookup_keys", "normalise_keys", "normalise_postcode", "placed_mask",
    "postcode_key", "reason", "remap", "select",
]
