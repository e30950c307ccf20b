"""`amb alerts spc` on a chDB store loaded with eight simulated weeks of the Isle of Wight: the daily
and weekly series equal the facts they come from, a handover deterioration in the last week is a
concern, and the command lists it (table and JSON) with one-line errors for bad input."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from amb import config
from amb.commands import alerts
from amb.insight import series as ser
from amb.simulate_io import load_pool
from domain.facts import HandoverFact, IncidentFact
from domain.metrics import LONDON, MINUTE_MS, WEEK, period_label
from domain.oracle import compute
from domain.simulate import SimConfig, clean_events
from sinks import migrate as mig
from sinks.loader import load_facts
from sinks.store import ChdbStore
from streams.geo import IndexGeo

START = date(2026, 8, 3)  # a Monday
DAYS = 56
ICB = "E54000042"  # Hampshire and Isle of Wight (ODS QRL)
REGION = "E40000005"
WORSE_FROM = START + timedelta(days=DAYS - 8)


@lru_cache(maxsize=2)
def simulated_facts(days: int = DAYS, seed: int = 3) -> tuple[tuple[IncidentFact, ...], tuple[HandoverFact, ...]]:
    """Clean simulated incidents of the Isle of Wight (about 90 a day), attributed as the worker does."""
    settings = config.load()
    cfg = SimConfig(start=START, days=days, trusts=("R1F",), seed=seed, calls_111=False)
    events = list(clean_events(cfg, load_pool(settings, "sample")))
    geo = IndexGeo.load(settings.geo_index_dir)
    report = compute(events, geo, geo)
    return report.incidents, report.handovers


def build_store(path: Path, incidents: tuple[IncidentFact, ...], handovers: tuple[HandoverFact, ...]) -> None:
    """A migrated chDB store at ``path`` holding these facts (closed again, for a CLI to open)."""
    with ChdbStore(path) as store:
        mig.migrate(store)
        for i in range(0, max(len(incidents), len(handovers)), 5000):
            load_facts(store, f"sim:{i}", incidents[i:i + 5000], handovers[i:i + 5000])


def worsened(handovers: tuple[HandoverFact, ...]) -> tuple[HandoverFact, ...]:
    """Handovers from WORSE_FROM on take 40 minutes longer (a deterioration SPC must flag)."""
    lo = int(datetime(WORSE_FROM.year, WORSE_FROM.month, WORSE_FROM.day, tzinfo=LONDON).timestamp() * 1000)
    out = []
    for h in handovers:
        if h.day_ms >= lo and h.handover_duration_ms is not None:
            d = h.handover_duration_ms + 40 * MINUTE_MS
            h = replace(h, handover_duration_ms=d, lost_ms=max(0, d - 15 * MINUTE_MS))
        out.append(h)
    return tuple(out)


_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated store, built once per session (test_forecast.py reads it too)."""
    if "sim" not in _BUILT:
        path = tmp_path_factory.mktemp("spc") / "chdb"
        inc, hand = simulated_facts()
        build_store(path, inc, worsened(hand))
        _BUILT["sim"] = path
    return _BUILT["sim"]


@pytest.fixture
def store(store_dir: Path) -> Iterator[ChdbStore]:
    with ChdbStore(store_dir) as s:
        yield s


def test_daily_incident_series_equals_the_facts(store: ChdbStore) -> None:
    inc, _ = simulated_facts()
    want = Counter(f.day_ms for f in inc if f.disposition is not None)
    (got,) = ser.load_series(store, "icb", "day", ["incidents"], [ICB])
    assert got.code == ICB and len(got.values) == DAYS
    assert dict(zip(got.periods, got.values, strict=True)) == {k: float(v) for k, v in want.items()}
    (eng,) = ser.load_series(store, "england", "day", ["incidents"])
    assert eng.values == got.values


def test_weekly_series_sum_the_days_and_rates_use_the_week_totals(store: ChdbStore) -> None:
    inc, _ = simulated_facts()
    (weekly,) = ser.load_series(store, "region", "week", ["incidents"], [REGION])
    assert len(weekly.values) == DAYS // 7
    assert [period_label(WEEK, p) for p in weekly.periods][:2] == ["2026-W32", "2026-W33"]
    per_week = Counter(f.week_ms for f in inc if f.disposition is not None)
    assert list(weekly.values) == [float(per_week[p]) for p in weekly.periods]
    (rate,) = ser.load_series(store, "icb", "week", ["hear_and_treat_rate"], [ICB])
    first = [f for f in inc if f.week_ms == rate.periods[0] and f.disposition is not None]
    assert rate.values[0] == sum(f.disposition == "hear_and_treat" for f in first) / len(first)


