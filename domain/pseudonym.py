"""Pseudonymised incident rows for ICBs (domain.md "Disclosure control").

An ICB may see incident-level rows for its own geography only, pseudonymised:

- the incident id becomes a keyed hash, HMAC-SHA256 over ``trust:incident_id`` with a deployment
  key (:func:`pseudonym`): stable, so one incident links across queries and versions, but not
  reversible or guessable without the key (a plain hash of a guessable id would be);
- only the columns in :data:`PSEUDONYMISED_COLUMNS` pass: coded values, times and durations; no
  free text and no patient identifier exists in a fact row, and nothing unlisted gets through;
- location is coarsened to the LSOA (about 1,500 people) and the areas above it; the facts hold
  no finer location, and the allow-list keeps it that way if one is ever added.

Pure: the key is passed in (the shell keeps it in a file readable by the service only).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

KEY_BYTES: Final = 32
PSEUDONYM_COLUMN: Final = "incident_pseudonym"
PSEUDONYM_HEX: Final = 32
"""Hex digits kept of the HMAC: 128 bits, so collisions are negligible at national volumes."""

PSEUDONYMISED_COLUMNS: Final = (
    "trust", "version", "clock_start_ms", "category", "source", "disposition", "open", "conveyed",
    "complete", "response_ms", "destination_site", "site", "handover_duration_ms",
    "lsoa", "msoa", "lad", "sicbl", "icb", "region", "geo_status", "first_event_ms", "last_event_ms",
)
"""What an ICB sees of an incident besides its pseudonym (domain/facts.py IncidentFact names)."""

IDENTIFYING: Final = frozenset({"incident_id"})
"""Columns replaced by the pseudonym."""


class PseudonymKeyError(ValueError):
    """The deployment key is unusable."""


def check_key(key: bytes) -> bytes:
    if len(key) < KEY_BYTES:
        raise PseudonymKeyError(f"pseudonymisation key must be at least {KEY_BYTES} bytes (got {len(key)})")
    return key


def pseudonym(key: bytes, trust: str, incident_id: str) -> str:
    """The keyed pseudonym of one incident (trust-qualified: ids are unique within a trust only)."""
    mac = hmac.new(check_key(key), f"{trust}:{incident_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:PSEUDONYM_HEX]


def pseudonymise(
    key: bytes, columns: Sequence[str], rows: Sequence[Sequence[Any]],
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """Rows with ``trust`` and ``incident_id`` -> the pseudonym first, then the allowed columns
    present, in :data:`PSEUDONYMISED_COLUMNS` order; every other column is dropped."""
    idx = {c: i for i, c in enumerate(columns)}
    for need in ("trust", "incident_id"):
        if need not in idx:
            raise ValueError(f"cannot pseudonymise rows without a {need!r} column")
    check_key(key)
    keep = [c for c in PSEUDONYMISED_COLUMNS if c in idx]
    t, inc = idx["trust"], idx["incident_id"]
    out_rows = [(pseudonym(key, str(r[t]), str(r[inc])), *(r[idx[c]] for c in keep)) for r in rows]
    return (PSEUDONYM_COLUMN, *keep), out_rows


def pseudonymise_row(key: bytes, row: Mapping[str, Any]) -> dict[str, Any]:
    """One row as a mapping (convenience for callers holding dicts)."""
    cols, rows = pseudonymise(key, list(row), [tuple(row.values())])
    return dict(zip(cols, rows[0], strict=True))
