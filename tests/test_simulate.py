"""The simulator: calibration against domain.md's national figures, determinism, mess on demand,
valid interchange output, delivery order, and the `amb simulate` command.

Calibration is checked on what the platform would see (the emitted events), not only on the
generator's own ground truth. Locations come from the built-in sample of real postcodes, so these
tests need no geography index; one test checks the real pool against the index when it is built.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from click.testing import CliRunner

from amb import simulate_io
from amb.cli import cli
from amb.errors import AmbError
from domain.events import TRUSTS, parse_time
from domain.simulate import LocationPool, Mess, SimConfig, SitePlan, Truth, chunks, clean_events, generate
from domain.simulate import calibration as cal
from domain.simulate.lifecycle import local_day
from domain.simulate.mess import LATE_MIN_MS
from domain.simulate.sample_pool import sample_pool
from domain.validation import Rejection, parse_record

DAY = date(2026, 10, 1)  # a Thursday in October: demand factor 0.975
LONDON = ZoneInfo("Europe/London")
NOW = parse_time("2026-12-01T00:00:00Z")


@pytest.fixture(scope="module")
def pool() -> LocationPool:
    return sample_pool()


@pytest.fixture(scope="module")
def england_day(pool: LocationPool) -> tuple[list[tuple[int, dict[str, Any]]], Truth]:
    """One clean day of England (all 11 trusts), as delivered, with its ground truth."""
    truth = Truth.empty()
    records = list(generate(SimConfig(start=DAY, days=1, seed=2024, mess=Mess.preset("none")), pool, truth=truth))
    return records, truth


def _by_type(records: list[tuple[int, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, r in records:
        out[r["event_type"]].append(r)
    return out


# --- calibration --------------------------------------------------------------------------------

def test_calibration_tables_add_up() -> None:
    assert sum(cal.TRUST_DAILY_INCIDENTS.values()) == 24_600
    assert cal.TRUST_DAILY_INCIDENTS["RRU"] == 3700 and cal.TRUST_DAILY_INCIDENTS["R1F"] == 90
    ht = sum(cal.TRUST_DAILY_INCIDENTS[t] * cal.TRUST_HEAR_AND_TREAT[t] for t in TRUSTS) / 24_600
    assert ht == pytest.approx(0.158, abs=0.001)
    for trust in TRUSTS:
        by_cat = cal.hear_and_treat_by_category(trust)
        assert sum(p * c for p, c in zip(by_cat, cal.CATEGORY_MIX, strict=True)) == pytest.approx(cal.TRUST_HEAR_AND_TREAT[trust])
    for (mu, sigma), (mean, q90) in zip(cal.RESPONSE_LOGNORMAL, cal.RESPONSE_TARGETS, strict=True):
        assert math.exp(mu + sigma**2 / 2) == pytest.approx(mean)
        assert math.exp(mu + 1.2815515655446004 * sigma) == pytest.approx(q90)
    over = [1 - float(np.interp(m, cal.HANDOVER_KNOTS_MIN, cal.HANDOVER_KNOTS_CDF)) for m in (15, 30, 60)]
    assert over == pytest.approx(list(cal.HANDOVER_OVER_15_30_60), abs=0.002)
    assert sum(cal.HOUR_SHARE) == pytest.approx(1.0)


def test_one_day_of_england_has_the_national_volume(england_day: Any) -> None:
    records, truth = england_day
    created = _by_type(records)["incident_created"]
    assert 24_600 * 0.9 <= len(created) <= 24_600 * 1.1
    assert len(created) == sum(len(i) for i in truth.incidents)
    per_trust = Counter(r["trust"] for r in created)
    assert set(per_trust) == set(TRUSTS)
    assert per_trust["RRU"] == pytest.approx(3700 * 0.975, rel=0.06)
    assert per_trust["R1F"] == pytest.approx(90 * 0.975, rel=0.35)


def test_disposition_mix_matches_england_and_trusts_differ(england_day: Any) -> None:
    records, _ = england_day
    disp = {r["incident_id"]: r["disposition"] for r in _by_type(records)["disposition"]}
    shares = Counter(disp.values())
    total = len(disp)
    for name, target in zip(("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere"),
                            cal.ENGLAND_DISPOSITION_SHARES, strict=True):
        assert shares[name] / total == pytest.approx(target, abs=0.01), name
    by_trust: dict[str, Counter[str]] = defaultdict(Counter)
    for iid, d in disp.items():
        by_trust[iid[:3]][d] += 1
    ht = {t: c["hear_and_treat"] / sum(c.values()) for t, c in by_trust.items()}
    assert ht["RX6"] < 0.11 and ht["R1F"] < 0.17  # the Isle of Wight has ~90 incidents: wide noise
    assert ht["RYA"] > 0.18 and ht["RRU"] > 0.18
    assert min(ht["RYA"], ht["RRU"]) > max(ht["RX6"], ht["R1F"])


def test_category_mix_and_response_times(england_day: Any) -> None:
    records, _ = england_day
    by_type = _by_type(records)
    created = {r["incident_id"]: r for r in by_type["incident_created"]}
    cats = Counter(r["category"] for r in created.values())
    for name, share in zip(("C1", "C2", "C3", "C4"), cal.CATEGORY_MIX, strict=True):
        assert cats[name] / len(created) == pytest.approx(share, abs=0.015)
    response: dict[str, list[float]] = defaultdict(list)
    for r in by_type["response_arrived"]:
        c = created[r["incident_id"]]
        response[c["category"]].append((parse_time(r["event_time"]) - parse_time(c["clock_start"])) / 1000)
    assert np.mean(response["C1"]) == pytest.approx(8 * 60 + 40, rel=0.05)   # domain.md: 8 min 40 s
    assert np.mean(response["C2"]) == pytest.approx(47 * 60 + 26, rel=0.07)  # domain.md: 47 min 26 s
    assert np.percentile(response["C1"], 90) == pytest.approx(925, rel=0.07)
    assert np.mean(response["C3"]) > np.mean(response["C2"]) > np.mean(response["C1"])
    # Hear and treat has no arrival.
    disp = {r["incident_id"]: r["disposition"] for r in by_type["disposition"]}
    assert not any(disp[r["incident_id"]] == "hear_and_treat" for r in by_type["response_arrived"])


def test_handover_delays_follow_october_2024(england_day: Any) -> None:
    records, _ = england_day
    by_type = _by_type(records)
    handover: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in sorted(by_type["handover"], key=lambda r: r["event_time"]):
        handover[r["incident_id"]].update({k: v for k, v in r.items() if k in ("arrived_at_hospital", "handover_at", "clear_at")})
    conveyed_ed = {r["incident_id"] for r in by_type["disposition"] if r["disposition"] == "conveyed_ed"}
    assert set(handover) == conveyed_ed
    minutes = np.array([(parse_time(h["handover_at"]) - parse_time(h["arrived_at_hospital"])) / 60_000
                        for h in handover.values()])
    for limit, share in zip((15, 30, 60), cal.HANDOVER_OVER_15_30_60, strict=True):  # 262k, 127k, 54k of 380k
        assert np.mean(minutes > limit) == pytest.approx(share, abs=0.02), limit
    clear = np.array([parse_time(h["clear_at"]) - parse_time(h["handover_at"]) for h in handover.values()])
    assert np.all(clear > 0)
    hours_lost_per_handover = np.maximum(0, minutes - 15).mean() / 60
    assert 0.25 < hours_lost_per_handover < 0.5  # ~1.6 million hours a year over ~4.6 million handovers


def test_demand_follows_a_daily_curve(england_day: Any) -> None:
    records, _ = england_day
    hours = Counter(datetime.fromisoformat(r["clock_start"].replace("Z", "+00:00")).astimezone(LONDON).hour
                    for r in _by_type(records)["incident_created"])
    assert hours[11] > 2 * hours[4]
    assert max(hours.values()) / min(hours.values()) > 2
    # Every clock start is on the simulated local day.
    start, hs = local_day(DAY)
    assert all(start <= parse_time(r["clock_start"]) < start + len(hs) * 3_600_000
               for r in _by_type(records)["incident_created"])


def test_nhs_111_calls(england_day: Any) -> None:
    records, truth = england_day
    by_type = _by_type(records)
    calls = by_type["call_111"]
    assert len(calls) == pytest.approx(20_000_000 / 365 * 0.975, rel=0.05)
    assert np.mean([c["disposition_ambulance"] for c in calls]) == pytest.approx(0.12, abs=0.01)
    created = {r["incident_id"]: r for r in by_type["incident_created"]}
    linked = [c for c in calls if "linked_incident_id" in c]
    assert linked and all(created[c["linked_incident_id"]]["source"] == "111" for c in linked)
    assert all(c["incident_id"] == c["call_id"] for c in calls)
    assert len(linked) == sum(r["source"] == "111" for r in created.values())


# --- output shape -------------------------------------------------------------------------------

REQUIRED = {
    "incident_created": {"clock_start", "category", "source"},
    "category_changed": {"category"},
    "response_arrived": set(),
    "disposition": {"disposition"},
    "handover": {"site", "arrived_at_hospital"},
    "call_111": {"call_id", "disposition_ambulance"},
}
ENUMS = {"category": {"C1", "C2", "C3", "C4"}, "source": {"999", "111"},
         "disposition": {"hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere"}}


def test_clean_output_is_valid_interchange_in_delivery_order(england_day: Any) -> None:
    records, _ = england_day
    last = 0
    ids = set()
    for delivery, r in records:
        assert delivery >= last
        last = delivery
        assert {"event_id", "event_type", "trust", "incident_id", "event_time"} <= r.keys()
        assert REQUIRED[r["event_type"]] <= r.keys()
        for field, allowed in ENUMS.items():
            assert r.get(field, next(iter(allowed))) in allowed
        assert r["trust"] in TRUSTS and r["incident_id"].startswith(("C" + r["trust"], r["trust"]))
        assert r["event_time"].endswith("Z") and parse_time(r["event_time"]) <= delivery
        if "disposition" in r:
            assert ("destination_site" in r) == r["disposition"].startswith("conveyed")
        ids.add(r["event_id"])
    assert len(ids) == len(records)  # no duplicates without mess
    # The shared validator (what `amb publish` runs) accepts them: every 7th record, all types.
    for _, r in records[::7]:
        result = parse_record(r, now_ms=NOW, trust=r["trust"])
        assert not isinstance(result, Rejection), (r, result)


def test_locations_are_sample_postcodes_in_the_trusts_area(england_day: Any, pool: LocationPool) -> None:
    records, truth = england_day
    known = dict(zip(pool.postcode.tolist(), pool.lsoa_trust[np.searchsorted(
        np.cumsum(pool.lsoa_count), np.arange(len(pool.postcode)), side="right")].tolist(), strict=True))
    forms: Counter[str] = Counter()
    for _, r in records:
        if r["event_type"] != "incident_created":
            continue
        forms["postcode" if "postcode" in r else "lat" if "lat" in r else "easting"] += 1
        if "postcode" in r:
            assert known[r["postcode"]] == r["trust"]
    total = sum(forms.values())
    assert forms["postcode"] / total == pytest.approx(0.72, abs=0.03)
    assert forms["lat"] / total == pytest.approx(0.20, abs=0.03)
    assert all(np.all(i.lsoa21 != "") for i in truth.incidents)  # clean run: everything placeable


# --- determinism ----------------------------------------------------------------------------------

def _lines(cfg: SimConfig, pool: LocationPool) -> list[str]:
    return [line for c in chunks(cfg, pool) for line in c.lines.tolist()]


def test_same_seed_gives_identical_output(pool: LocationPool) -> None:
    cfg = SimConfig(start=DAY, days=2, trusts=("RX6", "R1F"), seed=9, mess=Mess.preset("default"))
    a = _lines(cfg, pool)
    assert a == _lines(cfg, pool)
    assert a != _lines(SimConfig(start=DAY, days=2, trusts=("RX6", "R1F"), seed=10, mess=Mess.preset("default")), pool)


def test_a_trust_does_not_depend_on_which_others_are_simulated(pool: LocationPool) -> None:
    def trust_lines(trusts: tuple[str, ...]) -> list[str]:
        cfg = SimConfig(start=DAY, trusts=trusts, seed=3, mess=Mess.preset("default"))
        return [x for c in chunks(cfg, pool) for x, t in zip(c.lines.tolist(), c.trust.tolist(), strict=True)
                if TRUSTS[t] == "R1F"]

    assert trust_lines(("R1F",)) == trust_lines(("RX6", "R1F"))


# --- mess -------------------------------------------------------------------------------------------

def test_mess_rates_are_roughly_as_requested(pool: LocationPool) -> None:
    mess = Mess(dup=0.05, late=0.04, shuffle=0.0, correction=0.10, retriage=0.08, unplaceable=0.05, malformed=0.02)
    truth = Truth.empty()
    cfg = SimConfig(start=DAY, days=1, trusts=("RX6", "RYF"), seed=5, mess=mess)
    table = [c for c in chunks(cfg, pool, truth=truth)]
    lines = [x for c in table for x in c.lines.tolist()]
    valid = np.concatenate([c.valid for c in table])
    delivery = np.concatenate([c.delivery for c in table])
    event_time = np.concatenate([c.event_time for c in table])
    records = [json.loads(x) for x in lines]
    n_valid = int(valid.sum())
    n_unique = len({r["event_id"] for r, v in zip(records, valid.tolist(), strict=True) if v})
    clean = n_unique  # events before duplication
    assert (n_valid - n_unique) / clean == pytest.approx(0.05, rel=0.15)
    assert (~valid).sum() / clean == pytest.approx(0.02, rel=0.2)
    # Late: delivered 15 min .. 3 days after the event (first deliveries; replays come later still).
    seen: set[str] = set()
    first = np.zeros(len(records), dtype=bool)
    for i, (r, v) in enumerate(zip(records, valid.tolist(), strict=True)):
        if v and r["event_id"] not in seen:
            seen.add(r["event_id"])
            first[i] = True
    late = (delivery - event_time >= LATE_MIN_MS) & first
    assert late.sum() / first.sum() == pytest.approx(0.04, rel=0.2)
    assert (delivery - event_time).max() > 86_400_000  # some are days late
    incidents = sum(len(i) for i in truth.incidents)
    corrected = sum(int(i.corrected.sum()) for i in truth.incidents)
    assert corrected / incidents == pytest.approx(0.10, rel=0.15)
    retriaged = {r["incident_id"] for r, v in zip(records, valid.tolist(), strict=True)
                 if v and r["event_type"] == "category_changed"}
    assert len(retriaged) / incidents == pytest.approx(0.08, rel=0.15)
    unplaced = sum(int((i.lsoa21 == "").sum()) for i in truth.incidents)
    assert unplaced / incidents == pytest.approx(0.05, rel=0.2)
    # Every malformed record fails the shared validator (as its trust's publisher); every other one passes.
    publisher = [TRUSTS[t] for c in table for t in c.trust.tolist()]
    for r, v, trust in zip(records, valid.tolist(), publisher, strict=True):
        result = parse_record(r, now_ms=NOW, trust=trust)
        assert isinstance(result, Rejection) != v, (r, result)


def test_the_truth_is_what_the_latest_events_say(pool: LocationPool) -> None:
    """Corrections and re-triage resolve (latest event_time wins) to the ground truth."""
    truth = Truth.empty()
    cfg = SimConfig(start=DAY, trusts=("RYD",), seed=11, mess=Mess(correction=0.2, retriage=0.2, dup=0.05, late=0.1))
    latest: dict[tuple[str, str], tuple[str, Any]] = {}
    for _, r in generate(cfg, pool, include_malformed=False, truth=truth):
        for field in ("category", "disposition"):
            if field in r:
                key = (r["incident_id"], field)
                if key not in latest or r["event_time"] > latest[key][0]:
                    latest[key] = (r["event_time"], r[field])
    (inc,) = truth.incidents
    cats = ("C1", "C2", "C3", "C4")
    dispositions = ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere")
    for iid, c, d in zip(inc.incident_id.tolist(), inc.category.tolist(), inc.disposition.tolist(), strict=True):
        assert latest[(iid, "category")][1] == cats[c]
        assert latest[(iid, "disposition")][1] == dispositions[d]
    assert inc.corrected.sum() > 0 and (inc.initial_category != inc.category).sum() > 0


def test_delivery_order_holds_across_days_with_late_events(pool: LocationPool) -> None:
    cfg = SimConfig(start=DAY, days=4, trusts=("R1F",), seed=1, mess=Mess(late=0.2, shuffle=0.3, dup=0.1))
    got = [c for c in chunks(cfg, pool)]
    delivery = np.concatenate([c.delivery for c in got])
    assert np.all(np.diff(delivery) >= 0)
    per_day = sum(len(c) for day in range(4) for c in chunks(
        SimConfig(start=date.fromordinal(DAY.toordinal() + day), days=1, trusts=("R1F",), seed=1, mess=cfg.mess), pool))
    assert len(delivery) == per_day  # nothing lost or doubled by the cross-day merge


def test_days_follow_london_time_across_clock_changes() -> None:
    assert len(local_day(date(2026, 3, 29))[1]) == 23 and len(local_day(date(2026, 10, 25))[1]) == 25
    start, hours = local_day(date(2026, 7, 1))
    assert start == parse_time("2026-06-30T23:00:00Z") and hours[0] == 0 and hours[-1] == 23


def test_clean_events_are_domain_events_for_the_oracle(pool: LocationPool) -> None:
    cfg = SimConfig(start=DAY, trusts=("R1F",), seed=2, mess=Mess.preset("default"))
    events = list(clean_events(cfg, pool))
    valid = sum(int(c.valid.sum()) for c in chunks(cfg, pool))
    assert len(events) == valid and all(e.trust == "R1F" for e in events)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown trust"):
        SimConfig(start=DAY, trusts=("RX6", "XYZ"))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Mess(dup=1.5)
    with pytest.raises(ValueError, match="scale"):
        SimConfig(start=DAY, scale=1000)
    with pytest.raises(ValueError, match="unknown mess preset"):
        Mess.preset("chaos")


def test_site_codes_are_ods_like(pool: LocationPool) -> None:
    sites = SitePlan.for_pool(pool, seed=0)
    codes = sites.ed_code.tolist() + sites.other_code.tolist()
    assert all(c.isalnum() and len(c) == 8 and c.startswith("SYN") for c in codes)
    assert cal.ISLAND_SITE in codes


# --- shell ---------------------------------------------------------------------------------------

def test_speed_parsing() -> None:
    assert simulate_io.parse_speed("max") is None
    assert simulate_io.parse_speed("realtime") == 1.0
    assert simulate_io.parse_speed("60x") == 60.0
    for bad in ("fast", "0x", "-2x", "60"):
        with pytest.raises(AmbError):
            simulate_io.parse_speed(bad)


def test_pacer_releases_events_as_simulated_time_passes(pool: LocationPool) -> None:
    clock = [1000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    pacer = simulate_io.Pacer(600.0, clock=lambda: clock[0], sleep=sleep)
    (chunk, *_) = list(chunks(SimConfig(start=DAY, trusts=("R1F",), seed=1, mess=Mess(), calls_111=False), pool))
    pieces = list(pacer.batches(chunk))
    assert sum(len(p) for p in pieces) == len(chunk) and len(pieces) > 10
    span_s = (int(chunk.delivery[-1]) - int(chunk.delivery[0])) / 1000
    assert sum(slept) == pytest.approx(span_s / 600, rel=0.05)  # a simulated day in ~2.4 (fake) minutes


def test_cli_out_dir_writes_one_file_per_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMB_DATA_DIR", str(tmp_path / "amb"))
    out = tmp_path / "sim"
    result = CliRunner().invoke(cli, ["simulate", "--start", "2026-10-01", "--trusts", "RX6,R1F,RRU", "--mess", "none",
                                      "--seed", "4", "--out-dir", str(out), "--locations", "sample", "--no-progress",
                                      "--truth", str(tmp_path / "truth.csv")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["R1F.jsonl", "RRU.jsonl", "RX6.jsonl"]
    for f in out.iterdir():
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        assert rows and {r["trust"] for r in rows} == {f.stem}
    assert "incidents" in result.output
    truth_rows = (tmp_path / "truth.csv").read_text().splitlines()
    created = sum(1 for f in out.iterdir() for x in f.read_text().splitlines() if '"incident_created"' in x)
    assert len(truth_rows) == created + 1


def test_cli_out_file_is_byte_identical_for_a_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMB_DATA_DIR", str(tmp_path / "amb"))
    args = ["simulate", "--start", "2026-10-01", "--trusts", "R1F", "--seed", "8", "--locations", "sample",
            "--no-progress", "--dup-rate", "0.1", "--out"]
    r1 = CliRunner().invoke(cli, [*args, str(tmp_path / "a.jsonl")])
    r2 = CliRunner().invoke(cli, [*args, str(tmp_path / "b.jsonl")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_cli_needs_exactly_one_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--locations", "sample"])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_real_pool_places_incidents_in_their_trust() -> None:
    """With the geography index built, simulated postcodes attribute back to the truth's LSOA."""
    from amb import config

    settings = config.load()
    if not (settings.geo_index_dir / "manifest.json").exists():
        pytest.skip(f"no geography index in {settings.geo_index_dir}: run `amb geo build`")
    from amb.geo.index import GeoIndex

    pool = simulate_io.load_pool(settings)  # cached in AMB_DATA_DIR/simulate after the first time
    assert len(pool.postcode) > 1_000_000 and set(pool.trusts) == set(TRUSTS)
    assert simulate_io.load_pool(settings).postcode.tolist()[:50] == pool.postcode.tolist()[:50]  # the cache
    truth = Truth.empty()
    records = [r for _, r in generate(SimConfig(start=DAY, trusts=("RX6", "R1F"), seed=1), pool, truth=truth)
               if r["event_type"] == "incident_created" and "postcode" in r]
    index = GeoIndex(settings.geo_index_dir)
    placed = index.attribute_postcodes([r["postcode"] for r in records])
    assert np.all(placed.placed)
    lsoa = index.lsoa_codes[np.maximum(np.asarray(placed.lsoa), 0)]
    expected = {iid: code for inc in truth.incidents for iid, code in zip(inc.incident_id.tolist(), inc.lsoa21.tolist(), strict=True)}
    agree = np.mean([lsoa[i] == expected[r["incident_id"]] for i, r in enumerate(records) if expected[r["incident_id"]]])
    assert agree > 0.999


