"""The incident-lifecycle event, as the domain core sees it.

One flat, immutable record for every event type of the trust interchange format
(docs/trust-export-format.md). Flat rather than a class per type because the reducer, the
validator and the columnar encoders all want the same fields in the same place; which fields
are meaningful depends on ``event_type`` (see ``TYPE_FIELDS``).

Times are integers: milliseconds since the Unix epoch, UTC. Conversions from and to ISO 8601
strings live here too so every adapter parses times the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

SCHEMA_VERSION: Final = 1

TRUSTS: Final[tuple[str, ...]] = (
    "RX6", "RX7", "RX8", "RX9", "RYA", "RYC", "RRU", "RYD", "RYE", "RYF", "R1F",
)


class EventType(StrEnum):
    INCIDENT_CREATED = "incident_created"
    CATEGORY_CHANGED = "category_changed"
    RESPONSE_ARRIVED = "response_arrived"
    DISPOSITION = "disposition"
    HANDOVER = "handover"
    CALL_111 = "call_111"


class Category(StrEnum):
    C1 = "C1"
    C2 = "C2"
    C3 = "C3"
    C4 = "C4"


class Source(StrEnum):
    CALL_999 = "999"
    CALL_111 = "111"


class Disposition(StrEnum):
    """AmbSYS outcome buckets: A17, A55, A53, A54."""

    HEAR_AND_TREAT = "hear_and_treat"
    SEE_AND_TREAT = "see_and_treat"
    CONVEYED_ED = "conveyed_ed"
    CONVEYED_ELSEWHERE = "conveyed_elsewhere"


CONVEYED: Final = frozenset({Disposition.CONVEYED_ED, Disposition.CONVEYED_ELSEWHERE})


@dataclass(frozen=True, slots=True)
class Location:
    """Where the incident happened, in any of the three forms a trust may send."""

    postcode: str | None = None
    lat: float | None = None
    lon: float | None = None
    easting: float | None = None
    northing: float | None = None

    @property
    def empty(self) -> bool:
        return self.postcode is None and self.lat is None and self.easting is None


@dataclass(frozen=True, slots=True)
class Event:
    """One trust event. ``event_id`` is a canonical lowercase UUID string; equal ids are duplicates."""

    event_id: str
    event_type: EventType
    trust: str
    incident_id: str
    event_time: int
    produced_time: int | None = None
    schema_version: int = SCHEMA_VERSION
    # incident_created / category_changed
    clock_start: int | None = None
    category: Category | None = None
    source: Source | None = None
    location: Location | None = None
    # disposition
    disposition: Disposition | None = None
    destination_site: str | None = None
    # handover
    site: str | None = None
    arrived_at_hospital: int | None = None
    handover_at: int | None = None
    clear_at: int | None = None
    # call_111
    call_id: str | None = None
    disposition_ambulance: bool | None = None
    linked_incident_id: str | None = None

    @property
    def key(self) -> str:
        """Kafka key: trust + incident, so one incident's events share a partition and stay ordered."""
        return f"{self.trust}:{self.incident_id}"


# Fields each type may carry beyond the common ones (the interchange format's "own fields").
TYPE_FIELDS: Final[dict[EventType, tuple[str, ...]]] = {
    EventType.INCIDENT_CREATED: ("clock_start", "category", "source", "location"),
    EventType.CATEGORY_CHANGED: ("category",),
    EventType.RESPONSE_ARRIVED: (),
    EventType.DISPOSITION: ("disposition", "destination_site"),
    EventType.HANDOVER: ("site", "arrived_at_hospital", "handover_at", "clear_at"),
    EventType.CALL_111: ("call_id", "disposition_ambulance", "linked_incident_id", "location"),
}


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """ISO 8601 with an offset or ``Z`` -> epoch milliseconds. Naive times are refused: ValueError."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def format_time(ms: int) -> str:
    """Epoch milliseconds -> ISO 8601 UTC with ``Z``, millisecond precision."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
