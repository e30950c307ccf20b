"""The incident reducer: order independence, idempotence, the spec's merge rules, close rules."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import MINUTE, arrivals, event_id, event_sets, incident_events, utc_ms

from domain.events import Category, Disposition, Event, EventType, Location, Source
from domain.incident import (
    LATE_HORIZON_MS,
    STALE_HORIZON_MS,
    Call111State,
    IncidentState,
    apply,
    apply_any,
    apply_call,
    expires_at,
    fold,
    from_dict,
    is_closed,
    is_complete,
    reference_state,
    state_key,
    to_dict,
    update,
)

# No per-example deadline: tests never assert on timing and the machine may be busy.
relaxed = settings(deadline=None)

T0 = utc_ms("2026-05-01T10:00")


def ev(n: int, event_type: EventType, t_min: float = 0, incident: str = "INC-1", trust: str = "RX6",
       **fields: object) -> Event:
    """An event with id number ``n`` at T0 + ``t_min`` minutes."""
    return Event(event_id(n), event_type, trust, incident, T0 + int(t_min * MINUTE), **fields)  # type: ignore[arg-type]


def created(n: int, t_min: float = 0, category: Category = Category.C2, **kw: object) -> Event:
    kw.setdefault("clock_start", T0)
    kw.setdefault("source", Source.CALL_999)
    kw.setdefault("location", Location(postcode="AA1 1AA"))
    return ev(n, EventType.INCIDENT_CREATED, t_min, category=category, **kw)


def reduce(events: list[Event]) -> dict[tuple[str, str, str], object]:
    states: dict[tuple[str, str, str], object] = {}
    for e in events:
        k = state_key(e)
        states[k] = apply_any(states.get(k), e)  # type: ignore[arg-type]
    return states


# ------------------------------------------------------------------------------------ properties
@relaxed
@given(st.data())
def test_any_arrival_order_and_repeats_give_the_same_states(data: st.DataObject) -> None:
    events = data.draw(event_sets())
    first = reduce(events)
    again = reduce(data.draw(arrivals(events)))
    assert again == first
    assert fold(events) == first


@relaxed
@given(event_sets())
def test_version_is_the_number_of_distinct_events(events: list[Event]) -> None:
    states = reduce(events + events[: len(events) // 2])
    by_key: dict[object, set[str]] = defaultdict(set)
    for e in events:
        by_key[state_key(e)].add(e.event_id)
    assert {k: s.version for k, s in states.items()} == {k: len(v) for k, v in by_key.items()}  # type: ignore[attr-defined]


@relaxed
@given(st.data())
def test_reducer_matches_the_spec_literal_reference(data: st.DataObject) -> None:
    events = data.draw(incident_events("RX6", "INC-1"))
    events = [replace(e, event_id=event_id(i)) for i, e in enumerate(data.draw(st.permutations(events)))]
    state = None
    for e in data.draw(arrivals(events)):
        state = apply(state, e)
    assert state == reference_state(events)


@relaxed
@given(st.data())
def test_version_is_monotonic_and_duplicates_return_the_same_object(data: st.DataObject) -> None:
    events = [e for e in data.draw(event_sets(max_incidents=1, max_calls=0))]
    state: IncidentState | None = None
    for e in data.draw(arrivals(events)):
        before = state
        state = apply(state, e)
        if before is not None:
            if e.event_id in before.seen:
                assert state is before
            else:
                assert state.version == before.version + 1
                assert state is not before


@relaxed
@given(event_sets(max_calls=0))
def test_apply_does_not_mutate_its_input(events: list[Event]) -> None:
    states: dict[object, IncidentState] = {}
    snapshots = []
    for e in events:
        k = state_key(e)
        s = states.get(k)
        if s is not None:
            snapshots.append((s, to_dict(s)))
        states[k] = apply(s, e)
    assert all(to_dict(s) == d for s, d in snapshots)


@relaxed
@given(event_sets())
def test_serialisation_round_trips_through_json(events: list[Event]) -> None:
    for s in fold(events).values():
        assert from_dict(json.loads(json.dumps(to_dict(s)))) == s


# -------------------------------------------------------------------------------------- examples
def test_category_latest_event_time_wins_across_created_and_changed() -> None:
    events = [
        created(1, 0, Category.C3),
        ev(2, EventType.CATEGORY_CHANGED, 5, category=Category.C1),
        ev(3, EventType.CATEGORY_CHANGED, 2, category=Category.C4),  # older re-triage, arrives last
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        s = None
        for i in order:
            s = apply(s, events[i])
        assert s is not None and s.category == Category.C1


def test_a_corrected_incident_created_replaces_clock_start_and_location_but_not_a_later_retriage() -> None:
    s = fold([
        created(1, 0, Category.C3, clock_start=T0, location=Location(postcode="AA1 1AA")),
        ev(2, EventType.CATEGORY_CHANGED, 1, category=Category.C2),
        created(3, 0.5, Category.C4, clock_start=T0 - MINUTE, location=Location(postcode="AA2 2AA")),
    ])[("RX6", "incident", "INC-1")]
    assert isinstance(s, IncidentState)
    assert (s.clock_start, s.location, s.category) == (T0 - MINUTE, Location(postcode="AA2 2AA"), Category.C2)


def test_disposition_tie_on_event_time_goes_to_the_greater_event_id() -> None:
    a = ev(7, EventType.DISPOSITION, 30, disposition=Disposition.CONVEYED_ED, destination_site="RXX01")
    b = ev(5, EventType.DISPOSITION, 30, disposition=Disposition.SEE_AND_TREAT)
    c = ev(9, EventType.DISPOSITION, 20, disposition=Disposition.HEAR_AND_TREAT)  # older, greatest id
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        s = None
        for e in order:
            s = apply(s, e)
        assert s is not None
        assert (s.disposition, s.destination_site) == (Disposition.CONVEYED_ED, "RXX01")


def test_first_arrival_is_the_earliest_response() -> None:
    s = fold([ev(1, EventType.RESPONSE_ARRIVED, 12), ev(2, EventType.RESPONSE_ARRIVED, 8),
              ev(3, EventType.RESPONSE_ARRIVED, 20)])[("RX6", "incident", "INC-1")]
    assert isinstance(s, IncidentState) and s.first_arrival == T0 + 8 * MINUTE


def test_each_handover_timestamp_once_given_comes_from_the_latest_event_giving_it() -> None:
    arrived, later_arrived = T0 + 40 * MINUTE, T0 + 41 * MINUTE
    events = [
        ev(1, EventType.HANDOVER, 40, site="RXX01", arrived_at_hospital=arrived),
        ev(2, EventType.HANDOVER, 60, site="RXX01", arrived_at_hospital=arrived, handover_at=T0 + 60 * MINUTE),
        ev(3, EventType.HANDOVER, 70, site="RYY02", arrived_at_hospital=later_arrived, clear_at=T0 + 70 * MINUTE),
        ev(4, EventType.HANDOVER, 50, site="RZZ03", arrived_at_hospital=T0, handover_at=T0 + 55 * MINUTE),
    ]
    for seed in range(5):
        random.Random(seed).shuffle(events)
        s = fold(events)[("RX6", "incident", "INC-1")]
        assert isinstance(s, IncidentState)
        # clear only given by #3; handover by #2 (t=60) over #4 (t=50); arrival and site by #3 (t=70)
        assert (s.site, s.arrived_at_hospital, s.handover_at, s.clear_at) == (
            "RYY02", later_arrived, T0 + 60 * MINUTE, T0 + 70 * MINUTE)


def test_a_duplicate_leaves_the_version_unchanged() -> None:
    e = created(1)
    s1 = apply(None, e)
    s2 = apply(s1, replace(e, produced_time=123))
    assert s2 is s1 and s2.version == 1


def test_events_of_another_incident_or_kind_are_refused() -> None:
    s = apply(None, created(1))
    with pytest.raises(ValueError, match="does not belong"):
        apply(s, ev(2, EventType.RESPONSE_ARRIVED, incident="INC-2"))
    with pytest.raises(ValueError, match="does not belong"):
        apply(s, ev(3, EventType.RESPONSE_ARRIVED, trust="RRU"))
    with pytest.raises(ValueError, match="does not belong"):
        apply(None, ev(4, EventType.CALL_111, incident="INC-1", call_id="INC-1", disposition_ambulance=True))
    with pytest.raises(ValueError, match="does not belong"):
        update(s, ev(1, EventType.RESPONSE_ARRIVED, incident="INC-2"))  # even a seen id


def test_an_incident_and_a_111_call_with_the_same_reference_do_not_share_a_state() -> None:
    call = ev(2, EventType.CALL_111, 1, incident="X", call_id="X", disposition_ambulance=True,
              linked_incident_id="INC-1")
    inc = created(1, incident="X")
    states = fold([inc, call])
    assert len(states) == 2
    c = states[("RX6", "call_111", "X")]
    assert isinstance(c, Call111State) and c.linked_incident_id == "INC-1" and c.disposition_ambulance is True


def test_a_111_call_correction_keeps_a_link_once_given() -> None:
    first = ev(1, EventType.CALL_111, 0, incident="C", call_id="C", disposition_ambulance=True,
               linked_incident_id="INC-9")
    fix = ev(2, EventType.CALL_111, 5, incident="C", call_id="C", disposition_ambulance=False)
    for order in ([first, fix], [fix, first]):
        s = None
        for e in order:
            s = apply_call(s, e)
        assert s is not None
        assert (s.disposition_ambulance, s.linked_incident_id, s.first_event_time, s.version) == (False, "INC-9", T0, 2)


# ----------------------------------------------------------------------------------- close rules
def test_close_rules() -> None:
    s = fold([created(1), ev(2, EventType.DISPOSITION, 30, disposition=Disposition.SEE_AND_TREAT)])
    done = s[("RX6", "incident", "INC-1")]
    assert is_complete(done)
    last = T0 + 30 * MINUTE
    assert expires_at(done) == last + LATE_HORIZON_MS
    assert not is_closed(done, last + LATE_HORIZON_MS - 1) and is_closed(done, last + LATE_HORIZON_MS)

    conveyed = apply(None, ev(3, EventType.DISPOSITION, 30, disposition=Disposition.CONVEYED_ED,
                              destination_site="RXX01"))
    assert not is_complete(conveyed)  # no incident_created
    conveyed = apply(conveyed, created(1))
    assert not is_complete(conveyed)  # conveyed, no handover yet
    assert expires_at(conveyed) == last + STALE_HORIZON_MS
    waiting = apply(conveyed, ev(4, EventType.HANDOVER, 40, site="RXX01", arrived_at_hospital=T0 + 40 * MINUTE))
    assert not is_complete(waiting)
    assert is_complete(apply(waiting, ev(5, EventType.HANDOVER, 55, site="RXX01",
                                         arrived_at_hospital=T0 + 40 * MINUTE, clear_at=T0 + 55 * MINUTE)))
    assert is_closed(waiting, T0 + 40 * MINUTE + STALE_HORIZON_MS)
