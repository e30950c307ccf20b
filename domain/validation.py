"""Validation of trust events: the "Invalid" rules of the interchange format, in one place.

The publisher (before it sends) and the stream worker (after it decodes) call the same functions,
so a record is judged the same way on both sides. Pure: no clock, no I/O. "Now" is an argument.

An invalid event is never dropped: it becomes a :class:`Rejection`, a list of :class:`Reason`
(short machine code + field + human message) that the publisher prints and the stream side writes
to the dead-letter topic. ``docs/trust-export-format.md`` lists the rules for trusts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, TypeVar

from domain.events import (
    CONVEYED,
    TRUSTS,
    Category,
    Disposition,
    Event,
    EventType,
    Location,
    Source,
    format_time,
    parse_time,
)


class Code(StrEnum):
    """Reason codes: stable strings that dashboards, `amb dlq show --reason` and trusts key on."""

    # interchange rules
    MISSING_FIELD = "missing_field"
    MALFORMED_FIELD = "malformed_field"
    UNKNOWN_ENUM = "unknown_enum"
    BAD_TIME = "bad_time"
    FUTURE_TIME = "future_time"
    ANCIENT_TIME = "ancient_time"
    WRONG_TRUST = "wrong_trust"
    UNKNOWN_TRUST = "unknown_trust"
    HANDOVER_BEFORE_ARRIVAL = "handover_before_arrival"
    CONVEYED_WITHOUT_DESTINATION = "conveyed_without_destination"
    # additions of this platform
    BAD_LENGTH = "bad_length"
    OUT_OF_RANGE = "out_of_range"
    INCOMPLETE_LOCATION = "incomplete_location"
    CLEAR_BEFORE_ARRIVAL = "clear_before_arrival"
    CALL_ID_MISMATCH = "call_id_mismatch"
    # a line of the input file that is not a record at all (bad JSON, too many CSV cells)
    MALFORMED_RECORD = "malformed_record"
    # wire-level failures (set by the codec; listed here so every DLQ code is in one place)
    EMPTY_MESSAGE = "empty_message"
    BAD_MAGIC = "bad_magic"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNDECODABLE = "undecodable"
    TRAILING_BYTES = "trailing_bytes"
    NO_REGISTRY = "no_registry"
    # stream-side refusals (set by the worker; see streams/pipeline.py and streams/state.py)
    WRONG_KEY = "wrong_key"
    LATE_AFTER_EXPIRY = "late_after_expiry"
    REDUCER_ERROR = "reducer_error"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one event is invalid: ``code`` for machines, ``message`` for the trust's analyst."""

    code: Code
    message: str
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invalid event: at least one reason, plus whatever identity could be read (for the DLQ)."""

    reasons: tuple[Reason, ...]
    event_id: str | None = None
    trust: str | None = None
    incident_id: str | None = None

    @property
    def code(self) -> Code:
        """The first reason's code: what a rejected event is grouped and filtered by."""
        return self.reasons[0].code

    @property
    def message(self) -> str:
        return "; ".join(r.message for r in self.reasons)

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.reasons)


# ---------------------------------------------------------------------------------------------
# Limits

DAY_MS: Final = 86_400_000
MAX_FUTURE_MS: Final = DAY_MS
"""A time more than this after ``now_ms`` is rejected (interchange rule: 1 day)."""
MIN_TIME_MS: Final = parse_time("2000-01-01T00:00:00Z")
"""Anything earlier is a broken clock or a default date, not an ambulance incident."""
MAX_ID_LEN: Final = 64
MAX_CODE_LEN: Final = 16
MAX_POSTCODE_LEN: Final = 16
# Generous boxes around the British Isles: WGS84 and the OSGB36 national grid extent.
LAT_RANGE: Final = (49.0, 61.5)
LON_RANGE: Final = (-9.0, 2.5)
EASTING_RANGE: Final = (0.0, 700_000.0)
NORTHING_RANGE: Final = (0.0, 1_300_000.0)

