"""Incident state and its reducer: fold one incident's events, in any order, into one state.

Events arrive out of order, repeated and corrected (domain.md "Incident lifecycle"). The reducer
must give the same state for any arrival order and ignore repeats, so that a replayed or
re-partitioned stream, and the batch oracle, agree. Two rules guarantee that:

- the state remembers the ids of the events it has applied (an incident has a handful), and a
  seen id changes nothing;
- every field is a commutative, associative merge: ``min`` (first arrival), or "the value of the
  event with the greatest ``(event_time, event_id)``" (a last-writer-wins register, ``Key``) taken
  over the events that give that value.

``version`` is the number of distinct events applied, hence also order independent: downstream
keeps, per incident, the row with the highest version (ClickHouse ReplacingMergeTree).

NHS 111 calls (``call_111`` events) are folded separately into :class:`Call111State`, keyed by
trust and call id (the event's ``incident_id`` repeats the call id); :func:`state_key` tells them
apart so an incident and a call with the same reference never share a state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from domain.events import CONVEYED, Category, Disposition, Event, EventType, Location, Source

DAY_MS: Final = 86_400_000
LATE_HORIZON_MS: Final = 7 * DAY_MS
"""Keep a complete incident this long after its last event for late events (AMB_LATE_HORIZON_DAYS)."""
STALE_HORIZON_MS: Final = 4 * LATE_HORIZON_MS
"""Drop an incident that never completes this long after its last event."""

Key = tuple[int, str]
"""(event_time, event_id): the event with the greatest key wins a register."""

INCIDENT: Final = "incident"
CALL: Final = "call_111"
StateKey = tuple[str, str, str]
"""(trust, kind, id) with kind ``incident`` or ``call_111``."""


def state_key(event: Event) -> StateKey:
    """Which state an event folds into. Stream tables may use ``":".join(key)``: trust and kind
    contain no colon, so the string splits back unambiguously (``split(":", 2)``)."""
    kind = CALL if event.event_type == EventType.CALL_111 else INCIDENT
    return (event.trust, kind, event.incident_id)


@dataclass(slots=True)
class IncidentState:
    """What is known about one incident. Mutable for speed; :func:`apply` never mutates its input."""

    trust: str
    incident_id: str
    seen: frozenset[str] = frozenset()
    first_event_time: int = 0  # min event_time (meaningful once version > 0)
    last_event_time: int = 0  # max event_time: the late-arrival horizon runs from here
    # incident_created: the whole record of the winning created event
    created_key: Key | None = None
    clock_start: int | None = None
    source: Source | None = None
    location: Location | None = None
    # incident_created or category_changed
    category_key: Key | None = None
    category: Category | None = None
    # response_arrived: the earliest
    first_arrival: int | None = None
    # disposition: the winning disposition event
    disposition_key: Key | None = None
    disposition: Disposition | None = None
    destination_site: str | None = None
    # handover: each field from the winning handover event that gives it
    site_key: Key | None = None
    site: str | None = None
    arrived_key: Key | None = None
    arrived_at_hospital: int | None = None
    handover_key: Key | None = None
    handover_at: int | None = None
    clear_key: Key | None = None
    clear_at: int | None = None

    @property
    def version(self) -> int:
        """Distinct events applied: grows by one per new event, unchanged by a duplicate."""
        return len(self.seen)

    def copy(self) -> IncidentState:
        return IncidentState(
            self.trust, self.incident_id, self.seen, self.first_event_time, self.last_event_time,
            self.created_key, self.clock_start, self.source, self.location,
            self.category_key, self.category, self.first_arrival,
            self.disposition_key, self.disposition, self.destination_site,
            self.site_key, self.site, self.arrived_key, self.arrived_at_hospital,
            self.handover_key, self.handover_at, self.clear_key, self.clear_at,
        )


@dataclass(slots=True)
class Call111State:
    """One NHS 111 call. ``first_event_time`` is the call time (the period it counts in)."""

    trust: str
    call_id: str
    seen: frozenset[str] = frozenset()
    first_event_time: int = 0
    last_event_time: int = 0
    call_key: Key | None = None  # winning call_111 event: location and disposition_ambulance
    location: Location | None = None
    disposition_ambulance: bool | None = None
    link_key: Key | None = None  # winning event among those that give a linked incident
    linked_incident_id: str | None = None

    @property
    def version(self) -> int:
        return len(self.seen)

    def copy(self) -> Call111State:
        return Call111State(
            self.trust, self.call_id, self.seen, self.first_event_time, self.last_event_time,
            self.call_key, self.location, self.disposition_ambulance, self.link_key, self.linked_incident_id,
        )


State = IncidentState | Call111State


def _check(event: Event, trust: str, ident: str, want_call: bool) -> None:
    is_call = event.event_type == EventType.CALL_111
    if event.trust != trust or event.incident_id != ident or is_call != want_call:
        kind = CALL if want_call else INCIDENT
        raise ValueError(
            f"event {event.event_id} ({event.event_type}, {event.trust}:{event.incident_id}) "
            f"does not belong to {kind} state {trust}:{ident}"
        )


def _first_sight(state: IncidentState | Call111State, event: Event) -> bool:
    """Record ``event``'s id and widen the state's event-time span; False if the id was seen before
    (a duplicate changes nothing). Shared by both reducers so they dedupe identically."""
    eid = event.event_id
    if eid in state.seen:
        return False
    t = event.event_time
    if not state.seen:
        state.first_event_time = state.last_event_time = t
    elif t < state.first_event_time:
        state.first_event_time = t
    elif t > state.last_event_time:
        state.last_event_time = t
    state.seen = state.seen | {eid}
    return True


def update(state: IncidentState, event: Event) -> bool:
    """Fold ``event`` into ``state`` IN PLACE; False (and no change) if its id was already seen.
    The hot path of the stream worker, whose state comes fresh from its table anyway."""
    _check(event, state.trust, state.incident_id, False)
    if not _first_sight(state, event):
        return False
    t, eid = event.event_time, event.event_id
    key = (t, eid)
    et = event.event_type
    if et == EventType.INCIDENT_CREATED:
        if state.created_key is None or key > state.created_key:
            state.created_key = key
            state.clock_start = event.clock_start
            state.source = event.source
            state.location = event.location
        if event.category is not None and (state.category_key is None or key > state.category_key):
            state.category_key, state.category = key, event.category
    elif et == EventType.CATEGORY_CHANGED:
        if event.category is not None and (state.category_key is None or key > state.category_key):
            state.category_key, state.category = key, event.category
    elif et == EventType.RESPONSE_ARRIVED:
        if state.first_arrival is None or t < state.first_arrival:
            state.first_arrival = t
    elif et == EventType.DISPOSITION:
        if event.disposition is not None and (state.disposition_key is None or key > state.disposition_key):
            state.disposition_key = key
            state.disposition = event.disposition
            state.destination_site = event.destination_site
    elif et == EventType.HANDOVER:
        if event.site is not None and (state.site_key is None or key > state.site_key):
            state.site_key, state.site = key, event.site
        if event.arrived_at_hospital is not None and (state.arrived_key is None or key > state.arrived_key):
            state.arrived_key, state.arrived_at_hospital = key, event.arrived_at_hospital
        if event.handover_at is not None and (state.handover_key is None or key > state.handover_key):
            state.handover_key, state.handover_at = key, event.handover_at
        if event.clear_at is not None and (state.clear_key is None or key > state.clear_key):
            state.clear_key, state.clear_at = key, event.clear_at
    return True


def update_call(state: Call111State, event: Event) -> bool:
    """:func:`update` for a 111 call."""
    _check(event, state.trust, state.call_id, True)
    if not _first_sight(state, event):
        return False
    t, eid = event.event_time, event.event_id
    key = (t, eid)
    if state.call_key is None or key > state.call_key:
        state.call_key = key
        state.location = event.location
        state.disposition_ambulance = event.disposition_ambulance
    if event.linked_incident_id is not None and (state.link_key is None or key > state.link_key):
        state.link_key, state.linked_incident_id = key, event.linked_incident_id
    return True


def apply(state: IncidentState | None, event: Event) -> IncidentState:
    """Pure reducer: the state after ``event``. Returns ``state`` itself for a duplicate, else a new
    object (``state`` is not modified). ``None`` starts a new incident."""
    if state is None:
        new = IncidentState(event.trust, event.incident_id)
    elif event.event_id in state.seen:
        _check(event, state.trust, state.incident_id, False)
        return state
    else:
        new = state.copy()
    update(new, event)
    return new


def apply_call(state: Call111State | None, event: Event) -> Call111State:
    """:func:`apply` for a 111 call."""
    if state is None:
        new = Call111State(event.trust, event.incident_id)
    elif event.event_id in state.seen:
        _check(event, state.trust, state.call_id, True)
        return state
    else:
        new = state.copy()
    update_call(new, event)
    return new


def apply_any(state: State | None, event: Event) -> State:
    """Dispatch on the event type: a call_111 event folds into a :class:`Call111State`."""
    if isinstance(state, IncidentState):
        return apply(state, event)  # raises for a call_111 event
    if isinstance(state, Call111State):
        return apply_call(state, event)  # raises for an incident event
    if event.event_type == EventType.CALL_111:
        return apply_call(None, event)
    return apply(None, event)


def fold(events: Iterable[Event]) -> dict[StateKey, State]:
    """Fold a batch of events, of any incidents and calls, into one state per :func:`state_key`."""
    states: dict[StateKey, State] = {}
    for e in events:
        k = state_key(e)
        s = states.get(k)
        if s is None:
            s = states[k] = Call111State(e.trust, e.incident_id) if k[1] == CALL else IncidentState(
                e.trust, e.incident_id)
        if isinstance(s, IncidentState):
            update(s, e)
        else:
            update_call(s, e)
    return states


# ---------------------------------------------------------------------------------- close rules
def is_complete(state: State) -> bool:
    """The lifecycle is over: created, a disposition, and for a conveyed incident the handover
    complete or the crew clear. A 111 call is complete once seen."""
    if isinstance(state, Call111State):
        return state.call_key is not None
    if state.created_key is None or state.disposition is None:
        return False
    if state.disposition in CONVEYED:
        return state.handover_at is not None or state.clear_at is not None
    return True


def expires_at(state: State, horizon_ms: int = LATE_HORIZON_MS, stale_ms: int = STALE_HORIZON_MS) -> int:
    """When the state may be dropped: ``horizon_ms`` after its last event if complete, else ``stale_ms``."""
    return state.last_event_time + (horizon_ms if is_complete(state) else stale_ms)


def is_closed(state: State, now_ms: int, horizon_ms: int = LATE_HORIZON_MS,
              stale_ms: int = STALE_HORIZON_MS) -> bool:
    """May the worker expire this state? Complete and no event for ``horizon_ms`` (or incomplete and
    nothing for ``stale_ms``). Times are event times: when replaying, pass the stream time (the
    greatest event time seen), not the wall clock. An event for an expired state would start a new
    state at version 1, whose rows lose to the kept higher version: route such events to the DLQ."""
    return now_ms >= expires_at(state, horizon_ms, stale_ms)


# ------------------------------------------------------------------------------- serialisation
def _key(k: Key | None) -> list[Any] | None:
    return None if k is None else [k[0], k[1]]


def _unkey(v: Any) -> Key | None:
    return None if v is None else (int(v[0]), str(v[1]))


def _loc(loc: Location | None) -> dict[str, Any] | None:
    if loc is None:
        return None
    return {"postcode": loc.postcode, "lat": loc.lat, "lon": loc.lon, "easting": loc.easting, "northing": loc.northing}


def _unloc(v: Any) -> Location | None:
    return None if v is None else Location(**v)


def to_dict(state: State) -> dict[str, Any]:
    """JSON-safe dict (lists, strings, numbers, None) for a stream table's changelog."""
    common: dict[str, Any] = {
        "trust": state.trust, "seen": sorted(state.seen),
        "first_event_time": state.first_event_time, "last_event_time": state.last_event_time,
        "location": _loc(state.location),
    }
    if isinstance(state, Call111State):
        return common | {
            "kind": CALL, "call_id": state.call_id, "call_key": _key(state.call_key),
            "disposition_ambulance": state.disposition_ambulance,
            "link_key": _key(state.link_key), "linked_incident_id": state.linked_incident_id,
        }
    return common | {
        "kind": INCIDENT, "incident_id": state.incident_id,
        "created_key": _key(state.created_key), "clock_start": state.clock_start,
        "source": None if state.source is None else state.source.value,
        "category_key": _key(state.category_key),
        "category": None if state.category is None else state.category.value,
        "first_arrival": state.first_arrival,
        "disposition_key": _key(state.disposition_key),
        "disposition": None if state.disposition is None else state.disposition.value,
        "destination_site": state.destination_site,
        "site_key": _key(state.site_key), "site": state.site,
        "arrived_key": _key(state.arrived_key), "arrived_at_hospital": state.arrived_at_hospital,
        "handover_key": _key(state.handover_key), "handover_at": state.handover_at,
        "clear_key": _key(state.clear_key), "clear_at": state.clear_at,
    }


