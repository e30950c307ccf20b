"""Fact rows: what the sink loads into ClickHouse, one row per state version, flat and simply typed.

Attribution is injected. The state keeps the incident's location; an :class:`Attributor` places
locations in LSOA 2021 and a :class:`Hierarchy` maps an LSOA to the areas above it, with the
boundaries in force at the incident's time (geography is versioned: ICBs merge from April 2026).
Both take batches, as the stream worker attributes a batch at a time. An incident that cannot be
placed keeps code ``unknown`` at every level and says why in ``geo_status``; it is never dropped.

Sink contract: the tables are ReplacingMergeTree(version) ordered by (trust, incident_id) (or
(trust, call_id)) and nothing else: a later version may change the period, the geography or the
category, so none of those may be in the sorting key. Query with FINAL (or argMax by version).
Durations are integer milliseconds so sums are exact; ``None`` is a NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

from domain.events import CONVEYED, Disposition, Location
from domain.incident import Call111State, IncidentState, is_complete
from domain.metrics import UNKNOWN, Periods, lost_ms, periods

GEO_OK: Final = "ok"
"""Placed in an LSOA and the hierarchy. Attributors may return other statuses for a failure."""
GEO_NO_LOCATION: Final = "no_location"
"""No location known (no incident_created yet, or it carried none)."""
GEO_UNMATCHED: Final = "unmatched"
"""The attributor gave no LSOA but claimed ``ok``."""
GEO_NOT_IN_HIERARCHY: Final = "not_in_hierarchy"
"""An LSOA code the hierarchy does not know at that date."""


@dataclass(frozen=True, slots=True)
class Areas:
    """The areas containing one LSOA 2021 at one date."""

    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str


class Attributor(Protocol):
    """Places incident locations in LSOA 2021 (implemented by the geography index)."""

    def attribute(self, locations: Sequence[Location], times_ms: Sequence[int]) -> Sequence[tuple[str | None, str]]:
        """One ``(lsoa21_code or None, status)`` per location, in order; ``times_ms`` are the incidents'
        times (clock start), for boundaries that change over time. Status ``ok`` on success."""
        ...


class Hierarchy(Protocol):
    """LSOA 2021 → MSOA, LAD, SICBL, ICB, region, with the boundaries in force at ``at_ms``."""

    def areas(self, lsoa21: str, at_ms: int) -> Areas | None:
        """None if the code is unknown at that date."""
        ...


@dataclass(frozen=True, slots=True)
class Geo:
    """An attributed place: every level's code (``unknown`` when unplaced) and why."""

    lsoa: str
    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str
    status: str


def unknown_geo(status: str) -> Geo:
    return Geo(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, status)


def attribute(
    locations: Sequence[Location | None], times_ms: Sequence[int], attributor: Attributor, hierarchy: Hierarchy,
) -> list[Geo]:
    """Attribute a batch in one attributor call; absent or empty locations are not sent to it."""
    if len(locations) != len(times_ms):
        raise ValueError(f"{len(locations)} locations but {len(times_ms)} times")
    todo: list[int] = []
    locs: list[Location] = []
    for i, loc in enumerate(locations):
        if loc is not None and not loc.empty:
            todo.append(i)
            locs.append(loc)
    out = [unknown_geo(GEO_NO_LOCATION)] * len(locations)
    if not todo:
        return out
    placed = attributor.attribute(locs, [times_ms[i] for i in todo])
    if len(placed) != len(todo):
        raise ValueError(f"attributor returned {len(placed)} results for {len(todo)} locations")
    for i, (code, status) in zip(todo, placed, strict=True):
        if code is None:
            out[i] = unknown_geo(GEO_UNMATCHED if status == GEO_OK else status)
            continue
        areas = hierarchy.areas(code, times_ms[i])
        if areas is None:
            out[i] = unknown_geo(GEO_NOT_IN_HIERARCHY)
        else:
            out[i] = Geo(code, areas.msoa, areas.lad, areas.sicbl, areas.icb, areas.region, status)
    return out


def period_time(state: IncidentState | Call111State) -> int:
    """The instant an incident counts at: its clock start, or (no incident_created yet) its earliest
    event; a 111 call's earliest event. Also the date for versioned boundaries."""
    if isinstance(state, IncidentState) and state.clock_start is not None:
        return state.clock_start
    return state.first_event_time


def attribute_states(
    states: Sequence[IncidentState | Call111State], attributor: Attributor, hierarchy: Hierarchy,
) -> list[Geo]:
    """:func:`attribute` for states: each at its location and :func:`period_time`."""
    return attribute([s.location for s in states], [period_time(s) for s in states], attributor, hierarchy)


@dataclass(frozen=True, slots=True)
class IncidentFact:
    """One incident at one version. Period keys are epoch ms UTC of the Europe/London period start
    (``domain.metrics.periods``); ``open`` = no disposition yet (not in the A7 denominator)."""

    trust: str
    incident_id: str
    version: int
    clock_start_ms: int | None
    period_ms: int
    hour_ms: int
    day_ms: int
    week_ms: int
    month_ms: int
    fy_ms: int
    category: str | None
    source: str | None
    disposition: str | None
    open: bool
    conveyed: bool
    complete: bool
    response_ms: int | None  # first arrival − clock start; None for hear and treat, no arrival, or negative
    response_negative: bool  # arrival before clock start: a data error, counted in quality
    destination_site: str | None
    site: str | None  # handover site, else destination site
    handover_duration_ms: int | None  # handover_at − arrived_at_hospital; None if unknown or negative
    handover_negative: bool
    lsoa: str
    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str
    geo_status: str
    first_event_ms: int
    last_event_ms: int


