"""Daily and weekly metric series from the store, and their SPC signals (``amb alerts spc``).

Series are read from the signed daily rollups (``incident_rollup_daily``, ``handover_rollup_daily``;
migrations 0003/0004), so corrections have already moved incidents between days. A week is the
Europe/London ISO week (Monday start) summed from its days; a week at either end of the data that
is not covered by seven days of data anywhere at that level is left out, so a half-loaded week
does not read as a fall in demand. Days with no incidents for an area count as 0 for counts and
are skipped for rates and means (no denominator).

Every metric has a good direction for Making Data Count's improvement/concern (``domain.spc``);
demand (``incidents``) has none, so its signals are reported as ``neutral``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

from domain.metrics import DAY, ENGLAND, HOUR_MS, LONDON, MINUTE_MS, PERIOD_SQL, WEEK, period_label
from domain.spc import XmrChart, xmr
from sinks.queries import london_midnight_s
from sinks.store import Store

LEVELS: Final = ("england", "region", "icb")
GRAINS: Final = (DAY, WEEK)
FORMATS: Final = ("table", "json")
DEFAULT_MIN_POINTS: Final = 15
"""Making Data Count: limits from at least 15 points (20 or more is better)."""

Sums = Mapping[str, int]


@dataclass(frozen=True)
class Metric:
    """A charted metric: where its sums come from, how to compute it, and which way is good."""

    name: str
    family: Literal["incident", "handover"]
    good: Literal["up", "down"] | None
    value: Callable[[Sums], float | None]
    count: bool
    """A count (a missing day is 0) rather than a rate or mean (a missing day has no value)."""
    unit: str

    def format(self, v: float) -> str:
        if self.unit == "%":
            return f"{100 * v:.1f}%"
        if self.unit == "n":
            return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
        return f"{v:.1f}{self.unit}" if self.unit != "h" else f"{v:.2f}h"


def _ratio(num: Iterable[str], den: str, scale: float = 1.0) -> Callable[[Sums], float | None]:
    names = tuple(num)
    return lambda s: None if not s.get(den) else sum(s.get(n, 0) for n in names) / s[den] / scale


METRICS: Final[dict[str, Metric]] = {m.name: m for m in (
    Metric("incidents", "incident", None, lambda s: float(s.get("incidents", 0)), True, "n"),
    Metric("non_conveyance_rate", "incident", "up",
           _ratio(("hear_and_treat", "see_and_treat", "conveyed_elsewhere"), "incidents"), False, "%"),
    Metric("hear_and_treat_rate", "incident", "up", _ratio(("hear_and_treat",), "incidents"), False, "%"),
    Metric("conveyed_ed_rate", "incident", "down", _ratio(("conveyed_ed",), "incidents"), False, "%"),
    Metric("c1_mean_min", "incident", "down", _ratio(("c1_ms",), "c1_n", MINUTE_MS), False, "m"),
    Metric("c2_mean_min", "incident", "down", _ratio(("c2_ms",), "c2_n", MINUTE_MS), False, "m"),
    Metric("handover_mean_min", "handover", "down", _ratio(("handover_ms",), "handovers", MINUTE_MS), False, "m"),
    Metric("handovers_over_30", "handover", "down", lambda s: float(s.get("over_30", 0)), True, "n"),
    Metric("handovers_over_60", "handover", "down", lambda s: float(s.get("over_60", 0)), True, "n"),
    Metric("hours_lost", "handover", "down", lambda s: s.get("lost_ms", 0) / HOUR_MS, True, "h"),
)}

_SUMS: Final = {
    "incident": ("incident_rollup_daily", (
        ("incidents", "sum(incidents)"), ("hear_and_treat", "sum(hear_and_treat)"),
        ("see_and_treat", "sum(see_and_treat)"), ("conveyed_ed", "sum(conveyed_ed)"),
        ("conveyed_elsewhere", "sum(conveyed_elsewhere)"),
        ("c1_n", "sumIf(responses, category = 'C1')"), ("c1_ms", "sumIf(response_ms_sum, category = 'C1')"),
        ("c2_n", "sumIf(responses, category = 'C2')"), ("c2_ms", "sumIf(response_ms_sum, category = 'C2')"),
    )),
    "handover": ("handover_rollup_daily", (
        ("handovers", "sum(handovers)"), ("handover_ms", "sum(handover_ms_sum)"),
        ("over_30", "sum(over_30)"), ("over_60", "sum(over_60)"), ("lost_ms", "sum(lost_ms)"),
    )),
}


class SeriesError(ValueError):
    """A series request names something that does not exist."""


@dataclass(frozen=True)
class Series:
    """One metric's values for one area, oldest first; ``periods`` are epoch ms of period starts."""

    metric: Metric
    level: str
    code: str
    by: str
    periods: tuple[int, ...]
    values: tuple[float, ...]

    def chart(self) -> XmrChart:
        return xmr(self.values, self.metric.good or "up")


