"""Demand forecast: local hour/weekday features across the clock change, the count regression on a
known pattern, and the backtest on eight simulated weeks of the Isle of Wight, where the model must
beat seasonal naive on MAE with sensible 80% interval coverage; `amb forecast` from a chDB store."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_alerts_spc import DAYS, ICB, simulated_facts, store_dir  # noqa: F401  (store_dir is a fixture)

from amb.commands import forecast as forecast_cmd
from amb.insight import forecast as fc
from domain.metrics import HOUR_MS
from sinks.store import ChdbStore

LAD = "E06000046"  # Isle of Wight


def utc_hours(start: str, n: int) -> np.ndarray:
    t0 = int(datetime.fromisoformat(start).timestamp() * 1000)
    return np.arange(t0, t0 + n * HOUR_MS, HOUR_MS, dtype=np.int64)


def simulated_hourly() -> fc.HourlySeries:
    inc, _ = simulated_facts()
    per_hour = Counter(f.hour_ms for f in inc)
    grid = np.arange(min(per_hour), max(per_hour) + HOUR_MS, HOUR_MS, dtype=np.int64)
    return fc.HourlySeries(LAD, grid, np.array([per_hour.get(int(h), 0) for h in grid], dtype=np.float64))


def test_local_hour_and_weekday_follow_the_clock_change() -> None:
    # 2026-10-25: BST ends at 01:00 UTC; 00:00 and 01:00 UTC are both local hour 1.
    hours = utc_hours("2026-10-24T22:00+00:00", 5)
    hour, weekday = fc.local_hour_weekday(hours)
    assert hour.tolist() == [23, 0, 1, 1, 2]
    assert weekday.tolist() == [5, 6, 6, 6, 6]  # Saturday 23:00, then Sunday
    assert len(fc.horizon(date(2026, 10, 25), 1)) == 25 and len(fc.horizon(date(2026, 3, 29), 1)) == 23
    x = fc.design(hours)
    assert x.shape == (5, 35) and (x[:, 0] == 1).all()
    assert x[1, 1:24].sum() == 0 and x[1, 23 + 6] == 1  # Sunday midnight: base hour, weekday 6


def test_the_regression_recovers_a_known_hour_and_weekday_pattern() -> None:
    rng = np.random.default_rng(1)
    hours = utc_hours("2026-01-05T00:00+00:00", 6 * 168)  # winter: UTC = London
    hour, weekday = fc.local_hour_weekday(hours)
    rate = (1 + 3 * np.sin(np.pi * hour / 24) ** 2) * np.where(weekday == 0, 1.5, 1.0)
    history = fc.HourlySeries("X", hours, rng.poisson(rate).astype(np.float64))
    ahead = utc_hours("2026-02-16T00:00+00:00", 168)
    f = fc.fit_predict(history, ahead)
    h2, w2 = fc.local_hour_weekday(ahead)
    truth = (1 + 3 * np.sin(np.pi * h2 / 24) ** 2) * np.where(w2 == 0, 1.5, 1.0)
    # The mean is within sampling error of the truth, far closer than last week's counts are.
    assert np.abs(f.mean - truth).mean() < 0.4 < np.abs(history.counts[-168:] - truth).mean()
    assert (f.lo <= f.mean).all() and (f.mean <= f.hi).all() and (f.lo >= 0).all()
    naive = fc.seasonal_naive(history, ahead)
    assert naive.mean.tolist() == history.counts[-168:].tolist()
    with pytest.raises(fc.ForecastError, match="two weeks"):
        fc.fit_predict(fc.HourlySeries("X", hours[:100], history.counts[:100]), ahead)


def test_backtest_beats_seasonal_naive_on_the_simulated_weekly_pattern() -> None:
    b = fc.backtest([simulated_hourly()], days=7, history_weeks=6)
    assert b.places == 1 and b.model.hours == 168
    assert b.model.mae < b.naive.mae and b.skill > 0.05
    assert 0.7 <= b.model.coverage <= 0.97
    assert b.model.mape is not None and b.naive.mape is not None and b.model.mape < b.naive.mape
    text = fc.render_backtest(b, "table")
    assert "seasonal naive" in text and "skill" in text


def test_hourly_counts_from_the_store_equal_the_facts(store_dir: Path) -> None:  # noqa: F811
    with ChdbStore(store_dir) as store:
        (got,) = fc.load_hourly(store, ICB)
        assert fc.load_hourly(store, "E54000999") == []
    want = simulated_hourly()
    assert got.place == LAD
    assert np.array_equal(got.hours, want.hours) and np.array_equal(got.counts, want.counts)
    assert got.counts.sum() == len(simulated_facts()[0])


def test_amb_forecast_and_its_backtest(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("AMB_CHDB_PATH", str(store_dir))
    run = CliRunner().invoke
    table = run(forecast_cmd.command, ["--icb", "QRL", "--days", "7"], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["place", "name", "day", "incidents"]
    assert len(lines) == 1 + 7 and "Isle of Wight" in lines[1] and "2026-09-28" in lines[1]
    daily = [float(line.split()[5]) for line in lines[1:]]  # name is three words
    assert all(60 < d < 130 for d in daily)  # about 88 a day
    rows = list(csv.DictReader(io.StringIO(run(forecast_cmd.command, ["--icb", ICB, "--days", "2", "--format", "csv",
                                                                       "--from", "2026-10-25"]).output)))
    assert len(rows) == 49 and rows[0]["hour"] == "2026-10-25T00:00:00+01:00"  # the long day has 25 hours
    assert all(int(r["lo"]) <= float(r["mean"]) <= int(r["hi"]) for r in rows)
    back = run(forecast_cmd.command, ["--backtest", "--icb", "QRL", "--format", "json"], catch_exceptions=False)
    result = json.loads(back.output)
    assert result["start"] == "2026-09-21" and result["model"]["mae"] < result["seasonal_naive"]["mae"]
    short = run(forecast_cmd.command, ["--icb", "QRL", "--from", "2026-08-10"])
    assert short.exit_code == 1 and "needs at least 336 (two weeks)" in str(short.exception)
    unknown = run(forecast_cmd.command, ["--icb", "QZZ"])
    assert unknown.exit_code == 1 and "unknown ICB 'QZZ'" in str(unknown.exception)
    assert "amb forecast --icb QOP --days 7" in run(forecast_cmd.command, ["--help"]).output
