"""The batch oracle: order/repeat independence, AmbSYS identities, level totals, corrections, the
stream-equivalence contract (fact rows of every version → highest version → same figures), and a
hand-worked example with exact numbers from domain.md's formulas."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    FAKE_ATTRIBUTOR,
    FAKE_HIERARCHY,
    MINUTE,
    SITE_ICB,
    Case,
    FakeAttributor,
    cases,
    event_id,
    event_sets,
    utc_ms,
)

from domain.events import Category, Disposition, Event, EventType, Location, Source
from domain.facts import build_facts
from domain.incident import IncidentState, apply_any, state_key
from domain.metrics import AMBSYS, ENGLAND, GEO_LEVELS, HOST_ICB, PERIOD_KINDS, SITE, Rollup, periods
from domain.oracle import Report, compute, latest, rollup, totals

# No per-example deadline: tests never assert on timing and the machine may be busy.
relaxed = settings(deadline=None)

COUNTS = {
    "dispositions": ("incidents", "hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere", "open"),
    "handover": ("arrivals", "handovers", "sum_ms", "over_15", "over_30", "over_45", "over_60", "lost_ms"),
    "calls_111": ("calls", "ambulance", "linked", "linked_found", "incidents_111"),
    **{f"response:{c}": ("count", "sum_ms") for c in ("C1", "C2", "C3", "C4")},
}


def oracle(events: list[Event], **kw: object) -> Report:
    return compute(events, FAKE_ATTRIBUTOR, FAKE_HIERARCHY, site_icb=SITE_ICB, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ properties
@relaxed
@given(cases())
def test_the_oracle_ignores_arrival_order_and_repeats(case: Case) -> None:
    a, b = oracle(case.events), oracle(case.arrived)
    assert a.rows == b.rows
    assert (a.incidents, a.handovers, a.calls) == (b.incidents, b.handovers, b.calls)
    assert (b.events, b.duplicates, b.conflicts) == (len(case.events), len(case.arrived) - len(case.events), 0)


@relaxed
@given(event_sets())
def test_ambsys_identities_hold_in_every_row(events: list[Event]) -> None:
    for (group, *_), n in oracle(events).rows.items():
        if group == "dispositions":
            a = {k: n[v] for k, v in AMBSYS.items()}
            assert a["A7"] == a["A17"] + a["A56"]
            assert a["A56"] == a["A53"] + a["A54"] + a["A55"]
            assert n["not_conveyed_ed"] == a["A17"] + a["A55"] + a["A54"]


@relaxed
@given(event_sets(max_incidents=8))
def test_level_totals_add_up(events: list[Event]) -> None:
    """Every incident counts once at each level: sum over LSOAs = … = sum over ICBs = sum over
    regions = England = sum over trusts, for every period; and every period kind covers all."""
    rows = oracle(events).rows
    for group, names in COUNTS.items():
        levels = GEO_LEVELS + ((SITE, HOST_ICB) if group == "handover" else ())
        for name in names:
            england = totals(rows, group, "england", name)
            for level in levels:
                assert totals(rows, group, level, name) == england, (group, name, level)
            per_kind = Counter[str]()
            for (kind, _), v in england.items():
                per_kind[kind] += v
            assert len(set(per_kind.values())) <= 1, (group, name, per_kind)
    # quality is kept per trust and for England
    for name in ("incidents", "events", "open", "geo_unknown"):
        assert totals(rows, "quality", "trust", name) == totals(rows, "quality", "england", name)


@relaxed
@given(event_sets())
def test_england_counts_equal_a_direct_count_of_final_incidents(events: list[Event]) -> None:
    r = oracle(events)
    want = Counter(f.disposition or "open" for f in r.incidents)
    got = Counter[str]()
    for (group, level, _code, kind, _p), n in r.rows.items():
        if group == "dispositions" and level == "england" and kind == "fy":
            for d in ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere", "open"):
                got[d] += n[d]  # type: ignore[assignment,operator]
    assert +got == want
    assert sum(f.version for f in r.incidents) + sum(c.version for c in r.calls) == r.events


@relaxed
@given(event_sets(), st.sampled_from(list(Disposition)), st.data())
def test_a_corrected_disposition_moves_the_incident_and_never_double_counts(
    events: list[Event], new: Disposition, data: st.DataObject,
) -> None:
    before = oracle(events)
    target = data.draw(st.sampled_from(before.incidents))
    last = max(e.event_time for e in events if state_key(e) == (target.trust, "incident", target.incident_id))
    fix = Event(event_id(10**6), EventType.DISPOSITION, target.trust, target.incident_id, last + MINUTE,
                disposition=new, destination_site="RXX01")
    after = oracle([*events, fix])

    def england(r: Report) -> Counter[str]:
        c = Counter[str]()
        for (group, level, _code, kind, _p), n in r.rows.items():
            if group == "dispositions" and level == "england" and kind == "day":
                for k in COUNTS["dispositions"]:
                    c[k] += n[k]  # type: ignore[assignment,operator]
        return c

    b, a = england(before), england(after)
    old = target.disposition or "open"
    expected = b.copy()
    expected[old] -= 1
    expected[new.value] += 1
    expected["incidents"] += old == "open"
    assert a == expected
    assert a["incidents"] + a["open"] == b["incidents"] + b["open"] == len(before.incidents)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_incidents=5), st.randoms(use_true_random=False))
def test_stream_facts_reduced_to_their_highest_version_give_the_oracle(case: Case, rnd: random.Random) -> None:
    """The sink contract: emit the facts of every new state version as events arrive (any order,
    repeats); keep the highest version per incident (ReplacingMergeTree FINAL); the figures equal
    the oracle's."""
    states: dict[object, object] = {}
    emitted_i, emitted_h, emitted_c = [], [], []
    for e in case.arrived:
        k = state_key(e)
        old = states.get(k)
        new = apply_any(old, e)  # type: ignore[arg-type]
        if new is old:
            continue
        states[k] = new
        f = build_facts([new], FAKE_ATTRIBUTOR, FAKE_HIERARCHY)
        emitted_i += f.incidents
        emitted_h += f.handovers
        emitted_c += f.calls
    versions = [(f.trust, f.incident_id, f.version) for f in emitted_i]
    assert len(versions) == len(set(versions))  # (incident, version) identifies a row within a run
    # the sink may see the rows shuffled and repeated (redelivery)
    rows_i = emitted_i + rnd.sample(emitted_i, len(emitted_i) // 3)
    rnd.shuffle(rows_i)
    rnd.shuffle(emitted_h)
    want = oracle(case.events)
    assert rollup(rows_i, emitted_h, emitted_c, SITE_ICB) == want.rows
    assert latest(rows_i) == list(want.incidents)


@relaxed
@given(event_sets(max_calls=0))
def test_facts_follow_the_definitions(events: list[Event]) -> None:
    """Each fact's derived measures, recomputed from the raw events by the interchange format's words."""
    by_incident: dict[str, list[Event]] = {}
    for ev in events:
        by_incident.setdefault(ev.incident_id, []).append(ev)

    def latest_giving(evs: list[Event], types: set[EventType], field: str) -> Event | None:
        cands = [x for x in evs if x.event_type in types and getattr(x, field) is not None]
        return max(cands, key=lambda x: (x.event_time, x.event_id), default=None)

    for f in oracle(events).incidents:
        evs = by_incident[f.incident_id]
        made = latest_giving(evs, {EventType.INCIDENT_CREATED}, "event_type")
        disp = latest_giving(evs, {EventType.DISPOSITION}, "disposition")
        cat = latest_giving(evs, {EventType.INCIDENT_CREATED, EventType.CATEGORY_CHANGED}, "category")
        arrivals = [x.event_time for x in evs if x.event_type == EventType.RESPONSE_ARRIVED]
        clock = None if made is None else made.clock_start
        response = None
        if arrivals and clock is not None and (disp is None or disp.disposition != Disposition.HEAR_AND_TREAT):
            response = min(arrivals) - clock
        assert f.response_ms == (response if response is None or response >= 0 else None)
        assert f.response_negative == (response is not None and response < 0)
        assert f.disposition == (None if disp is None else disp.disposition)
        assert f.open == (disp is None)
        assert f.category == (None if cat is None else cat.category)
        assert f.period_ms == (clock if clock is not None else min(x.event_time for x in evs))
        arrived = latest_giving(evs, {EventType.HANDOVER}, "arrived_at_hospital")
        done = latest_giving(evs, {EventType.HANDOVER}, "handover_at")
        dur = None if arrived is None or done is None else done.handover_at - arrived.arrived_at_hospital  # type: ignore[operator]
        assert f.handover_duration_ms == (dur if dur is None or dur >= 0 else None)


@relaxed
@given(event_sets(max_incidents=8), st.integers(0, 8))
def test_rollups_of_disjoint_incidents_merge_into_the_whole(events: list[Event], cut: int) -> None:
    """Partitions (e.g. one per Kafka partition) can roll up apart and merge."""
    r = oracle(events)
    a, b = Rollup(SITE_ICB), Rollup(SITE_ICB)
    known = {(f.trust, f.incident_id) for f in r.incidents}
    for i, f in enumerate(r.incidents):
        (a if i < cut else b).add_incident(f)
    for i, h in enumerate(r.handovers):
        (a if i % 2 else b).add_handover(h)
    for c in r.calls:
        b.add_call(c, c.linked_incident_id is not None and (c.trust, c.linked_incident_id) in known)
    b.merge(a)
    assert b.rows() == r.rows


def test_the_attributor_is_called_once_per_batch() -> None:
    fake = FakeAttributor()
    events = [Event(event_id(i), EventType.INCIDENT_CREATED, "RX6", f"I{i}", T0, clock_start=T0,
                    category=Category.C2, source=Source.CALL_999, location=Location(postcode="AA1 1AA"))
              for i in range(20)]
    compute(events, fake, FAKE_HIERARCHY)
    assert fake.calls == 1


def test_now_cuts_later_events_and_counts_them() -> None:
    events = EXAMPLE
    r = oracle(events, now_ms=T0 + 30 * MINUTE)
    assert r.after_now == sum(1 for e in events if e.event_time > T0 + 30 * MINUTE) > 0
    assert r.events + r.after_now == len(events)


def test_a_repeated_id_with_other_content_is_counted_as_a_conflict_and_the_first_kept() -> None:
    a = created(1, "I1", Category.C1)
    b = replace(a, category=Category.C4)
    r = oracle([a, b, replace(a, produced_time=5)])
    assert (r.events, r.duplicates, r.conflicts) == (1, 2, 1)
    assert r.incidents[0].category == "C1"


# ------------------------------------------------------------------------------- worked example
T0 = utc_ms("2026-05-01T10:00")  # 11:00 BST, Friday 1 May 2026
ICB1, ICB3 = "E54000001", "E54000003"
_n = iter(range(1, 1000))


def at(minutes: float) -> int:
    return T0 + int(minutes * MINUTE)


def created(n: int, inc: str, cat: Category, postcode: str = "AA1 1AA", source: Source = Source.CALL_999) -> Event:
    return Event(event_id(n), EventType.INCIDENT_CREATED, "RX6", inc, T0, clock_start=T0, category=cat,
                 source=source, location=Location(postcode=postcode))


def e(inc: str, event_type: EventType, minutes: float, **fields: object) -> Event:
    return Event(event_id(100 + next(_n)), event_type, "RX6", inc, at(minutes), **fields)  # type: ignore[arg-type]


D, H, R = EventType.DISPOSITION, EventType.HANDOVER, EventType.RESPONSE_ARRIVED
EXAMPLE = [
    # INC-1 C1, arrives at 6 min, conveyed to ED at RXX01; handover 20 min, clear at 35 min
    created(1, "INC-1", Category.C1), e("INC-1", R, 6), e("INC-1", R, 8),
    e("INC-1", D, 30, disposition=Disposition.CONVEYED_ED, destination_site="RXX01"),
    e("INC-1", H, 40, site="RXX01", arrived_at_hospital=at(40)),
    e("INC-1", H, 60, site="RXX01", arrived_at_hospital=at(40), handover_at=at(60)),
    e("INC-1", H, 75, site="RXX01", arrived_at_hospital=at(40), clear_at=at(75)),
    # INC-2 C1, 9 min, see and treat (postcode in LSOA 2: same ICB)
    created(2, "INC-2", Category.C1, "AA2 2AA"), e("INC-2", R, 9),
    e("INC-2", D, 40, disposition=Disposition.SEE_AND_TREAT),
    # INC-3 C2 hear and treat: no response time
    created(3, "INC-3", Category.C2), e("INC-3", D, 20, disposition=Disposition.HEAR_AND_TREAT),
    e("INC-3", R, 15),  # contradicts hear and treat: still no response time
    # INC-4 C3 re-triaged to C2, 25 min, conveyed elsewhere at RYY02 (hosted by ICB 3); handover 50 min
    created(4, "INC-4", Category.C3), e("INC-4", EventType.CATEGORY_CHANGED, 2, category=Category.C2),
    e("INC-4", R, 25), e("INC-4", D, 50, disposition=Disposition.CONVEYED_ELSEWHERE, destination_site="RYY02"),
    e("INC-4", H, 70, site="RYY02", arrived_at_hospital=at(70), handover_at=at(120)),
    # INC-5 C3, 60 min, still open
    created(5, "INC-5", Category.C3), e("INC-5", R, 60),
    # INC-6 C2 from 111, 30 min, conveyed to ED then corrected to see and treat
    created(6, "INC-6", Category.C2, source=Source.CALL_111), e("INC-6", R, 30),
    e("INC-6", D, 45, disposition=Disposition.CONVEYED_ED, destination_site="RXX01"),
    e("INC-6", D, 50, disposition=Disposition.SEE_AND_TREAT),
    # INC-7 C4, unplaceable postcode: unknown geography, still counted for the trust and England
    created(7, "INC-7", Category.C4, "ZZ9 9ZZ"), e("INC-7", D, 10, disposition=Disposition.HEAR_AND_TREAT),
    # two 111 calls in LSOA 1: one ends in an ambulance and is linked to INC-6
    e("C-1", EventType.CALL_111, -5, call_id="C-1", disposition_ambulance=True, linked_incident_id="INC-6",
      location=Location(postcode="AA1 1AA")),
    e("C-2", EventType.CALL_111, -3, call_id="C-2", disposition_ambulance=False, location=Location(postcode="AA1 1AA")),
]
DAY = periods(T0).day


def test_worked_example_dispositions() -> None:
    r = oracle(EXAMPLE)
    icb = r.get("dispositions", "icb", ICB1, "day", DAY)
    assert icb is not None
    assert {k: icb[k] for k in COUNTS["dispositions"]} == {
        "incidents": 5, "hear_and_treat": 1, "see_and_treat": 2, "conveyed_ed": 1, "conveyed_elsewhere": 1, "open": 1}
    assert icb["non_conveyance_rate"] == (1 + 2 + 1) / 5  # (A17 + A55 + A54) / A7
    assert icb["conveyed_ed_rate"] == 1 / 5
    eng = r.get("dispositions", "england", ENGLAND, "fy", periods(T0).fy)
    assert eng is not None and (eng["incidents"], eng["hear_and_treat"], eng["open"]) == (6, 2, 1)
    unknown = r.get("dispositions", "icb", "unknown", "month", periods(T0).month)
    assert unknown is not None and unknown["incidents"] == 1
    assert r.table("dispositions", "icb", "day") == [
        (ICB1, "2026-05-01", 5, 1, 2, 1, 1, 1), ("unknown", "2026-05-01", 1, 1, 0, 0, 0, 0)]
    q = r.get("quality", "trust", "RX6", "day", DAY)
    assert q is not None and (q["incidents"], q["geo_unknown"], q["open"]) == (7, 1, 1)
    assert [f.geo_status for f in r.incidents if f.incident_id == "INC-7"] == ["unknown_postcode"]


def test_worked_example_response_times() -> None:
    r = oracle(EXAMPLE)
    assert r.table("response", "icb", "day", ICB1) == [
        (ICB1, "2026-05-01", "C1", 2, 450.0, 540.0),  # 360 s and 540 s; p90 = sorted[int(0.9 * 2)]
        (ICB1, "2026-05-01", "C2", 2, 1650.0, 1800.0),  # INC-4 re-triaged (1500 s), INC-6 (1800 s); INC-3 H&T
        (ICB1, "2026-05-01", "C3", 1, 3600.0, 3600.0),  # INC-5, open: a response time all the same
    ]
    c1 = r.get("response:C1", "region", "E40000001", "hour", periods(T0).hour)
    assert c1 is not None and (c1["count"], c1["sum_ms"], c1["p90_ms"]) == (2, 900_000, 540_000)


def test_worked_example_handover() -> None:
    r = oracle(EXAMPLE)
    h = r.get("handover", "icb", ICB1, "week", periods(T0).week)
    assert h is not None
    assert r.table("handover", "icb", "day", ICB1) == [
        (ICB1, "2026-05-01", 2, 35.0, 50.0, 2, 1, 1, 0, (5 + 35) / 60)]
    assert (h["arrivals"], h["clear_count"], h["clear_sum_ms"], h["clear_over_30"]) == (2, 1, 35 * MINUTE, 1)
    site = r.get("handover", "site", "RYY02", "day", DAY)
    assert site is not None and (site["handovers"], site["mean_min"], site["hours_lost"]) == (1, 50.0, 35 / 60)
    # RYY02 is hosted by ICB 3, though the incident happened in ICB 1
    host = r.get("handover", "host_icb", ICB3, "day", DAY)
    assert host is not None and host["handovers"] == 1
    assert r.get("handover", "icb", ICB3, "day", DAY) is None
    text = r.render("handover", "icb", "day")
    assert text.splitlines()[1].split() == [ICB1, "2026-05-01", "2", "35.0", "50.0", "2", "1", "1", "0", "0.67"]


def test_worked_example_111_link() -> None:
    r = oracle(EXAMPLE)
    c = r.get("calls_111", "icb", ICB1, "day", DAY)
    assert c == {"calls": 2, "ambulance": 1, "ambulance_share": 0.5, "linked": 1, "linked_found": 1,
                 "incidents_111": 1}


def test_worked_example_corrected_disposition_counts_once() -> None:
    r = oracle(EXAMPLE)
    f = {x.incident_id: x for x in r.incidents}["INC-6"]
    assert (f.disposition, f.conveyed, f.version, f.site) == ("see_and_treat", False, 4, None)
    ed = r.get("dispositions", "lsoa", "E01000001", "day", DAY)
    assert ed is not None and (ed["conveyed_ed"], ed["see_and_treat"]) == (1, 1)  # INC-1 ED, INC-6 S&T


def test_versioned_geography_follows_the_clock_start() -> None:
    before, after = utc_ms("2026-03-31T22:30"), utc_ms("2026-03-31T23:30")  # 23:30 and 00:30 BST
    events = [
        Event(event_id(i), EventType.INCIDENT_CREATED, "RX6", f"I{i}", t, clock_start=t, category=Category.C2,
              source=Source.CALL_999, location=Location(postcode="AA3 3AA"))
        for i, t in enumerate((before, after))
    ]
    r = oracle(events)
    assert [(f.icb, f.sicbl, f.lad) for f in r.incidents] == [
        ("E54000002", "E38000002", "E06000001"), ("E54000001", "E38000001", "E06000001")]
    assert r.get("dispositions", "icb", "E54000002", "fy", periods(before).fy) is not None
    assert r.get("dispositions", "icb", "E54000001", "fy", periods(after).fy) is not None


def test_an_incident_without_incident_created_counts_at_its_first_event_with_unknown_geography() -> None:
    ev = Event(event_id(1), EventType.DISPOSITION, "RRU", "X", T0, disposition=Disposition.HEAR_AND_TREAT)
    r = oracle([ev])
    (f,) = r.incidents
    assert (f.clock_start_ms, f.period_ms, f.icb, f.geo_status, f.category) == (None, T0, "unknown", "no_location", None)
    q = r.get("quality", "england", ENGLAND, "day", DAY)
    assert q is not None and q["no_created"] == 1


def test_report_rows_cover_every_level_and_period_kind() -> None:
    r = oracle(EXAMPLE)
    seen = {(lvl, kind) for (g, lvl, _c, kind, _p) in r.rows if g == "dispositions"}
    assert seen == {(lvl, kind) for lvl in GEO_LEVELS for kind in PERIOD_KINDS}
    with pytest.raises(ValueError, match="unknown period kind"):
        r.table("dispositions", "icb", "fortnight")


def test_states_in_the_example_are_what_the_reducer_says() -> None:
    s = None
    for ev in EXAMPLE:
        if ev.incident_id == "INC-4":
            s = apply_any(s, ev)
    assert isinstance(s, IncidentState)
    assert (s.category, s.first_arrival, s.handover_at) == (Category.C2, at(25), at(120))
