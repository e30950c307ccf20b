"""Hypothesis strategies for trust events, and a small fake geography, reusable by every test.

Events are valid by the interchange format's per-event rules (conveyed dispositions name a site,
handover times follow the arrival) but deliberately awkward across events: several incidents
interleaved, corrections, equal event times (so ties fall to the event id), arrivals before the
clock start, incidents without incident_created, unplaceable locations, and clock starts around
the 2026 clock changes, ISO-week, financial-year and boundary-change dates.

    from strategies import event_sets, arrivals, FAKE_ATTRIBUTOR, FAKE_HIERARCHY
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from hypothesis import strategies as st

from domain.events import CONVEYED, Category, Disposition, Event, EventType, Location, Source
from domain.facts import Areas

MINUTE = 60_000


def utc_ms(text: str) -> int:
    """``2026-03-29T00:30`` (UTC) -> epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# ----------------------------------------------------------------------------- fake geography
MERGER_MS = utc_ms("2026-03-31T23:00")  # 1 April 2026 00:00 BST: ICB E54000002's LSOA 3 moves to E54000001

_BASE_AREAS: dict[str, Areas] = {
    "E01000001": Areas("E02000001", "E06000001", "E38000001", "E54000001", "E40000001"),
    "E01000002": Areas("E02000001", "E06000001", "E38000001", "E54000001", "E40000001"),
    # LAD E06000001 is split between two ICBs (as twelve real LADs are): attribution must go LSOA -> ICB
    "E01000003": Areas("E02000002", "E06000001", "E38000002", "E54000002", "E40000001"),
    "E01000004": Areas("E02000003", "E06000002", "E38000002", "E54000002", "E40000001"),
    "E01000005": Areas("E02000004", "E06000003", "E38000003", "E54000003", "E40000002"),
    "E01000006": Areas("E02000005", "E06000004", "E38000004", "E54000003", "E40000002"),
    "E01000007": Areas("E02000006", "E06000004", "E38000004", "E54000003", "E40000002"),
}
_MERGED = {"E01000003": Areas("E02000002", "E06000001", "E38000001", "E54000001", "E40000001")}


class FakeHierarchy:
    """Seven LSOAs, two regions, three ICBs; LSOA 3 changes ICB on 1 April 2026; LSOA 8 is unknown."""

    def areas(self, lsoa21: str, at_ms: int) -> Areas | None:
        if at_ms >= MERGER_MS and lsoa21 in _MERGED:
            return _MERGED[lsoa21]
        return _BASE_AREAS.get(lsoa21)


POSTCODE_LSOA = {f"AA{i} {i}AA": f"E0100000{i}" for i in range(1, 9)}


class FakeAttributor:
    """Postcodes ``AA1 1AA`` … ``AA8 8AA`` -> LSOA 1 … 8; one lat/lon and one easting/northing point;
    anything else unplaced with a reason. Counts its calls (the oracle must batch)."""

    def __init__(self) -> None:
        self.calls = 0

    def attribute(self, locations: Sequence[Location], times_ms: Sequence[int]) -> list[tuple[str | None, str]]:
        assert len(locations) == len(times_ms)
        self.calls += 1
        out: list[tuple[str | None, str]] = []
        for loc in locations:
            if loc.postcode is not None:
                code = POSTCODE_LSOA.get(loc.postcode)
                out.append((code, "ok") if code else (None, "unknown_postcode"))
            elif loc.easting is not None:
                out.append(("E01000006", "ok") if (loc.easting, loc.northing) == (530000.0, 180000.0)
                           else (None, "outside_england"))
            elif loc.lat is not None:
                out.append(("E01000005", "ok") if (loc.lat, loc.lon) == (51.5, -0.1) else (None, "outside_england"))
            else:
                out.append((None, "no_location"))
        return out


FAKE_HIERARCHY = FakeHierarchy()
FAKE_ATTRIBUTOR = FakeAttributor()

LOCATIONS: tuple[Location | None, ...] = (
    *(Location(postcode=p) for p in POSTCODE_LSOA),
    Location(postcode="ZZ9 9ZZ"),  # unknown postcode
    Location(lat=51.5, lon=-0.1),
    Location(lat=55.95, lon=-3.19),  # Edinburgh: outside England
    Location(easting=530000.0, northing=180000.0),
    Location(),  # empty
    None,
)
SITES = ("RXX01", "RYY02", "RZZ03")
SITE_ICB = {"RXX01": "E54000001", "RYY02": "E54000003"}  # RZZ03 unmapped
TRUSTS = ("RX6", "RRU", "R1F")

# ------------------------------------------------------------------------------------ events
INTERESTING_TIMES = tuple(utc_ms(t) for t in (
    "2026-03-29T00:30", "2026-03-29T00:55",  # spring forward at 01:00 UTC
    "2026-10-24T23:30", "2026-10-25T00:30", "2026-10-25T01:30",  # fall back: 01:xx local twice
    "2026-03-31T22:30", "2026-03-31T23:30",  # financial year and ICB merger boundary (local midnight)
    "2025-12-28T23:30", "2025-12-29T00:30",  # ISO week 2026-W01 starts Monday 29 Dec 2025
    "2026-07-15T12:00",
))

locations = st.sampled_from(LOCATIONS)
categories = st.sampled_from(list(Category))
dispositions = st.sampled_from(list(Disposition))
sites = st.sampled_from(SITES)