def from_dict(d: dict[str, Any]) -> State:
    """Inverse of :func:`to_dict`; ValueError on an unknown kind."""
    kind = d.get("kind")
    if kind == CALL:
        return Call111State(
            d["trust"], d["call_id"], frozenset(d["seen"]), d["first_event_time"], d["last_event_time"],
            _unkey(d["call_key"]), _unloc(d["location"]), d["disposition_ambulance"],
            _unkey(d["link_key"]), d["linked_incident_id"],
        )
    if kind != INCIDENT:
        raise ValueError(f"unknown state kind {kind!r}; expected {INCIDENT!r} or {CALL!r}")
    return IncidentState(
        d["trust"], d["incident_id"], frozenset(d["seen"]), d["first_event_time"], d["last_event_time"],
        _unkey(d["created_key"]), d["clock_start"], None if d["source"] is None else Source(d["source"]),
        _unloc(d["location"]), _unkey(d["category_key"]),
        None if d["category"] is None else Category(d["category"]), d["first_arrival"],
        _unkey(d["disposition_key"]), None if d["disposition"] is None else Disposition(d["disposition"]),
        d["destination_site"], _unkey(d["site_key"]), d["site"], _unkey(d["arrived_key"]),
        d["arrived_at_hospital"], _unkey(d["handover_key"]), d["handover_at"],
        _unkey(d["clear_key"]), d["clear_at"],
    )