COMMON_FIELDS: Final = ("event_id", "event_type", "trust", "incident_id", "event_time")
LOCATION_FIELDS: Final = ("postcode", "lat", "lon", "easting", "northing")
TIME_FIELDS: Final = ("event_time", "produced_time", "clock_start", "arrived_at_hospital", "handover_at", "clear_at")
INTERCHANGE_FIELDS: Final = (
    *COMMON_FIELDS,
    "clock_start", "category", "source", *LOCATION_FIELDS,
    "disposition", "destination_site",
    "site", "arrived_at_hospital", "handover_at", "clear_at",
    "call_id", "disposition_ambulance", "linked_incident_id",
)
"""Field names of the trust export format, in the order `amb publish --rejects` and CSVs use."""
OPTIONAL_EXTRA_FIELDS: Final = ("produced_time", "schema_version")
"""Accepted on input (e.g. re-published platform events) though not part of the interchange format."""
KNOWN_FIELDS: Final = frozenset((*INTERCHANGE_FIELDS, *OPTIONAL_EXTRA_FIELDS, "location"))

REQUIRED: Final[dict[EventType, tuple[str, ...]]] = {
    EventType.INCIDENT_CREATED: ("clock_start", "category", "source"),
    EventType.CATEGORY_CHANGED: ("category",),
    EventType.RESPONSE_ARRIVED: (),
    EventType.DISPOSITION: ("disposition",),
    EventType.HANDOVER: ("site", "arrived_at_hospital"),
    EventType.CALL_111: ("call_id", "disposition_ambulance"),
}
"""Type-specific fields without which an event means nothing (the format marks the rest optional)."""

_UUID_RE: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_CANONICAL_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TRUST_RE: Final = re.compile(r"[A-Z0-9]{3,5}\Z")
_SITE_RE: Final = re.compile(r"[A-Za-z0-9]+\Z")
_KNOWN_TRUSTS: Final = frozenset(TRUSTS)
_EVENT_TYPES: Final = {t.value: t for t in EventType}
_CATEGORIES: Final = {c.value: c for c in Category}
_SOURCES: Final = {s.value: s for s in Source}
_DISPOSITIONS: Final = {d.value: d for d in Disposition}
_BOOLS: Final = {"true": True, "false": False}
_EPOCH_UTC: Final = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_E = TypeVar("_E")
_Add = Callable[["Reason"], None]


# ---------------------------------------------------------------------------------------------
# Interchange record -> Event


def unknown_fields(names: Iterable[str]) -> list[str]:
    """Field (column) names that are not part of the format: the publisher warns about them once."""
    return sorted(n for n in names if n not in KNOWN_FIELDS)


