"""The native batch step (native/src/worker.rs via streams/native.py) against the Python one.

``BatchStep.process`` in Python is the definition. For any batch — valid events in any order with
repeats, malformed bytes, wrong keys, events on another trust's topic, late events after expiry,
odd floats and strings in locations, format-1 rows in the table — the native step must give the
same dead letters (same messages, same reasons, same order), the same fact messages byte for byte,
the same table rows byte for byte, the same watermarks, expiry index and live view. A store written
by one and read by the other must behave as if one had done everything.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import FAKE_HIERARCHY, TRUSTS, FakeAttributor, cases, utc_ms

from amb.codec import default_codec
from domain.events import Category, Event, EventType, Location, Source
from domain.incident import DAY_MS, state_key
from domain.metrics import HOUR_MS
from streams.live import LiveView
from streams.native import load
from streams.pipeline import BatchResult, BatchStep, DictStore, InMessage
from streams.state import encode_record_v1, read_header

pytestmark = pytest.mark.skipif(load() is None, reason="amb_native is not built (make builds it)")

NOW = utc_ms("2028-01-01T00:00")
PARTITIONS = 4


def message(e: Event, offset: int, *, keep_produced_time: bool = False) -> InMessage:
    """``e`` as published (the publisher's clock as produced_time, unless ``keep_produced_time``:
    the strategies' repeats carry any produced_time, ancient ones included, which are rejected)."""
    k = e.key.encode()
    if not keep_produced_time:
        e = replace(e, produced_time=None)
    return InMessage(f"amb.events.{e.trust}", zlib.crc32(k) % PARTITIONS, offset, k, default_codec().encode(e, NOW))


def pair(horizon_ms: int, store_a: DictStore | None = None, store_b: DictStore | None = None
         ) -> tuple[BatchStep, BatchStep]:
    def make(native: bool, store: DictStore | None) -> BatchStep:
        return BatchStep(FakeAttributor(), FAKE_HIERARCHY, store or DictStore(), horizon_ms=horizon_ms,
                         live=LiveView(wall_ms=lambda: NOW), native=native)

    py, nat = make(False, store_a), make(True, store_b)
    assert py.native is None and nat.native is not None
    return py, nat


def outcome(r: BatchResult) -> dict[str, Any]:
    return {
        "facts": [(f.key, f.value, f.kind, f.version, f.topic, f.partition) for f in r.facts],
        "dead": [(d.message, d.reason, d.code) for d in r.dead],
        "events": dict(r.events), "duplicates": dict(r.duplicates), "attributed": dict(r.attributed),
        "new": r.new_states, "expired": r.expired, "max_event_time": r.max_event_time,
    }


def side_state(s: BatchStep) -> dict[str, Any]:
    assert s.live is not None
    return {"rows": dict(s.store.rows), "watermarks": dict(s.watermarks.items()),  # type: ignore[attr-defined]
            "held": s.states_held, "live": dict(s.live.rows), "live_now": s.live.now_ms,
            "due": sorted(s.expiry.due(s.watermarks, 10**9))}


# ---------------------------------------------------------------------------------- the mess
ODD_FLOATS = st.one_of(st.floats(49.0, 61.5), st.sampled_from([49.0, 61.5, 51.5, 52.000001, 53.1234567890123]))
ODD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)


@st.composite
def odd_location(draw: st.DrawFn) -> Location:
    """Locations whose JSON (floats, escapes) must come out exactly as Python writes it."""
    kind = draw(st.sampled_from(["pc", "ll", "en", "all"]))
    pc = draw(st.one_of(ODD_TEXT, st.sampled_from(['AA1 1AA', 'A"B 1\\C', "Ä1 1ÖÜ", "B1 \u2028x", "🚑1 1AA"])))
    lat, lon = draw(ODD_FLOATS), draw(st.floats(-9.0, 2.5))
    ea, no = draw(st.floats(0.0, 700_000.0)), draw(st.floats(0.0, 1_300_000.0))
    if kind == "pc":
        return Location(postcode=pc)
    if kind == "ll":
        return Location(lat=lat, lon=lon)
    if kind == "en":
        return Location(easting=ea, northing=no)
    return Location(pc, lat, lon, ea, no)


@st.composite
def messy_batches(draw: st.DrawFn) -> tuple[list[list[InMessage]], int]:
    """Batches of messages: a case's arrivals, some events given odd locations, ids or sites, and
    some messages spoilt (bad bytes, truncated, empty, wrong key, another trust's topic)."""
    case = draw(cases(max_incidents=5))
    events = []
    for e in case.arrived:
        if e.location is not None and draw(st.integers(0, 3)) == 0:
            e = replace(e, location=draw(odd_location()))
        events.append(e)
    msgs: list[InMessage] = []
    for i, e in enumerate(events):
        spoil = draw(st.integers(0, 14))
        m = message(e, i, keep_produced_time=True)
        if spoil == 0:
            m = replace(m, value=m.value[: draw(st.integers(0, len(m.value or b"") - 1))])  # type: ignore[index]
        elif spoil == 1:
            m = replace(m, value=draw(st.binary(max_size=40)))
        elif spoil == 2:
            m = replace(m, key=b"RX6:someone-else")
        elif spoil == 3:
            other = next(t for t in TRUSTS if t != e.trust)
            m = replace(m, topic=f"amb.events.{other}")
        elif spoil == 4:
            m = replace(m, value=None)
        elif spoil == 5 and m.value:
            b = bytearray(m.value)
            b[draw(st.integers(10, len(b) - 1))] ^= draw(st.integers(1, 255))
            m = replace(m, value=bytes(b))
        msgs.append(m)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(msgs))), max_size=4)))
    bounds = [0, *cuts, len(msgs)]
    batches = [msgs[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    horizon = draw(st.sampled_from([100 * 365 * DAY_MS, DAY_MS, 6 * HOUR_MS]))
    return batches, horizon


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messy_batches())
def test_native_step_equals_the_python_step_batch_by_batch(batches_horizon) -> None:
    batches, horizon = batches_horizon
    py, nat = pair(horizon)
    for batch in batches:
        assert outcome(nat.process(batch, NOW)) == outcome(py.process(batch, NOW))
        assert side_state(nat) == side_state(py)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messy_batches(), st.randoms(use_true_random=False))