def test_a_partial_last_week_is_left_out(store: ChdbStore) -> None:
    # From a Wednesday: the first week has five days of data, so the series starts a week later.
    (weekly,) = ser.load_series(store, "icb", "week", ["incidents"], [ICB], since=START + timedelta(days=2))
    assert len(weekly.values) == DAYS // 7 - 1


def test_the_handover_deterioration_is_a_concern_and_demand_is_common_cause(store: ChdbStore) -> None:
    got = ser.load_series(store, "icb", "day", ["handover_mean_min", "hours_lost", "incidents"], [ICB])
    found = {s.metric: s for s in ser.signals(got, {ICB: "HIOW"})}
    mean = found["handover_mean_min"]
    assert mean.name == "HIOW" and mean.points == DAYS and mean.period == "2026-09-27"
    assert "shift" in mean.signals and mean.assessment == "concern"
    assert found["hours_lost"].assessment == "concern"
    chart = next(s for s in got if s.metric.name == "handover_mean_min").chart()
    before = [p for p in chart.points[: DAYS - 8] if p.assessment == "concern"]
    assert len(before) <= 3  # the weeks before the change are (nearly) all common cause
    assert found["incidents"].assessment in (None, "neutral")


def test_short_series_are_skipped_and_bad_requests_are_refused(store: ChdbStore) -> None:
    got = ser.load_series(store, "icb", "week", ["incidents"], [ICB])
    assert ser.signals(got, min_points=15) == []
    assert len(ser.signals(got, min_points=8)) == 1
    with pytest.raises(ser.SeriesError, match="unknown metric 'speed'"):
        ser.load_series(store, "icb", "day", ["speed"])
    with pytest.raises(ser.SeriesError, match="unknown level"):
        ser.load_series(store, "lsoa", "day")
    assert ser.load_series(store, "icb", "day", ["incidents"], ["E54000999"]) == []


def test_amb_alerts_spc_lists_current_signals(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMB_CHDB_PATH", str(store_dir))
    run = CliRunner().invoke
    res = run(alerts.command, ["spc", "--icb", "QRL", "--by", "day", "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert {r["code"] for r in rows} <= {ICB, REGION, "E92000001"}
    assert all(r["signals"] for r in rows)
    mean = next(r for r in rows if r["metric"] == "handover_mean_min" and r["level"] == "icb")
    assert mean["assessment"] == "concern" and mean["name"].startswith("NHS Hampshire and Isle of Wight")
    table = run(alerts.command, ["spc", "--level", "england", "--metric", "handover_mean_min", "--by", "day"])
    assert table.exit_code == 0, table.output
    header, line = table.output.splitlines()
    assert header.split()[:4] == ["level", "code", "name", "metric"]
    assert "E92000001" in line and "concern" in line and "shift" in line
    every = run(alerts.command, ["spc", "--level", "icb", "--by", "week", "--min-points", "8", "--all"])
    assert every.exit_code == 0 and len(every.output.splitlines()) == 1 + len(ser.METRICS)
    upto = run(alerts.command, ["spc", "--level", "icb", "--by", "day", "--metric", "incidents", "--all",
                                "--to", "2026-09-20", "--format", "json"])
    (row,) = json.loads(upto.output)
    assert row["period"] == "2026-09-20" and row["points"] == DAYS - 7
    bad = run(alerts.command, ["spc", "--since", "yesterday"])
    assert bad.exit_code == 2 and "is not a date YYYY-MM-DD" in bad.output
    help_text = run(alerts.command, ["spc", "--help"])
    assert "Example:" in help_text.output and "amb alerts spc --icb QOP" in help_text.output


def test_alerts_without_a_store_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMB_CHDB_PATH", str(tmp_path / "none"))
    res = CliRunner().invoke(alerts.command, ["spc"])
    assert res.exit_code == 1
    assert "no chDB store in" in str(res.exception)