@dataclass(frozen=True)
class Signal:
    """The latest point of one series and what SPC says about it."""

    level: str
    code: str
    name: str
    metric: str
    by: str
    period: str
    value: float
    mean: float
    lcl: float
    ucl: float
    points: int
    signals: tuple[str, ...]
    assessment: str | None
    """improvement, concern, neutral (a metric without a good direction) or None (common cause)."""

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "code": self.code, "name": self.name, "metric": self.metric, "by": self.by,
                "period": self.period, "value": self.value, "mean": self.mean, "lcl": self.lcl, "ucl": self.ucl,
                "points": self.points, "signals": list(self.signals), "assessment": self.assessment}


# --- reference names ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Areas:
    """ICB and region codes, ODS codes and names (data/geo/icb.csv)."""

    names: dict[str, str]
    ods: dict[str, str]
    """ODS code (QOP, Y62) -> ONS code (E54…, E40…)."""
    icb_region: dict[str, str]

    def resolve_icb(self, code: str) -> str:
        """An ICB's ONS code from its ONS or ODS code (case-insensitive)."""
        c = code.strip().upper()
        return self.ods.get(c, c)


@lru_cache(maxsize=4)
def load_areas(geo_data_dir: Path) -> Areas:
    names: dict[str, str] = {ENGLAND: "England"}
    ods: dict[str, str] = {}
    icb_region: dict[str, str] = {}
    path = geo_data_dir / "icb.csv"
    if path.exists():
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                names[r["icb_code"]] = r["icb_name"]
                names[r["region_code"]] = r["region_name"]
                ods[r["icb_ods"]] = r["icb_code"]
                ods[r["region_ods"]] = r["region_code"]
                icb_region[r["icb_code"]] = r["region_code"]
    return Areas(names, ods, icb_region)


# --- reading the store ----------------------------------------------------------------------------------

def _sql(family: str, by: str, level: str, codes: Sequence[str] | None, since: date | None,
         to: date | None) -> tuple[str, dict[str, Any]]:
    table, sums = _SUMS[family]
    period = "period" if by == DAY else PERIOD_SQL[WEEK].format(t="period")
    where = ["level = {level:String}"]
    params: dict[str, Any] = {"level": level}
    if codes is not None:
        where.append("has({codes:Array(String)}, code)")
        params["codes"] = list(codes)
    if since is not None:
        where.append("period >= toDateTime({lo:Int64}, 'Europe/London')")
        params["lo"] = london_midnight_s(since)
    if to is not None:
        where.append("period < toDateTime({hi:Int64}, 'Europe/London')")
        params["hi"] = london_midnight_s(to + timedelta(days=1))
    cols = ", ".join(f"{expr} AS {name}" for name, expr in sums)
    sql = (f"SELECT code, toUnixTimestamp({period}) AS p, uniqExact(toDate(period)) AS days, {cols}\n"
           f"FROM {table}\nWHERE {' AND '.join(where)}\nGROUP BY code, p\nORDER BY code, p")
    return sql, params


def _step(p_s: int, by: str) -> int:
    d = datetime.fromtimestamp(p_s, LONDON).date() + timedelta(days=1 if by == DAY else 7)
    return london_midnight_s(d)