def parse_record(
    record: Mapping[str, object], *, now_ms: int, trust: str | None = None
) -> Event | Rejection:
    """One interchange record (JSON object, CSV row as a dict, Avro record) -> Event or Rejection.

    Values may be strings (CSV: empty means absent), JSON numbers and booleans, tz-aware
    ``datetime`` (Avro timestamp-millis) or None. ``trust`` is the publishing trust: a record for
    another trust is rejected. ``now_ms`` bounds times in the future. Every problem found is
    reported, not only the first.
    """
    p = _Parser(record)
    event_id = p.text("event_id", required=True)
    if event_id is not None:
        if _UUID_RE.match(event_id):
            event_id = event_id.lower()
        else:
            p.fail(Code.MALFORMED_FIELD, "event_id", f"event_id {event_id!r} is not a UUID")
            event_id = None
    event_type = p.enum("event_type", _EVENT_TYPES, required=True)
    record_trust = p.text("trust", required=True)
    incident_id = p.text("incident_id", required=True, strip=False)
    event_time = p.time("event_time", required=True)
    produced_time = p.time("produced_time")
    schema_version = p.integer("schema_version")

    needed = REQUIRED.get(event_type, ()) if event_type is not None else ()
    location = p.location()
    disposition_ambulance = p.boolean("disposition_ambulance", required="disposition_ambulance" in needed)
    fields = {
        "clock_start": p.time("clock_start", required="clock_start" in needed),
        "category": p.enum("category", _CATEGORIES, required="category" in needed),
        "source": p.enum("source", _SOURCES, required="source" in needed),
        "disposition": p.enum("disposition", _DISPOSITIONS, required="disposition" in needed),
        "destination_site": p.text("destination_site"),
        "site": p.text("site", required="site" in needed),
        "arrived_at_hospital": p.time("arrived_at_hospital", required="arrived_at_hospital" in needed),
        "handover_at": p.time("handover_at"),
        "clear_at": p.time("clear_at"),
        "call_id": p.text("call_id", required="call_id" in needed, strip=False),
        "linked_incident_id": p.text("linked_incident_id", strip=False),
    }
    if event_id is None or event_type is None or record_trust is None or incident_id is None or event_time is None:
        return Rejection(tuple(p.reasons), event_id, record_trust, incident_id)
    event = Event(
        event_id=event_id,
        event_type=event_type,
        trust=record_trust,
        incident_id=incident_id,
        event_time=event_time,
        produced_time=produced_time,
        location=location,
        disposition_ambulance=disposition_ambulance,
        **fields,  # type: ignore[arg-type]
    )
    if schema_version is not None:
        event = replace(event, schema_version=schema_version)
    reasons = check_event(event, now_ms=now_ms, trust=trust)
    if p.reasons:
        # A field that was present but unreadable is None in the event: report it once, as malformed.
        bad = {r.field for r in p.reasons}
        reasons = p.reasons + [r for r in reasons if not (r.code is Code.MISSING_FIELD and r.field in bad)]
    if reasons:
        return Rejection(tuple(reasons), event_id, record_trust, incident_id)
    return event


def validate(event: Event, *, now_ms: int, trust: str | None = None) -> Event | Rejection:
    """An Event built elsewhere (simulator, decoder) -> itself, or a Rejection with every reason."""
    reasons = check_event(event, now_ms=now_ms, trust=trust)
    if reasons:
        return Rejection(tuple(reasons), event.event_id, event.trust, event.incident_id)
    return event