@pytest.mark.kafka
def test_publish_sends_the_valid_events_and_rejects_the_malformed(stack_settings: Any) -> None:
    """`amb simulate --publish`: each trust's events reach its topic; malformed ones are rejected, not sent."""
    import uuid
    from dataclasses import replace

    from confluent_kafka import Consumer

    from amb.topics import TopicSpec, ensure_topics, events_topic

    settings = replace(stack_settings, topic_prefix=f"sim{uuid.uuid4().hex[:8]}")
    trusts = ("R1F", "RX6")
    topics = [events_topic(settings, t) for t in trusts]
    ensure_topics(settings.bootstrap, [TopicSpec(t, 2, "test") for t in topics])
    start = date.fromordinal(datetime.now(LONDON).date().toordinal() - 3)
    cfg = SimConfig(start=start, trusts=trusts, seed=6, mess=Mess(malformed=0.01, dup=0.01), scale=0.5)
    stats = simulate_io.simulate_to_kafka(cfg, sample_pool(), settings, progress=False)
    assert stats.malformed > 0
    assert sum(p["rejected"] for p in stats.publish.values()) == stats.malformed
    assert sum(p["delivered"] for p in stats.publish.values()) == stats.events - stats.malformed
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"g{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    got = 0
    deadline = time.monotonic() + 60
    try:
        while got < stats.events - stats.malformed and time.monotonic() < deadline:
            got += sum(1 for m in consumer.consume(num_messages=10_000, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    assert got == stats.events - stats.malformed