def test_a_store_shared_by_both_steps_ends_as_if_python_did_everything(batches_horizon, rnd: random.Random) -> None:
    """Rows written by either are read by the other: alternate at random, batch by batch."""
    batches, horizon = batches_horizon
    reference, _ = pair(horizon)
    shared = DictStore()
    py, nat = pair(horizon, shared, shared)
    for batch in batches:
        want = outcome(reference.process(batch, NOW))
        a, b = (py, nat) if rnd.random() < 0.5 else (nat, py)
        got = outcome(a.process(batch, NOW))
        # the other side keeps its in-memory state (watermarks, expiry) in step as a second worker would not,
        # so only the shared table and the outputs are compared
        assert {k: v for k, v in got.items() if k not in ("expired",)} == \
            {k: v for k, v in want.items() if k not in ("expired",)}
        b.watermarks = a.watermarks
        b.expiry = a.expiry
        b.live = a.live
    assert shared.rows == reference.store.rows  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_incidents=4))
def test_format_1_rows_in_the_table_are_read_the_same(case) -> None:
    """A table written by the release before format 2: the native side reads it via Python's decoder."""
    half = len(case.arrived) // 2
    seed = BatchStep(FakeAttributor(), FAKE_HIERARCHY, DictStore(), horizon_ms=100 * 365 * DAY_MS, native=False)
    seed.process([message(e, i) for i, e in enumerate(case.arrived[:half])], NOW)
    from streams.state import decode_record

    v1 = {k: encode_record_v1(decode_record(v), read_header(v).expires_at)
          for k, v in seed.store.rows.items()}  # type: ignore[attr-defined]
    store_a, store_b = DictStore(), DictStore()
    store_a.rows, store_b.rows = dict(v1), dict(v1)
    py, nat = pair(100 * 365 * DAY_MS, store_a, store_b)
    rest = [message(e, half + i) for i, e in enumerate(case.arrived[half:])]
    assert outcome(nat.process(rest, NOW)) == outcome(py.process(rest, NOW))
    assert store_a.rows == store_b.rows
    touched = {":".join(state_key(e)).encode() for e in case.arrived[half:]}
    assert all(v[0] == 2 for k, v in store_b.rows.items() if k in touched)  # touched rows are format 2 again
    assert len(store_b.rows) == len({state_key(e) for e in case.arrived})


def test_real_geography_places_equal_the_python_attribution() -> None:
    """With the real index the native step places locations through IndexGeo.places (columns, no
    Location objects): the same geography as domain.facts.attribute gives the Python step."""
    from amb import config
    from amb.simulate_io import load_pool
    from streams.geo import IndexGeo

    geo = IndexGeo.load(config.load().geo_index_dir)
    pool = load_pool(config.load(), "sample")
    rng = random.Random(7)
    events = []
    for i in range(600):
        pc = str(pool.postcode[rng.randrange(len(pool.postcode))])
        loc = rng.choice([Location(postcode=pc), Location(postcode=pc.lower().replace(" ", "")),
                          Location(postcode="ZZ99 9ZZ"), Location(lat=51.5 + rng.random(), lon=-1.0 + rng.random()),
                          Location(easting=400_000.0 + 1000 * rng.random(), northing=300_000.0),
                          Location(lat=55.95, lon=-3.19), Location()])
        t = NOW - DAY_MS + 60_000 * i
        events.append(Event(f"00000000-0000-4000-8000-{i:012d}", EventType.INCIDENT_CREATED, rng.choice(TRUSTS),
                            f"G{i}", t, clock_start=t, category=Category.C2, source=Source.CALL_999, location=loc))
    msgs = [message(e, i) for i, e in enumerate(events)]
    py = BatchStep(geo, geo, DictStore(), native=False)
    nat = BatchStep(geo, geo, DictStore(), native=True)
    a, b = py.process(msgs, NOW), nat.process(msgs, NOW)
    assert outcome(a) == outcome(b)
    assert py.store.rows == nat.store.rows  # type: ignore[attr-defined]
    assert sum(b.attributed.values()) == 600 - sum(1 for e in events if e.location == Location())
    assert len(b.attributed) >= 3  # placed, unknown postcode, outside England at least


def test_native_required_without_a_default_decoder_is_an_error() -> None:
    from amb.errors import AmbError

    with pytest.raises(AmbError, match="custom decoder"):
        BatchStep(FakeAttributor(), FAKE_HIERARCHY, DictStore(), native=True,
                  decoder=lambda v, now, topic, trust: default_codec().decode_and_validate(v, now, topic, trust))