def check_event(event: Event, *, now_ms: int, trust: str | None = None) -> list[Reason]:
    """Every rule that can be judged on a typed Event; an empty list means valid."""
    if surely_valid(event, now_ms, trust):
        return []
    reasons: list[Reason] = []
    add = reasons.append
    if not isinstance(event.event_id, str) or not _CANONICAL_UUID_RE.match(event.event_id):
        add(Reason(Code.MALFORMED_FIELD, f"event_id {event.event_id!r} is not a canonical lowercase UUID", "event_id"))
    if not isinstance(event.event_type, EventType):
        add(Reason(Code.UNKNOWN_ENUM, f"event_type {event.event_type!r} is not one of {_names(EventType)}", "event_type"))
    _check_trust(event.trust, trust, add)
    if not 1 <= len(event.incident_id) <= MAX_ID_LEN:
        add(Reason(Code.BAD_LENGTH, f"incident_id must be 1-{MAX_ID_LEN} characters, got {len(event.incident_id)}", "incident_id"))
    elif event.incident_id.isspace():
        # Blank is no reference at all: the interchange format reads an empty cell as absent.
        add(Reason(Code.MISSING_FIELD, "incident_id is blank", "incident_id"))

    latest = now_ms + MAX_FUTURE_MS
    for name in TIME_FIELDS:
        value = getattr(event, name)
        if value is None:
            continue
        if value > latest:
            add(Reason(Code.FUTURE_TIME, f"{name} {_show_time(value)} is more than 1 day in the future", name))
        elif value < MIN_TIME_MS:
            add(Reason(Code.ANCIENT_TIME, f"{name} {_show_time(value)} is before 2000-01-01", name))

    needed = REQUIRED.get(event.event_type, ())
    for name in needed:
        if getattr(event, name) is None:
            add(Reason(Code.MISSING_FIELD, f"{name} is required for {event.event_type.value}", name))
    _check_enum(event.category, Category, "category", add)
    _check_enum(event.source, Source, "source", add)
    _check_enum(event.disposition, Disposition, "disposition", add)

    if event.disposition in CONVEYED and not event.destination_site:
        add(Reason(Code.CONVEYED_WITHOUT_DESTINATION,
                   f"disposition {event.disposition.value} needs destination_site", "destination_site"))
    for name in ("destination_site", "site"):
        _check_site(getattr(event, name), name, add)
    for name in ("call_id", "linked_incident_id"):
        value = getattr(event, name)
        if value is not None and not 1 <= len(value) <= MAX_ID_LEN:
            add(Reason(Code.BAD_LENGTH, f"{name} must be 1-{MAX_ID_LEN} characters, got {len(value)}", name))
    if event.event_type is EventType.CALL_111 and event.call_id is not None and event.call_id != event.incident_id:
        add(Reason(Code.CALL_ID_MISMATCH,
                   f"call_111 incident_id {event.incident_id!r} must repeat call_id {event.call_id!r}", "call_id"))

    arrived = event.arrived_at_hospital
    if arrived is not None:
        if event.handover_at is not None and event.handover_at < arrived:
            add(Reason(Code.HANDOVER_BEFORE_ARRIVAL,
                       f"handover_at {_show_time(event.handover_at)} precedes arrived_at_hospital {_show_time(arrived)}",
                       "handover_at"))
        if event.clear_at is not None and event.clear_at < arrived:
            add(Reason(Code.CLEAR_BEFORE_ARRIVAL,
                       f"clear_at {_show_time(event.clear_at)} precedes arrived_at_hospital {_show_time(arrived)}",
                       "clear_at"))
    if event.location is not None:
        _check_location(event.location, add)
    return reasons


def surely_valid(e: Event, now_ms: int, trust: str | None) -> bool:
    """The same rules as check_event's body, as one pass of cheap tests with no messages.

    True only when check_event would find nothing; on False the full check names the reasons.
    Publishing and decoding call this for every event, so it is written for speed; a property
    test keeps it in step with the full rules.
    """
    lo = MIN_TIME_MS
    hi = now_ms + MAX_FUTURE_MS
    et = e.event_type
    if (
        et.__class__ is not EventType
        or not lo <= e.event_time <= hi
        or e.trust not in _KNOWN_TRUSTS
        or (trust is not None and e.trust != trust)
        or not 0 < len(e.incident_id) <= MAX_ID_LEN
        or e.incident_id.isspace()
        or e.event_id.__class__ is not str
        or not _CANONICAL_UUID_RE.match(e.event_id)
    ):
        return False
    for t in (e.produced_time, e.clock_start):
        if t is not None and not lo <= t <= hi:
            return False
    if (c := e.category) is not None and c.__class__ is not Category:
        return False
    if (src := e.source) is not None and src.__class__ is not Source:
        return False
    d = e.disposition
    if d is not None and (d.__class__ is not Disposition or (d in CONVEYED and not e.destination_site)):
        return False
    for site in (e.destination_site, e.site):
        if site is not None and not (len(site) <= MAX_CODE_LEN and _SITE_RE.match(site)):
            return False
    arrived = e.arrived_at_hospital
    first = lo if arrived is None else arrived
    if arrived is not None and not lo <= arrived <= hi:
        return False
    for t in (e.handover_at, e.clear_at):
        if t is not None and not first <= t <= hi:
            return False
    call_id = e.call_id
    if call_id is not None and (
        not 0 < len(call_id) <= MAX_ID_LEN or (et is EventType.CALL_111 and call_id != e.incident_id)
    ):
        return False
    linked = e.linked_incident_id
    if linked is not None and not 0 < len(linked) <= MAX_ID_LEN:
        return False
    for name in REQUIRED[et]:
        if getattr(e, name) is None:
            return False
    loc = e.location
    if loc is not None:
        pc = loc.postcode
        if pc is not None and not 0 < len(pc) <= MAX_POSTCODE_LEN:
            return False
        lat, lon = loc.lat, loc.lon
        if (lat is not None or lon is not None) and (
            lat is None or lon is None
            or not (LAT_RANGE[0] <= lat <= LAT_RANGE[1] and LON_RANGE[0] <= lon <= LON_RANGE[1])
        ):
            return False
        ea, no = loc.easting, loc.northing
        if (ea is not None or no is not None) and (
            ea is None or no is None
            or not (EASTING_RANGE[0] <= ea <= EASTING_RANGE[1] and NORTHING_RANGE[0] <= no <= NORTHING_RANGE[1])
        ):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Event -> interchange record (inverse of parse_record)


