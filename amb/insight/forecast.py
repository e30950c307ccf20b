"""Hourly demand forecast per place (LAD) with prediction intervals, and its backtest.

The model is a count regression (statsmodels GLM, log link) of hourly incidents on the Europe/London
hour of day, day of week and a weekend × time-of-day interaction: demand is a daily curve scaled by the
weekday (domain.md "Demand varies by hour of day, weekday and season"), and weekend nights differ.
It is fitted on the last ``history_weeks`` weeks before the forecast start. Intervals are the
quantiles of a Poisson distribution with the fitted mean, or a negative binomial when the fit shows
overdispersion (Pearson chi² / df > 1, alpha by the method of moments). Parameter uncertainty is
left out: with weeks of hourly data it is small next to the count noise. Counts are discrete, so an
interval covers at least its nominal share (more at low rates: an 80% interval of 0.2 an hour is
0-1). Every hour with the same local hour and weekday has the same covariates, so the GLM is fitted
on those (at most 168) cells with the hours as exposure: the same estimates, about 30 times faster.

The backtest holds out the last ``days`` days, forecasts them from the weeks before, and compares
with the seasonal-naive baseline (the same hour one week earlier; its interval from the quantiles
of its own errors over the training weeks): MAE, MAPE (over hours with at least one incident) and
the share of hours inside the interval.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from domain.metrics import HOUR_MS, LONDON
from sinks.queries import london_midnight_s
from sinks.store import Store

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

WEEK_HOURS: Final = 168
DEFAULT_LEVEL: Final = 0.8
DEFAULT_HISTORY_WEEKS: Final = 8
MIN_HISTORY_HOURS: Final = 2 * WEEK_HOURS
"""Fewer than two weeks cannot separate the weekday from noise (nor give a seasonal-naive error)."""


class ForecastError(ValueError):
    """Not enough history, or a request that cannot be met."""


@dataclass(frozen=True)
class HourlySeries:
    """Incidents per hour of one place: ``hours`` (epoch ms, every UTC hour, no gaps) and counts."""

    place: str
    hours: I64
    counts: F64

    def before(self, start_ms: int, weeks: int | None = None) -> HourlySeries:
        lo = -np.inf if weeks is None else start_ms - weeks * WEEK_HOURS * HOUR_MS
        keep = (self.hours < start_ms) & (self.hours >= lo)
        return HourlySeries(self.place, self.hours[keep], self.counts[keep])

    def between(self, start_ms: int, end_ms: int) -> HourlySeries:
        keep = (self.hours >= start_ms) & (self.hours < end_ms)
        return HourlySeries(self.place, self.hours[keep], self.counts[keep])


@dataclass(frozen=True)
class Forecast:
    """Mean and central prediction interval of the incidents in each hour of one place."""

    place: str
    hours: I64
    mean: F64
    lo: F64
    hi: F64
    level: float


# --- the model ---------------------------------------------------------------------------------------

def local_hour_weekday(hours_ms: Sequence[int] | I64) -> tuple[I64, I64]:
    """Europe/London hour of day and weekday (Monday 0) of each UTC hour start."""
    hours = np.asarray(hours_ms, dtype=np.int64)
    if hours.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    uniq, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array([_offset_ms(int(h)) for h in uniq], dtype=np.int64)[inverse]
    local = hours + offsets
    hour = (local // HOUR_MS) % 24
    weekday = (local // (24 * HOUR_MS) + 3) % 7  # 1970-01-01 was a Thursday
    return hour.astype(np.int64), weekday.astype(np.int64)


def _offset_ms(hour_ms: int) -> int:
    off = datetime.fromtimestamp(hour_ms // 1000, LONDON).utcoffset()
    return 0 if off is None else int(off.total_seconds()) * 1000


def design(hours_ms: I64) -> F64:
    """Columns: intercept, hour 1..23, weekday 1..6, weekend × four-hour block 1..5 (one-hot, first
    level dropped). The weekend term is coarse on purpose: weekend nights differ, but two days a
    week give too few points to fit every weekend hour on its own."""
    hour, weekday = local_hour_weekday(hours_ms)
    n = hour.size
    x = np.zeros((n, 1 + 23 + 6 + 5))
    x[:, 0] = 1.0
    rows = np.arange(n)
    h = hour > 0
    x[rows[h], hour[h]] = 1.0
    w = weekday > 0
    x[rows[w], 23 + weekday[w]] = 1.0
    block = hour // 4
    we = (weekday >= 5) & (block > 0)
    x[rows[we], 29 + block[we]] = 1.0
    return x


def fit_predict(history: HourlySeries, hours: I64, level: float = DEFAULT_LEVEL) -> Forecast:
    """Fit the count regression on ``history`` and forecast ``hours`` with a ``level`` interval."""
    import statsmodels.api as sm

    if history.hours.size < MIN_HISTORY_HOURS:
        raise ForecastError(f"{history.place}: {history.hours.size} hours of history; the forecast needs at least "
                            f"{MIN_HISTORY_HOURS} (two weeks)")
    y = history.counts
    x_new = design(hours)
    if not y.any():
        zero = np.zeros(hours.size)
        return Forecast(history.place, hours, zero, zero, zero.copy(), level)
    x = design(history.hours)
    # Every hour of the same local hour and weekday has the same row: fit the Poisson GLM on the 168
    # cells (count sums, hours as exposure). The same estimates, and a tiny least-squares problem.
    hour, weekday = local_hour_weekday(history.hours)
    cell = hour * 7 + weekday
    _, first, inverse = np.unique(cell, return_index=True, return_inverse=True)
    y_cell = np.bincount(inverse, weights=y)
    n_cell = np.bincount(inverse).astype(np.float64)
    # Drop columns the history never exercises (e.g. a weekday missing), so the fit is identified.
    used = np.asarray(x.any(axis=0), dtype=bool)
    used[0] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sm.GLM(y_cell, x[first][:, used], family=sm.families.Poisson(), exposure=n_cell).fit()
    params = np.asarray(result.params, dtype=np.float64)
    mu_hist = np.exp(x[:, used] @ params)
    mean = np.exp(x_new[:, used] @ params)
    dof = max(1, y.size - int(used.sum()))
    phi = float(np.sum((y - mu_hist) ** 2 / np.maximum(mu_hist, 1e-9)) / dof)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    mean = np.maximum(mean, 1e-9)
    from scipy import stats  # here, not at import: scipy.stats costs every `amb` command 0.9 s to start

    if phi > 1.0:
        alpha = (phi - 1.0) / max(float(mu_hist.mean()), 1e-9)
        n = 1.0 / alpha
        p = n / (n + mean)
        lo, hi = stats.nbinom.ppf(lo_q, n, p), stats.nbinom.ppf(hi_q, n, p)
    else:
        lo, hi = stats.poisson.ppf(lo_q, mean), stats.poisson.ppf(hi_q, mean)
    return Forecast(history.place, hours, mean, np.asarray(lo, np.float64), np.asarray(hi, np.float64), level)


def seasonal_naive(history: HourlySeries, hours: I64, level: float = DEFAULT_LEVEL) -> Forecast:
    """Each hour's count one week (168 hours) earlier, with the interval of its own training errors.

    ``hours`` follow the history; those more than a week ahead repeat the last observed week."""
    if history.hours.size < MIN_HISTORY_HOURS:
        raise ForecastError(f"{history.place}: seasonal naive needs two weeks of history")
    y = history.counts
    last_week = y[-WEEK_HOURS:]
    steps = (hours - history.hours[-1]) // HOUR_MS - 1  # 0 for the first hour after the history
    mean = last_week[steps % WEEK_HOURS]
    errors = y[WEEK_HOURS:] - y[:-WEEK_HOURS]
    lo_e, hi_e = np.quantile(errors, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Forecast(history.place, hours, mean.astype(np.float64), np.maximum(mean + lo_e, 0.0), mean + hi_e, level)


# --- evaluation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Score:
    """Errors of a forecast against what happened."""

    hours: int
    mae: float
    mape: float | None
    """Mean absolute percentage error over the hours with at least one incident (None if none)."""
    coverage: float

    def as_dict(self) -> dict[str, Any]:
        return {"hours": self.hours, "mae": self.mae, "mape": self.mape, "coverage": self.coverage}


def score(forecasts: Iterable[Forecast], actuals: Iterable[HourlySeries]) -> Score:
    """MAE, MAPE and interval coverage over every hour of every place together."""
    err: list[F64] = []
    pct: list[F64] = []
    inside: list[npt.NDArray[np.bool_]] = []
    for f, a in zip(forecasts, actuals, strict=True):
        if not np.array_equal(f.hours, a.hours):
            raise ForecastError(f"{f.place}: forecast and actual hours differ")
        e = np.abs(f.mean - a.counts)
        err.append(e)
        pos = a.counts > 0
        pct.append(e[pos] / a.counts[pos])
        inside.append((a.counts >= f.lo) & (a.counts <= f.hi))
    e_all = np.concatenate(err) if err else np.zeros(0)
    p_all = np.concatenate(pct) if pct else np.zeros(0)
    i_all = np.concatenate(inside) if inside else np.zeros(0, bool)
    if e_all.size == 0:
        raise ForecastError("nothing to score: no hours in the test period")
    return Score(int(e_all.size), float(e_all.mean()), float(p_all.mean()) if p_all.size else None,
                 float(i_all.mean()))


@dataclass(frozen=True)
class Backtest:
    """The model against seasonal naive on the same held-out hours."""

    start_ms: int
    days: int
    places: int
    model: Score
    naive: Score
    level: float = DEFAULT_LEVEL

    @property
    def skill(self) -> float:
        """1 - MAE(model) / MAE(seasonal naive): above 0 means the model is better."""
        return 1.0 - self.model.mae / self.naive.mae if self.naive.mae > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"start": datetime.fromtimestamp(self.start_ms / 1000, LONDON).date().isoformat(), "days": self.days,
                "places": self.places, "model": self.model.as_dict(), "seasonal_naive": self.naive.as_dict(),
                "level": self.level, "skill": self.skill}


def horizon(start: date, days: int) -> I64:
    """Every UTC hour start from London midnight of ``start`` for ``days`` local days (23-25 h each)."""
    lo = london_midnight_s(start) * 1000
    hi = london_midnight_s(start + timedelta(days=days)) * 1000
    return np.arange(lo, hi, HOUR_MS, dtype=np.int64)


def backtest(series: Sequence[HourlySeries], days: int = 7, history_weeks: int = DEFAULT_HISTORY_WEEKS,
             level: float = DEFAULT_LEVEL, progress: Any = None) -> Backtest:
    """Hold out the last ``days`` whole London days of data; forecast them with both methods."""
    if not series:
        raise ForecastError("no places to backtest: the store has no hourly incidents for them")
    last = max(int(s.hours[-1]) for s in series if s.hours.size)
    last_local = datetime.fromtimestamp(last // 1000, LONDON)
    end_day = last_local.date() - timedelta(days=0 if last_local.hour == 23 else 1)  # a partial last day is left out
    start = end_day - timedelta(days=days - 1)
    test_hours = horizon(start, days)
    start_ms = int(test_hours[0])
    models, naives, actuals = [], [], []
    for s in series:
        hist = s.before(start_ms, history_weeks)
        if hist.hours.size < MIN_HISTORY_HOURS:
            continue
        actual = s.between(start_ms, int(test_hours[-1]) + HOUR_MS)
        actual = HourlySeries(s.place, test_hours, _align(actual, test_hours))
        models.append(fit_predict(hist, test_hours, level))
        naives.append(seasonal_naive(hist, test_hours, level))
        actuals.append(actual)
        if progress is not None:
            progress.update(1)
    if not models:
        raise ForecastError(f"no place has two weeks of history before {start}: load more days")
    return Backtest(start_ms, days, len(models), score(models, actuals), score(naives, actuals), level)


def _align(s: HourlySeries, hours: I64) -> F64:
    out = np.zeros(hours.size)
    idx = np.searchsorted(hours, s.hours)
    ok = (idx < hours.size) & (hours[np.minimum(idx, hours.size - 1)] == s.hours)
    out[idx[ok]] = s.counts[ok]
    return out


# --- the store ----------------------------------------------------------------------------------------

def load_hourly(store: Store, icb: str | None = None, since: date | None = None) -> list[HourlySeries]:
    """Incidents (open or not) per place and UTC hour, gap-free from the first to the last hour seen
    anywhere in the selection. ``icb``: only incidents in that ICB (a LAD split across ICBs keeps its
    part inside it)."""
    where = []
    params: dict[str, Any] = {}
    if icb is not None:
        where.append("icb = {icb:String}")
        params["icb"] = icb
    if since is not None:
        where.append("day_ms >= {lo:Int64}")
        params["lo"] = london_midnight_s(since) * 1000
    sql = ("SELECT lad, hour_ms, sum(sign) AS n FROM incident_changes"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " GROUP BY lad, hour_ms HAVING n != 0 ORDER BY lad, hour_ms")
    table = store.query_arrow(sql, params)
    if table.num_rows == 0:
        return []
    lads = np.asarray(table.column("lad").to_pylist(), dtype=object)
    hours = table.column("hour_ms").to_numpy().astype(np.int64)
    counts = table.column("n").to_numpy().astype(np.float64)
    grid = np.arange(int(hours.min()), int(hours.max()) + HOUR_MS, HOUR_MS, dtype=np.int64)
    out = []
    for lad in sorted(set(lads.tolist())):
        sel = lads == lad
        y = np.zeros(grid.size)
        y[(hours[sel] - grid[0]) // HOUR_MS] = counts[sel]
        out.append(HourlySeries(str(lad), grid, y))
    return out


def forecast_all(series: Sequence[HourlySeries], start: date | None, days: int,
                 history_weeks: int = DEFAULT_HISTORY_WEEKS, level: float = DEFAULT_LEVEL,
                 progress: Any = None) -> list[Forecast]:
    """Forecast ``days`` London days from ``start`` (default: the day after the data ends) per place."""
    if not series:
        raise ForecastError("no hourly incidents in the store for this selection")
    if start is None:
        last = max(int(s.hours[-1]) for s in series)
        start = datetime.fromtimestamp(last // 1000, LONDON).date() + timedelta(days=1)
    hours = horizon(start, days)
    out = []
    for s in series:
        out.append(fit_predict(s.before(int(hours[0]), history_weeks), hours, level))
        if progress is not None:
            progress.update(1)
    return out


# --- output ---------------------------------------------------------------------------------------------

HOURLY_COLUMNS: Final = ("place", "name", "hour", "mean", "lo", "hi")
DAILY_COLUMNS: Final = ("place", "name", "day", "incidents", "peak_hour", "peak_mean", "peak_interval")


def hourly_rows(forecasts: Sequence[Forecast], names: Mapping[str, str]) -> list[tuple[Any, ...]]:
    rows = []
    for f in forecasts:
        for h, m, lo, hi in zip(f.hours, f.mean, f.lo, f.hi, strict=True):
            label = datetime.fromtimestamp(int(h) // 1000, LONDON).isoformat()
            rows.append((f.place, names.get(f.place, f.place), label, round(float(m), 3), int(lo), int(hi)))
    return rows


def daily_rows(forecasts: Sequence[Forecast], names: Mapping[str, str]) -> list[tuple[Any, ...]]:
    """Per place and London day: expected incidents and the busiest hour with its interval."""
    rows = []
    for f in forecasts:
        days = [datetime.fromtimestamp(int(h) // 1000, LONDON) for h in f.hours]
        for d in sorted({t.date() for t in days}):
            idx = [i for i, t in enumerate(days) if t.date() == d]
            peak = max(idx, key=lambda i: f.mean[i])
            rows.append((f.place, names.get(f.place, f.place), d.isoformat(), f"{f.mean[idx].sum():.1f}",
                         days[peak].strftime("%H:00"), f"{f.mean[peak]:.1f}",
                         f"{int(f.lo[peak])}-{int(f.hi[peak])}"))
    return rows


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    body = [[str(v) for v in r] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def render_backtest(b: Backtest, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(b.as_dict(), indent=1)
    rows = [(name, s.hours, f"{s.mae:.3f}", "" if s.mape is None else f"{100 * s.mape:.1f}%", f"{100 * s.coverage:.1f}%")
            for name, s in (("model (GLM hour x weekday)", b.model), ("seasonal naive (last week)", b.naive))]
    head = (f"backtest: {b.places} place(s), {b.days} day(s) from "
            f"{datetime.fromtimestamp(b.start_ms / 1000, LONDON).date()}, "
            f"{round(100 * b.level)}% intervals")
    return "\n".join([head, render_table(("method", "hours", "mae", "mape", "coverage"), rows),
                      f"skill vs seasonal naive (1 - MAE ratio): {b.skill:+.3f}"])
