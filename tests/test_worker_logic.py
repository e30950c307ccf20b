"""The stream worker's batch step without a broker: raw messages in, facts and dead letters out.

The reference is the batch oracle (domain.oracle.compute): whatever the batching, arrival order,
repeats, crashes and replays, the highest version of every incident's fact must equal the
oracle's row for it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from strategies import FAKE_HIERARCHY, MINUTE, FakeAttributor, cases, event_id, utc_ms

from amb.codec import default_codec
from domain.events import Category, Disposition, Event, EventType, Location, Source
from domain.facts import Geo
from domain.incident import DAY_MS, fold, state_key
from domain.oracle import compute, latest
from streams import fact_codec
from streams.live import LiveView
from streams.metrics import LiveCollector
from streams.pipeline import LATE_AFTER_EXPIRY, WRONG_KEY, BatchStep, DictStore, FactOut, InMessage
from streams.state import (
    FORMAT,
    FORMAT_DICT,
    ExpiryIndex,
    IncidentRecord,
    Watermarks,
    decode_record,
    encode_record,
    encode_record_v1,
    read_header,
)

NOW = utc_ms("2028-01-01T00:00")
NEVER_EXPIRE = 100 * 365 * DAY_MS
PARTITIONS = 4


def message(e: Event, offset: int, *, topic: str | None = None, key: bytes | None = None,
            value: bytes | None = None) -> InMessage:
    """``e`` as the publisher puts it on Kafka: Avro value, key trust:incident, partition by key.
    (A replay's produced_time is the publisher's clock, which any valid one is.)"""
    k = e.key.encode()
    e = replace(e, produced_time=None)
    return InMessage(topic or f"amb.events.{e.trust}", zlib.crc32(k) % PARTITIONS, offset,
                     k if key is None else key, default_codec().encode(e, NOW) if value is None else value)


def messages(events: Sequence[Event]) -> list[InMessage]:
    return [message(e, i) for i, e in enumerate(events)]


def step(store: DictStore | None = None, horizon_ms: int = NEVER_EXPIRE, live: LiveView | None = None,
         attributor: FakeAttributor | None = None) -> BatchStep:
    return BatchStep(attributor or FakeAttributor(), FAKE_HIERARCHY, store or DictStore(), horizon_ms=horizon_ms,
                     live=live)


def run(s: BatchStep, msgs: Sequence[InMessage], cuts: Sequence[int]) -> list[FactOut]:
    """Process ``msgs`` in batches split at ``cuts``; all facts sent."""
    out: list[FactOut] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(msgs)), len(msgs)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        r = s.process(msgs[a:b], NOW)
        assert not r.dead, [d.reason for d in r.dead]
        out += r.facts
    return out


def assert_matches_oracle(facts: Sequence[FactOut], events: Sequence[Event]) -> None:
    decoded = [fact_codec.decode(f.value) for f in facts]
    for f, d in zip(facts, decoded, strict=True):
        assert d.version == f.version and d.kind == f.kind
    report = compute(events, FakeAttributor(), FAKE_HIERARCHY)
    assert latest([d.incident for d in decoded if d.incident]) == list(report.incidents)
    assert latest([d.handover for d in decoded if d.handover]) == list(report.handovers)
    assert latest([d.call for d in decoded if d.call]) == list(report.calls)


cuts = st.lists(st.integers(0, 200), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cuts=cuts)
def test_any_batching_of_any_arrival_order_gives_the_oracles_facts(case, cuts) -> None:
    s = step()
    facts = run(s, messages(case.arrived), cuts)
    assert_matches_oracle(facts, case.events)
    # every state was written back: the store holds one row per incident or call, nothing else
    assert len(s.store.rows) == len(fold(case.events)) == s.states_held  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cuts=cuts, crash_at=st.integers(0, 200), replay_from=st.integers(0, 200))
def test_a_crash_between_state_write_and_send_heals_on_replay(case, cuts, crash_at, replay_from) -> None:
    """The worker writes the state, dies before the facts leave, and re-reads from an older offset:
    the facts of the lost batch are re-sent (duplicates re-send the current version)."""
    msgs = messages(case.arrived)
    s = step()
    crash_at = min(crash_at, len(msgs))
    replay_from = min(replay_from, crash_at)
    sent = run(s, msgs[:replay_from], cuts)
    s.process(msgs[replay_from:crash_at], NOW)  # state written, facts lost
    sent += run(s, msgs[replay_from:], cuts)  # the uncommitted offsets are read again
    assert_matches_oracle(sent, case.events)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cuts=cuts)
def test_state_rows_survive_the_changelog_round_trip(case, cuts) -> None:
    """A new worker that restores the rows (and adopts them) carries on exactly."""
    msgs = messages(case.arrived)
    half = len(msgs) // 2
    first = step()
    sent = run(first, msgs[:half], cuts)
    restored = DictStore()
    restored.rows = dict(first.store.rows)  # type: ignore[attr-defined]
    second = step(restored)
    assert second.adopt(restored.rows.items(), lambda k: f"amb.events.{k.split(b':')[0].decode()}") == len(restored.rows)
    sent += run(second, msgs[half:], cuts)
    assert_matches_oracle(sent, case.events)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cuts=cuts)
def test_rows_of_the_previous_format_are_read_and_carried_on_exactly(case, cuts) -> None:
    """An upgrade in place: the table holds format-1 rows (the previous release's JSON dict); the
    new worker adopts them, carries on exactly and rewrites what it touches in the new format."""
    msgs = messages(case.arrived)
    half = len(msgs) // 2
    first = step()
    sent = run(first, msgs[:half], cuts)
    old = DictStore()
    for key, raw in first.store.rows.items():  # type: ignore[attr-defined]
        head = read_header(raw)
        old.rows[key] = encode_record_v1(decode_record(raw), head.expires_at)
        assert old.rows[key][0] == FORMAT_DICT and decode_record(old.rows[key]) == decode_record(raw)
    second = step(old)
    second.adopt(old.rows.items(), lambda k: f"amb.events.{k.split(b':')[0].decode()}")
    sent += run(second, msgs[half:], cuts)
    assert_matches_oracle(sent, case.events)
    touched = {":".join(state_key(e)).encode() for e in case.arrived[half:]}
    assert {k: old.rows[k][0] for k in touched} == dict.fromkeys(touched, FORMAT)


# ------------------------------------------------------------------------------------ examples
def created(trust: str, inc: str, t: int, n: int, **kw: object) -> Event:
    fields: dict[str, object] = dict(clock_start=t, category="C2", source=Source.CALL_999,
                                     location=Location(postcode="AA1 1AA"))
    fields.update(kw)
    return Event(event_id(n), EventType.INCIDENT_CREATED, trust, inc, t, **fields)  # type: ignore[arg-type]


def disposition(trust: str, inc: str, t: int, n: int, d: Disposition, site: str | None = "RXX01") -> Event:
    return Event(event_id(n), EventType.DISPOSITION, trust, inc, t, disposition=d, destination_site=site)


def handover(trust: str, inc: str, t: int, n: int, arrived: int, done: int | None = None) -> Event:
    return Event(event_id(n), EventType.HANDOVER, trust, inc, t, site="RXX01", arrived_at_hospital=arrived,
                 handover_at=done)


T0 = utc_ms("2026-07-15T08:00")


def test_bad_messages_go_to_the_dead_letter_topic_with_a_reason_and_the_rest_goes_on() -> None:
    good = created("RX6", "INC-1", T0, 1)
    wrong_trust = message(created("RX6", "INC-2", T0, 2), 1, topic="amb.events.RRU")
    msgs = [
        message(good, 0),
        InMessage("amb.events.RX6", 0, 1, b"RX6:x", b"garbage"),
        InMessage("amb.events.RX6", 0, 2, b"RX6:x", b""),
        InMessage("amb.events.RX6", 0, 3, None, None),
        wrong_trust,
        message(created("RX6", "INC-3", T0, 3), 5, key=b"RX6:INC-elsewhere"),
        message(created("RX6", "INC-4", T0, 4), 6, key=None),
        message(replace(created("RX6", "INC-5", T0, 5), event_time=NOW + 2 * DAY_MS), 7),
    ]
    msgs[-2] = replace(msgs[-2], key=None)
    r = step().process(msgs, NOW)
    assert [f.key for f in r.facts] == [b"RX6:INC-1"]
    codes = [d.code for d in r.dead]
    assert codes == ["bad_magic", "empty_message", "empty_message", "wrong_trust", WRONG_KEY, WRONG_KEY,
                     "future_time"]
    assert [d.message.offset for d in r.dead] == [1, 2, 3, 1, 5, 6, 7]


def test_each_location_is_attributed_once_in_one_call_per_batch() -> None:
    att = FakeAttributor()
    s = step(attributor=att)
    batch = [created("RX6", f"INC-{i}", T0, i) for i in range(50)]
    s.process(messages(batch), NOW)
    assert att.calls == 1
    # more events for the same incidents, and repeats: no new attribution
    more = [disposition("RX6", f"INC-{i}", T0 + 20 * MINUTE, 100 + i, Disposition.SEE_AND_TREAT, None)
            for i in range(50)]
    r = s.process(messages(more + batch), NOW)
    assert att.calls == 1 and sum(r.duplicates.values()) == 50 and len(r.facts) == 50
    # a corrected location is placed again, in the same single call as a new incident
    moved = created("RX6", "INC-0", T0, 500, location=Location(postcode="AA5 5AA"))
    r = s.process(messages([moved, created("RX6", "INC-new", T0, 501)]), NOW)
    assert att.calls == 2
    geo = {f.key: fact_codec.decode(f.value).incident for f in r.facts}
    assert geo[b"RX6:INC-0"].lsoa == "E01000005" and geo[b"RX6:INC-new"].lsoa == "E01000001"  # type: ignore[union-attr]


def test_a_duplicate_re_sends_the_current_version_and_rewrites_the_state() -> None:
    s = step()
    e1, e2 = created("RX6", "INC-1", T0, 1), disposition("RX6", "INC-1", T0 + MINUTE, 2, Disposition.HEAR_AND_TREAT)
    s.process(messages([e1, e2]), NOW)
    s.store.rows.clear()  # type: ignore[attr-defined]  # as if the table write was lost: ...
    r = s.process(messages([e1]), NOW)  # ... a lone replay still gives a correct (if lower) version
    assert [f.version for f in r.facts] == [1]
    r = s.process(messages([e2, e1]), NOW)
    assert [f.version for f in r.facts] == [2] and sum(r.duplicates.values()) == 1
    assert read_header(s.store.rows[b"RX6:incident:INC-1"]).partition == message(e1, 0).partition  # type: ignore[attr-defined]


def test_states_expire_after_the_late_horizon_in_event_time_and_later_events_are_dead_lettered() -> None:
    live = LiveView()
    s = step(horizon_ms=7 * DAY_MS, live=live)
    done = [created("RX6", "INC-1", T0, 1), disposition("RX6", "INC-1", T0 + 10 * MINUTE, 2, Disposition.SEE_AND_TREAT)]
    open_ = [created("RX6", "INC-2", T0, 3)]  # never completes: kept four times as long
    s.process(messages(done + open_), NOW)
    assert s.states_held == 2
    # the same partition's stream time moves on by 7 days and a bit
    later = T0 + 7 * DAY_MS + 11 * MINUTE
    filler = [created("RX6", f"F-{i}", later, 100 + i) for i in range(40)]
    r = s.process(messages(filler), NOW)
    same_partition = {message(f, 0).partition for f in filler}
    assert message(done[0], 0).partition in same_partition
    assert r.expired == 1 and b"RX6:incident:INC-1" not in s.store.rows  # type: ignore[attr-defined]
    assert b"RX6:incident:INC-2" in s.store.rows  # type: ignore[attr-defined]
    # a late event for the expired incident is refused, not folded into a new version-1 state
    late = handover("RX6", "INC-1", T0 + 5 * MINUTE, 7, T0 + 20 * MINUTE, T0 + 40 * MINUTE)
    r = s.process(messages([late]), NOW)
    assert [d.code for d in r.dead] == [LATE_AFTER_EXPIRY] and not r.facts
    # ... while a late event within the horizon is applied as usual
    r = s.process(messages([disposition("RX6", "INC-2", T0 + 5 * MINUTE, 8, Disposition.HEAR_AND_TREAT)]), NOW)
    assert not r.dead and [f.version for f in r.facts] == [2]
    # the incomplete incident goes after 4 x 7 days
    r = s.process(messages([created("RX6", f"G-{i}", T0 + 29 * DAY_MS, 200 + i) for i in range(40)]), NOW)
    assert b"RX6:incident:INC-2" not in s.store.rows  # type: ignore[attr-defined]
    assert all(not k.startswith(b"RX6:incident:INC-") for k in live.rows)


def test_expiry_index_refiles_moved_entries_and_forgets_revoked_partitions() -> None:
    idx, wm = ExpiryIndex(), Watermarks()
    assert idx.note(b"a", 10, "t", 0) and idx.note(b"b", 20, "t", 0) and idx.note(b"c", 5, "t", 1)
    assert not idx.note(b"a", 30, "t", 0)  # moved later
    wm.advance("t", 0, 25)
    assert idx.due(wm) == [(b"b", "t", 0)]
    idx.discard(b"b", "t", 0)
    wm.advance("t", 0, 30)
    assert idx.due(wm) == [(b"a", "t", 0)]
    idx.forget([("t", 1)])
    wm.advance("t", 1, 100)
    assert idx.due(wm) == [] and len(idx) == 1


@settings(max_examples=50, deadline=None)
@given(case=cases())
def test_state_rows_round_trip(case) -> None:
    for i, state in enumerate(fold(case.events).values()):
        geo = Geo("E01000001", "E02000001", "E06000001", "E38000001", "E54000001", "E40000001", "ok") if i % 2 else None
        rec = IncidentRecord(state, i % 4, geo, ((None, 1.5, None, None, None), 123) if geo else None)
        for raw in (encode_record(rec, 99), encode_record_v1(rec, 99)):
            back = decode_record(raw)
            assert back == rec
            assert read_header(raw).expires_at == 99 and read_header(raw).last_event_time == state.last_event_time


def test_a_row_of_an_unknown_format_is_refused_with_its_number() -> None:
    raw = encode_record(IncidentRecord(fold([created("RX6", "INC-1", T0, 1, category=Category.C2)])[("RX6", "incident", "INC-1")], 0), 5)
    with pytest.raises(ValueError, match="format 9"):
        decode_record(b"\x09" + raw[1:])
    with pytest.raises(ValueError, match="format 9"):
        read_header(b"\x09" + raw[1:])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_the_fast_fact_encoders_give_json_dumps_bytes(case) -> None:
    """The generated encoders are byte for byte ``json.dumps`` of the dataclasses' dicts."""
    report = compute(case.events, FakeAttributor(), FAKE_HIERARCHY)
    handovers = {h.incident_id: h for h in report.handovers}
    for f in report.incidents:
        h = handovers.get(f.incident_id)
        assert fact_codec.encode_incident(f, h) == fact_codec.encode_incident_json(f, h)
        assert fact_codec.encode_incident(f, None) == fact_codec.encode_incident_json(f, None)
    for c in report.calls:
        assert fact_codec.encode_call(c) == fact_codec.encode_call_json(c)


def test_the_fast_fact_encoders_escape_strings_as_json_does() -> None:
    (f,) = compute([created("RX6", "INC-1", T0, 1, category=Category.C2)], FakeAttributor(), FAKE_HIERARCHY).incidents
    for text in ('quote " back \\ slash', "tab\tnew\nline\x00\x1f", "Ysbyty Gwynedd – café ☕ \U0001f691", ""):
        odd = replace(f, incident_id=text, destination_site=text, response_ms=-1, open=False)
        assert fact_codec.encode_incident(odd, None) == fact_codec.encode_incident_json(odd, None)
        assert fact_codec.decode(fact_codec.encode_incident(odd, None)).incident == odd


def test_fact_messages_round_trip_and_refuse_other_bytes() -> None:
    s = step()
    r = s.process(messages([created("RX6", "INC-1", T0, 1), handover("RX6", "INC-1", T0, 2, T0 + MINUTE)]), NOW)
    (f,) = r.facts
    d = fact_codec.decode(f.value)
    assert d.identity == ("incident", "RX6", "INC-1") and d.version == 2 and d.handover is not None
    with pytest.raises(ValueError, match="incident-facts"):
        fact_codec.decode(b"{not json")
    with pytest.raises(ValueError, match="format"):
        fact_codec.decode(b'{"f": 99}')


# ------------------------------------------------------------------------------------ live view
def test_live_view_counts_today_waits_and_hours_lost_and_moves_corrections() -> None:
    live = LiveView(wall_ms=lambda: NOW)
    s = step(live=live)
    day = utc_ms("2026-07-15T00:00") - 3_600_000  # London midnight (BST)
    now = utc_ms("2026-07-15T12:00")
    events = [
        created("RX6", "A", now - 30 * MINUTE, 1),
        disposition("RX6", "A", now - 20 * MINUTE, 2, Disposition.CONVEYED_ED),
        handover("RX6", "A", now - 5 * MINUTE, 3, arrived=now - 45 * MINUTE),  # waiting 45 min
        created("RX6", "B", now - 5 * 60 * MINUTE, 4),
        disposition("RX6", "B", now - 4 * 60 * MINUTE, 5, Disposition.CONVEYED_ED),
        handover("RX6", "B", now - 3 * 60 * MINUTE, 6, arrived=now - 4 * 60 * MINUTE,
                 done=now - 3 * 60 * MINUTE),  # 60 min: 45 min lost
        created("RX6", "C", now - 2 * 60 * MINUTE, 7),
        disposition("RX6", "C", now - 90 * MINUTE, 8, Disposition.HEAR_AND_TREAT, None),
        created("RX6", "Y", day - 60 * MINUTE, 9),  # yesterday
        created("RX6", "N", now, 10),  # the live clock: the latest clock start ...
        disposition("RX6", "Y", now + 3 * 24 * 60 * MINUTE, 12, Disposition.SEE_AND_TREAT, None),  # ... not this
    ]
    s.process(messages(events), NOW)
    snap = live.snapshot()
    icb = "E54000001"  # AA1 1AA
    assert snap.as_of_ms == now and snap.day_start_ms == day
    assert snap.incidents_today[("RX6", icb)] == 4 and snap.incidents_last_hour[("RX6", icb)] == 2
    assert live.now_ms == now
    assert snap.waiting["RXX01"] == 1 and snap.longest_wait_ms["RXX01"] == 45 * MINUTE
    assert snap.handovers_today["RXX01"] == 1 and snap.handovers_last_hour["RXX01"] == 0
    assert snap.lost_ms_today_icb[icb] == 45 * MINUTE
    assert snap.nonconveyance_rate(icb=icb) == pytest.approx(1 / 3)
    # C's disposition is corrected to conveyed: it moves bucket, it is not counted twice
    s.process(messages([disposition("RX6", "C", now - 80 * MINUTE, 11, Disposition.CONVEYED_ED)]), NOW)
    snap = live.snapshot()
    assert sum(snap.dispositions_today.values()) == 3 and snap.nonconveyance_rate(icb=icb) == 0.0
    # exported as gauges
    reg = CollectorRegistry()
    reg.register(LiveCollector(live))  # type: ignore[arg-type]
    assert reg.get_sample_value("amb_hospital_patients_waiting", {"site": "RXX01"}) == 1
    assert reg.get_sample_value("amb_hospital_longest_wait_seconds", {"site": "RXX01"}) == 45 * 60
    assert reg.get_sample_value("amb_handover_hours_lost_today", {"icb": icb}) == 0.75
    assert reg.get_sample_value("amb_live_incidents_today", {"trust": "RX6", "icb": icb}) == 4
    # a revoked partition's rows go with it
    live.forget({(m.topic, m.partition) for m in messages(events)})
    assert live.snapshot().incidents_today == {}


def test_amb_live_merges_workers_and_recomputes_rates() -> None:
    from amb.commands.live import Live, render

    pages = []
    for site, disp in (("RXX01", Disposition.HEAR_AND_TREAT), ("RYY02", Disposition.CONVEYED_ED)):
        live = LiveView(wall_ms=lambda: NOW)
        now = utc_ms("2026-07-15T12:00")
        s = step(live=live)
        s.process(messages([created("RX6", site, now - 10 * MINUTE, 1 if site == "RXX01" else 2),
                            disposition("RX6", site, now, 3 if site == "RXX01" else 4, disp, site)]), NOW)
        reg = CollectorRegistry()
        reg.register(LiveCollector(live))  # type: ignore[arg-type]
        from prometheus_client import generate_latest

        pages.append(generate_latest(reg).decode())
    merged = Live()
    for p in pages:
        merged.add(p)
    assert merged.workers == 2
    row = merged.by("icb")["E54000001"]
    assert row["incidents_today"] == 2 and row["nonconveyance_rate"] == 0.5
    assert "E54000001" in render(merged, top=5)


def test_commands_have_help_with_examples_and_live_says_when_no_worker_runs() -> None:
    from click.testing import CliRunner

    from amb.commands import live, worker
    from amb.errors import AmbError

    for cmd in (worker.command, live.command):
        result = CliRunner().invoke(cmd, ["--help"])
        assert result.exit_code == 0 and "Examples:" in result.output
    with pytest.raises(AmbError, match="cannot read worker metrics at http://127.0.0.1:9/metrics"):
        live.fetch(["http://127.0.0.1:9/metrics"], timeout=2)