# --------------------------------------------------------------------------------- the reference
def reference_state(events: Iterable[Event]) -> IncidentState | None:
    """The spec, literally: each field computed from all distinct events of one incident at once.
    Slow (it looks at every event); used by the tests as the definition the reducer must match and
    by the bench as the naive baseline. None if there are no events."""
    distinct: dict[str, Event] = {}
    for e in events:
        distinct.setdefault(e.event_id, e)
    if not distinct:
        return None
    evs = list(distinct.values())
    first = evs[0]
    s = IncidentState(first.trust, first.incident_id, frozenset(distinct))
    s.first_event_time = min(e.event_time for e in evs)
    s.last_event_time = max(e.event_time for e in evs)

    def winner(types: tuple[EventType, ...], field: str | None = None) -> Event | None:
        cands = [e for e in evs if e.event_type in types and (field is None or getattr(e, field) is not None)]
        return max(cands, key=lambda e: (e.event_time, e.event_id), default=None)

    def key(e: Event | None) -> Key | None:
        return None if e is None else (e.event_time, e.event_id)

    if (c := winner((EventType.INCIDENT_CREATED,))) is not None:
        s.created_key, s.clock_start, s.source, s.location = key(c), c.clock_start, c.source, c.location
    if (c := winner((EventType.INCIDENT_CREATED, EventType.CATEGORY_CHANGED), "category")) is not None:
        s.category_key, s.category = key(c), c.category
    s.first_arrival = min((e.event_time for e in evs if e.event_type == EventType.RESPONSE_ARRIVED), default=None)
    if (c := winner((EventType.DISPOSITION,), "disposition")) is not None:
        s.disposition_key, s.disposition, s.destination_site = key(c), c.disposition, c.destination_site
    h = (EventType.HANDOVER,)
    if (c := winner(h, "site")) is not None:
        s.site_key, s.site = key(c), c.site
    if (c := winner(h, "arrived_at_hospital")) is not None:
        s.arrived_key, s.arrived_at_hospital = key(c), c.arrived_at_hospital
    if (c := winner(h, "handover_at")) is not None:
        s.handover_key, s.handover_at = key(c), c.handover_at
    if (c := winner(h, "clear_at")) is not None:
        s.clear_key, s.clear_at = key(c), c.clear_at
    return s