def base_times() -> st.SearchStrategy[int]:
    """An incident's nominal start: a tricky instant, or any minute from 2025 to mid 2027."""
    return st.one_of(
        st.sampled_from(INTERESTING_TIMES),
        st.integers(utc_ms("2025-01-01T00:00") // MINUTE, utc_ms("2027-06-30T00:00") // MINUTE).map(lambda m: m * MINUTE),
    )


# Durations around the 15/30/45/60-minute thresholds (exactly N minutes is not "over N").
handover_durations = st.one_of(
    st.sampled_from([0, 15 * MINUTE, 15 * MINUTE + 1, 30 * MINUTE, 45 * MINUTE, 60 * MINUTE, 61 * MINUTE]),
    st.integers(0, 120).map(lambda m: m * MINUTE),
)


def _event(event_type: EventType, trust: str, incident_id: str, t: int, **fields: object) -> Event:
    return Event("", event_type, trust, incident_id, t, **fields)  # type: ignore[arg-type]


@st.composite
def incident_events(draw: st.DrawFn, trust: str, incident_id: str, base_ms: int | None = None) -> list[Event]:
    """The events of one incident, ids not yet assigned (see :func:`event_sets`). Event times are
    multiples of 5 minutes after the base so that ties are common."""
    base = draw(base_times()) if base_ms is None else base_ms

    def t() -> int:
        return base + draw(st.integers(0, 12)) * 5 * MINUTE

    out: list[Event] = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        out.append(_event(EventType.INCIDENT_CREATED, trust, incident_id, t(),
                          clock_start=base + draw(st.integers(0, 3)) * MINUTE, category=draw(categories),
                          source=draw(st.sampled_from([Source.CALL_999, Source.CALL_999, Source.CALL_111])),
                          location=draw(locations)))
    for _ in range(draw(st.integers(0, 2))):
        out.append(_event(EventType.CATEGORY_CHANGED, trust, incident_id, t(), category=draw(categories)))
    for _ in range(draw(st.integers(0, 2))):
        out.append(_event(EventType.RESPONSE_ARRIVED, trust, incident_id, t()))
    for _ in range(draw(st.integers(0, 3))):
        d = draw(dispositions)
        dest = draw(sites) if d in CONVEYED else draw(st.none() | sites)
        out.append(_event(EventType.DISPOSITION, trust, incident_id, t(), disposition=d, destination_site=dest))
    for _ in range(draw(st.integers(0, 3))):
        arrived = base + draw(st.integers(10, 90)) * MINUTE
        handover_d = draw(st.none() | handover_durations)
        clear_d = draw(st.none() | handover_durations)
        handover_at = None if handover_d is None else arrived + handover_d
        clear_at = None if clear_d is None else arrived + clear_d
        out.append(_event(EventType.HANDOVER, trust, incident_id, t(),
                          site=draw(sites), arrived_at_hospital=arrived, handover_at=handover_at, clear_at=clear_at))
    return out


@st.composite
def call_events(draw: st.DrawFn, trust: str, call_id: str, incident_ids: Sequence[str] = ()) -> list[Event]:
    """One NHS 111 call (one to three events: a repeat with corrections), possibly linked to one of
    ``incident_ids`` or to an incident that does not exist."""
    base = draw(base_times())
    link_to = st.none() | st.sampled_from([*incident_ids, "INC-missing"])
    return [
        _event(EventType.CALL_111, trust, call_id, base + draw(st.integers(0, 3)) * 5 * MINUTE,
               call_id=call_id, disposition_ambulance=draw(st.booleans()),
               linked_incident_id=draw(link_to), location=draw(locations))
        for _ in range(draw(st.integers(1, 3)))
    ]


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


@st.composite
def event_sets(draw: st.DrawFn, min_incidents: int = 1, max_incidents: int = 6, max_calls: int = 3) -> list[Event]:
    """Several interleaved incidents (and 111 calls) of a few trusts, each event with a distinct id;
    ids are shuffled relative to times so that tie-breaks by id are exercised."""
    n = draw(st.integers(min_incidents, max_incidents))
    events: list[Event] = []
    ids_by_trust: dict[str, list[str]] = {}
    for i in range(n):
        trust = draw(st.sampled_from(TRUSTS))
        inc = f"INC-{i}"
        ids_by_trust.setdefault(trust, []).append(inc)
        events += draw(incident_events(trust, inc))
    for j in range(draw(st.integers(0, max_calls))):
        trust = draw(st.sampled_from(TRUSTS))
        events += draw(call_events(trust, f"CALL-{j}", ids_by_trust.get(trust, [])))
    numbers = draw(st.permutations(range(len(events))))
    events = [replace(e, event_id=event_id(k)) for e, k in zip(events, numbers, strict=True)]
    return draw(st.permutations(events))


@st.composite
def arrivals(draw: st.DrawFn, events: Sequence[Event], max_repeats: int = 10) -> list[Event]:
    """``events`` in any order with repeats (same id, same content; a replay may change produced_time)."""
    out = list(draw(st.permutations(list(events))))
    if out:
        for _ in range(draw(st.integers(0, max_repeats))):
            e = draw(st.sampled_from(events))
            e = replace(e, produced_time=draw(st.none() | st.integers(0, 10**13)))
            out.insert(draw(st.integers(0, len(out))), e)
    return out


@dataclass(frozen=True)
class Case:
    """An event set and one arrival order of it (with repeats), for tests that need both."""

    events: list[Event]
    arrived: list[Event]


@st.composite
def cases(draw: st.DrawFn, max_incidents: int = 6) -> Case:
    events = draw(event_sets(max_incidents=max_incidents))
    return Case(events, draw(arrivals(events)))