@dataclass(frozen=True, slots=True)
class HandoverFact:
    """A conveyed incident's hospital handover at one version (exists once an arrival at hospital is
    known). Carries the incident's period and geography, so handover is reported by site, by the
    incident's ICB and, via a site → ICB map, by the hosting ICB."""

    trust: str
    incident_id: str
    version: int
    site: str  # handover site, else destination site, else ``unknown``
    arrived_at_ms: int
    handover_at_ms: int | None
    clear_at_ms: int | None
    handover_duration_ms: int | None  # None if no handover yet or handover before arrival
    clear_duration_ms: int | None
    lost_ms: int  # max(0, duration − 15 min); 0 without a duration
    disposition: str | None
    category: str | None
    hour_ms: int
    day_ms: int
    week_ms: int
    month_ms: int
    fy_ms: int
    lsoa: str
    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str
    geo_status: str


@dataclass(frozen=True, slots=True)
class Call111Fact:
    """One NHS 111 call at one version, by the call's place and time."""

    trust: str
    call_id: str
    version: int
    call_time_ms: int
    hour_ms: int
    day_ms: int
    week_ms: int
    month_ms: int
    fy_ms: int
    disposition_ambulance: bool | None
    linked_incident_id: str | None
    lsoa: str
    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str
    geo_status: str


INCIDENT_COLUMNS: Final = tuple(f.name for f in fields(IncidentFact))
HANDOVER_COLUMNS: Final = tuple(f.name for f in fields(HandoverFact))
CALL_COLUMNS: Final = tuple(f.name for f in fields(Call111Fact))


def row(fact: IncidentFact | HandoverFact | Call111Fact) -> tuple[Any, ...]:
    """The fact as a tuple in column order (``*_COLUMNS``), for columnar inserts."""
    return tuple(getattr(fact, name) for name in type(fact).__slots__)


def incident_fact(state: IncidentState, geo: Geo) -> IncidentFact:
    t = period_time(state)
    p = periods(t)
    disp = state.disposition
    response = None
    negative = False
    if state.first_arrival is not None and state.clock_start is not None and disp != Disposition.HEAR_AND_TREAT:
        response = state.first_arrival - state.clock_start
        if response < 0:
            response, negative = None, True
    handover, h_negative = _duration(state.arrived_at_hospital, state.handover_at)
    return IncidentFact(
        state.trust, state.incident_id, state.version, state.clock_start, t,
        p.hour, p.day, p.week, p.month, p.fy,
        None if state.category is None else state.category.value,
        None if state.source is None else state.source.value,
        None if disp is None else disp.value, disp is None, disp in CONVEYED, is_complete(state),
        response, negative, state.destination_site, state.site or state.destination_site,
        handover, h_negative,
        geo.lsoa, geo.msoa, geo.lad, geo.sicbl, geo.icb, geo.region, geo.status,
        state.first_event_time, state.last_event_time,
    )


def _duration(start: int | None, end: int | None) -> tuple[int | None, bool]:
    if start is None or end is None:
        return None, False
    d = end - start
    return (None, True) if d < 0 else (d, False)


def handover_fact(state: IncidentState, geo: Geo, incident: IncidentFact | None = None) -> HandoverFact | None:
    """None until an arrival at hospital is known. ``incident``: the state's :func:`incident_fact`,
    if the caller has it, whose periods are reused (the worker's hot path)."""
    arrived = state.arrived_at_hospital
    if arrived is None:
        return None
    p = periods(period_time(state)) if incident is None else Periods(
        incident.hour_ms, incident.day_ms, incident.week_ms, incident.month_ms, incident.fy_ms)
    handover, _ = _duration(arrived, state.handover_at)
    clear, _ = _duration(arrived, state.clear_at)
    return HandoverFact(
        state.trust, state.incident_id, state.version, state.site or state.destination_site or UNKNOWN,
        arrived, state.handover_at, state.clear_at, handover, clear,
        0 if handover is None else lost_ms(handover),
        None if state.disposition is None else state.disposition.value,
        None if state.category is None else state.category.value,
        p.hour, p.day, p.week, p.month, p.fy,
        geo.lsoa, geo.msoa, geo.lad, geo.sicbl, geo.icb, geo.region, geo.status,
    )


def call_fact(state: Call111State, geo: Geo) -> Call111Fact:
    t = state.first_event_time
    p = periods(t)
    return Call111Fact(
        state.trust, state.call_id, state.version, t, p.hour, p.day, p.week, p.month, p.fy,
        state.disposition_ambulance, state.linked_incident_id,
        geo.lsoa, geo.msoa, geo.lad, geo.sicbl, geo.icb, geo.region, geo.status,
    )


@dataclass(frozen=True, slots=True)
class Facts:
    incidents: list[IncidentFact]
    handovers: list[HandoverFact]
    calls: list[Call111Fact]


def build_facts(
    states: Sequence[IncidentState | Call111State], attributor: Attributor, hierarchy: Hierarchy,
) -> Facts:
    """All fact rows for a batch of states (one attributor call). The worker's emit step."""
    geos = attribute_states(states, attributor, hierarchy)
    out = Facts([], [], [])
    for s, g in zip(states, geos, strict=True):
        if isinstance(s, Call111State):
            out.calls.append(call_fact(s, g))
            continue
        out.incidents.append(incident_fact(s, g))
        h = handover_fact(s, g)
        if h is not None:
            out.handovers.append(h)
    return out