def to_record(event: Event) -> dict[str, object]:
    """Event -> interchange record (JSON-ready: strings, numbers, booleans; absent fields left out).

    ``parse_record(to_record(e))`` gives ``e`` back (times at millisecond precision).
    """
    out: dict[str, object] = {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "trust": event.trust,
        "incident_id": event.incident_id,
        "event_time": format_time(event.event_time),
    }
    for name in ("clock_start", "arrived_at_hospital", "handover_at", "clear_at"):
        value = getattr(event, name)
        if value is not None:
            out[name] = format_time(value)
    for name in ("category", "source", "disposition"):
        value = getattr(event, name)
        if value is not None:
            out[name] = value.value
    for name in ("destination_site", "site", "call_id", "disposition_ambulance", "linked_incident_id"):
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    loc = event.location
    if loc is not None:
        for name in LOCATION_FIELDS:
            value = getattr(loc, name)
            if value is not None:
                out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# helpers


class _Parser:
    """Reads typed values out of one loosely typed record, collecting reasons instead of raising."""

    __slots__ = ("record", "reasons")

    def __init__(self, record: Mapping[str, object]) -> None:
        # Absent, null and blank (CSV: empty cell) are all "absent": drop them once, up front, so
        # each of the ~20 field readers below is a dict miss for the fields a type does not use.
        self.record = {k: v for k, v in record.items()
                       if v is not None and v != "" and not (v.__class__ is str and v.isspace())}
        self.reasons: list[Reason] = []

    def fail(self, code: Code, name: str, message: str) -> None:
        self.reasons.append(Reason(code, message, name))

    def raw(self, name: str, required: bool = False) -> object:
        value = self.record.get(name)
        if value is None and required:
            self.fail(Code.MISSING_FIELD, name, f"{name} is missing")
        return value

    def text(self, name: str, required: bool = False, strip: bool = True) -> str | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            # JSON numbers for codes/ids are common enough to accept as their text.
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(Code.MALFORMED_FIELD, name, f"{name} must be a string, got {type(value).__name__}")
                return None
            value = str(value)
        return value.strip() if strip else value

    def enum(self, name: str, members: Mapping[str, _E], required: bool = False) -> _E | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # source 999 / 111 as a JSON number
        if isinstance(value, str):
            member = members.get(value.strip())
            if member is not None:
                return member
        self.fail(Code.UNKNOWN_ENUM, name, f"{name} {value!r} is not one of {', '.join(members)}")
        return None

    def time(self, name: str, required: bool = False) -> int | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.fail(Code.BAD_TIME, name, f"{name} {value.isoformat()} has no UTC offset")
                return None
            return (value - _EPOCH_UTC) // timedelta(milliseconds=1)
        if isinstance(value, str):
            try:
                return parse_time(value)
            except (ValueError, OverflowError):
                pass
        self.fail(Code.BAD_TIME, name, f"{name} {value!r} is not an ISO 8601 time with offset or Z")
        return None

    def number(self, name: str) -> float | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool):
            result = math.nan
        elif isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value)
            except ValueError:
                result = math.nan
        else:
            result = math.nan
        if not math.isfinite(result):
            self.fail(Code.MALFORMED_FIELD, name, f"{name} {value!r} is not a finite number")
            return None
        return result

    def integer(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        self.fail(Code.MALFORMED_FIELD, name, f"{name} {value!r} is not an integer")
        return None

    def boolean(self, name: str, required: bool = False) -> bool | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            result = _BOOLS.get(value.strip().lower())
            if result is not None:
                return result
        self.fail(Code.MALFORMED_FIELD, name, f"{name} {value!r} is not true or false")
        return None

    def location(self) -> Location | None:
        nested = self.record.get("location")
        if isinstance(nested, Mapping):
            sub = _Parser(nested)
            loc = sub._location()
            self.reasons.extend(sub.reasons)
            return loc
        if nested is not None:
            self.fail(Code.MALFORMED_FIELD, "location", "location must be an object")
            return None
        return self._location()

    def _location(self) -> Location | None:
        postcode = self.raw("postcode")
        if postcode is not None and not isinstance(postcode, str):
            self.fail(Code.MALFORMED_FIELD, "postcode", f"postcode must be a string, got {type(postcode).__name__}")
            postcode = None
        lat, lon = self.number("lat"), self.number("lon")
        easting, northing = self.number("easting"), self.number("northing")
        if postcode is None and lat is None and lon is None and easting is None and northing is None:
            return None
        return Location(postcode, lat, lon, easting, northing)



def _names(enum: type[StrEnum]) -> str:
    return ", ".join(m.value for m in enum)


def _show_time(ms: int) -> str:
    try:
        return format_time(ms)
    except (OverflowError, ValueError):
        return f"{ms} ms"


def _check_trust(value: str, expected: str | None, add: _Add) -> None:
    if expected is not None and value != expected:
        add(Reason(Code.WRONG_TRUST, f"trust {value!r} is not the publishing trust {expected}", "trust"))
    elif not _TRUST_RE.match(value) or value not in _KNOWN_TRUSTS:
        add(Reason(Code.UNKNOWN_TRUST, f"trust {value!r} is not an ambulance trust ODS code ({', '.join(TRUSTS)})", "trust"))


def _check_enum(value: object, enum: type[StrEnum], name: str, add: _Add) -> None:
    if value is not None and not isinstance(value, enum):
        add(Reason(Code.UNKNOWN_ENUM, f"{name} {value!r} is not one of {_names(enum)}", name))


def _check_site(value: str | None, name: str, add: _Add) -> None:
    if value is None:
        return
    if not 1 <= len(value) <= MAX_CODE_LEN:
        add(Reason(Code.BAD_LENGTH, f"{name} must be 1-{MAX_CODE_LEN} characters, got {len(value)}", name))
    elif not _SITE_RE.match(value):
        add(Reason(Code.MALFORMED_FIELD, f"{name} {value!r} is not an ODS site code (letters and digits)", name))


def _check_location(loc: Location, add: _Add) -> None:
    if loc.postcode is not None and not 1 <= len(loc.postcode) <= MAX_POSTCODE_LEN:
        add(Reason(Code.BAD_LENGTH, f"postcode must be 1-{MAX_POSTCODE_LEN} characters, got {len(loc.postcode)}", "postcode"))
    for a, b in (("lat", "lon"), ("easting", "northing")):
        if (getattr(loc, a) is None) != (getattr(loc, b) is None):
            add(Reason(Code.INCOMPLETE_LOCATION, f"{a} and {b} must be given together", a))
    for name, (low, high) in (("lat", LAT_RANGE), ("lon", LON_RANGE),
                              ("easting", EASTING_RANGE), ("northing", NORTHING_RANGE)):
        value = getattr(loc, name)
        if value is not None and not low <= value <= high:  # NaN fails this too
            add(Reason(Code.OUT_OF_RANGE, f"{name} {value} is outside {low}..{high}", name))