def _grid(found: Iterable[int], days: Mapping[int, int], by: str) -> list[int]:
    """Every period from the first to the last seen at the level; partial weeks at the ends dropped."""
    seen = sorted(set(found))
    if not seen:
        return []
    grid = [seen[0]]
    while grid[-1] < seen[-1]:
        grid.append(_step(grid[-1], by))
    if by == WEEK:
        while grid and days.get(grid[0], 0) < 7:
            grid.pop(0)
        while grid and days.get(grid[-1], 0) < 7:
            grid.pop()
    return grid


def load_series(store: Store, level: str, by: str, metrics: Sequence[str] | None = None,
                codes: Sequence[str] | None = None, since: date | None = None,
                to: date | None = None) -> list[Series]:
    """Every (area, metric) series at ``level`` by day or week, London dates ``since``..``to`` inclusive
    (the shell passes yesterday as ``to``, so today's part-loaded day is not charted)."""
    if level not in LEVELS:
        raise SeriesError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if by not in GRAINS:
        raise SeriesError(f"unknown period {by!r}; expected one of {', '.join(GRAINS)}")
    names = list(metrics) if metrics else list(METRICS)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise SeriesError(f"unknown metric {unknown[0]!r}; expected one of {', '.join(METRICS)}")
    out: list[Series] = []
    for family in ("incident", "handover"):
        wanted = [METRICS[m] for m in names if METRICS[m].family == family]
        if not wanted:
            continue
        sql, params = _sql(family, by, level, codes, since, to)
        res = store.query(sql, params)
        by_code: dict[str, dict[int, dict[str, int]]] = {}
        days: dict[int, int] = {}
        for row in res.dicts():
            p = int(row.pop("p"))
            d = int(row.pop("days"))
            days[p] = max(days.get(p, 0), d)
            code = str(row.pop("code"))
            by_code.setdefault(code, {})[p] = {k: int(v) for k, v in row.items()}
        grid = _grid(days, days, by)
        for code in sorted(by_code):
            cells = by_code[code]
            for m in wanted:
                ps: list[int] = []
                vs: list[float] = []
                for p in grid:
                    sums = cells.get(p)
                    v = m.value(sums) if sums is not None else (0.0 if m.count else None)
                    if v is not None:
                        ps.append(p * 1000)
                        vs.append(float(v))
                out.append(Series(m, level, code, by, tuple(ps), tuple(vs)))
    order = {m: i for i, m in enumerate(names)}
    out.sort(key=lambda s: (s.code, order[s.metric.name]))
    return out


def signals(series: Iterable[Series], names: Mapping[str, str] | None = None,
            min_points: int = DEFAULT_MIN_POINTS) -> list[Signal]:
    """The latest point of every series with at least ``min_points`` points, with its SPC verdict."""
    out: list[Signal] = []
    for s in series:
        if len(s.values) < max(min_points, 2):
            continue
        chart = s.chart()
        last = chart.points[-1]
        assessment = last.assessment if s.metric.good is not None or not last.signals else "neutral"
        out.append(Signal(
            s.level, s.code, (names or {}).get(s.code, s.code), s.metric.name, s.by,
            period_label(s.by, s.periods[-1]), last.value, chart.mean, chart.lcl, chart.ucl, len(s.values),
            last.signals, assessment,
        ))
    return out


COLUMNS: Final = ("level", "code", "name", "metric", "by", "period", "value", "mean", "lcl", "ucl", "points",
                  "signals", "assessment")


def _short(name: str) -> str:
    """``NHS Hampshire and Isle of Wight Integrated Care Board`` -> ``Hampshire and Isle of Wight ICB``."""
    name = name.removeprefix("NHS ").replace(" Integrated Care Board", " ICB")
    return name if len(name) <= 40 else name[:39] + "…"


def render(found: Sequence[Signal], fmt: str) -> str:
    """``table`` (aligned text) or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps([s.as_dict() for s in found], indent=1)
    if fmt != "table":
        raise SeriesError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = []
    for s in found:
        m = METRICS[s.metric]
        rows.append((s.level, s.code, _short(s.name), s.metric, s.by, s.period, m.format(s.value), m.format(s.mean),
                     m.format(s.lcl), m.format(s.ucl), str(s.points), ",".join(s.signals) or "-",
                     s.assessment or "common cause"))
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
