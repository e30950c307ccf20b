"""The standard tables behind ``amb query``: dispositions, response and handover, at any level and
period, equal to the batch oracle (``domain.oracle``) to the unit.

Counts and integer millisecond sums come from the signed rollups (exact under corrections). The
90th centile is ClickHouse's ``quantileExact(0.9)`` definition (``domain.metrics.centile``), taken
from the signed rows of the changes table, each cell's rows sorted once (``P90_SQL``), so that a
replaced version cancels before the centile is read. Means and rates are computed here from the
integer sums with the same float operations as ``domain.metrics``, so they match bit for bit.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

from domain.metrics import (
    DAY,
    ENGLAND,
    FY,
    HOUR,
    HOUR_MS,
    LONDON,
    MINUTE_MS,
    MONTH,
    PERIOD_KINDS,
    PERIOD_SQL,
    TABLES,
    Number,
    Rows,
    format_table,
    period_label,
    table,
)
from sinks.store import Store

__all__ = ["TABLES", "METRICS", "LEVELS", "HANDOVER_LEVELS", "FORMATS", "Query", "QueryError", "run", "render",
           "oracle_table", "rollup_sql", "direct_sql", "centile_sql", "london_midnight_s"]

METRICS: Final = tuple(TABLES)
LEVELS: Final = ("england", "region", "icb", "sicbl", "lad", "msoa", "lsoa", "trust")
HANDOVER_LEVELS: Final = (*LEVELS, "site")
FORMATS: Final = ("table", "csv", "json")

_CODE_COLUMN: Final = {lvl: lvl for lvl in HANDOVER_LEVELS} | {"england": f"'{ENGLAND}'"}

P90_SQL: Final = (
    "if(t = 0, NULL, bitShiftRight(arrayElement(h, arrayFirstIndex(c -> c > least(toInt64(0.9 * t), t - 1), "
    "arrayCumSum(arrayMap(x -> bitAnd(x, 1) * 2 - 1, h)))), 1))"
)
"""quantileExact(0.9) of ``h``, a sorted array of signed rows packed as ``value * 2 + (sign > 0)``,
net total ``t``: the value at 0-based index k = min(int(0.9 t), t - 1) of the net multiset (the
same double product as Python's), i.e. the first value whose running net count passes k. A -1
row is a copy of an earlier +1 row of the same cell and sorts just before it (2v < 2v + 1), so
within one value's run the running count first falls and then rises to its net: it passes k
inside a run only if it ends the run above k. So the answer is exact with one sort of plain
integers per cell, no grouping by value (the shift is arithmetic: negative values unpack too)."""


class QueryError(ValueError):
    """A query asked for something that does not exist (level, metric, period, dates)."""


@dataclass(frozen=True)
class Query:
    """One ``amb query``: METRIC at LEVEL (optionally one CODE), clock-start dates FROM..TO
    inclusive in Europe/London (None = unbounded), by hour, day, week, month or financial year."""

    metric: str
    level: str
    by: str = MONTH
    code: str | None = None
    start: date | None = None
    end: date | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise QueryError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        levels = HANDOVER_LEVELS if self.metric == "handover" else LEVELS
        if self.level not in levels:
            raise QueryError(f"unknown level {self.level!r} for {self.metric}; expected one of {', '.join(levels)}")
        if self.by not in PERIOD_KINDS:
            raise QueryError(f"unknown period {self.by!r}; expected one of {', '.join(PERIOD_KINDS)}")
        if self.start and self.end and self.start > self.end:
            raise QueryError(f"--from {self.start} is after --to {self.end}")

    @property
    def columns(self) -> tuple[str, ...]:
        return TABLES[self.metric]


def london_midnight_s(d: date) -> int:
    """Epoch seconds of local midnight in London (always exists: clocks change at 01:00 UTC)."""
    return int(datetime(d.year, d.month, d.day, tzinfo=LONDON).timestamp())


def _month_aligned(q: Query) -> bool:
    start_ok = q.start is None or q.start.day == 1
    end_ok = q.end is None or (q.end + timedelta(days=1)).day == 1
    return start_ok and end_ok


def _rollup_source(q: Query, family: str) -> tuple[str, str] | None:
    """(rollup table, SQL for the period start as a London DateTime) for the query's period kind,
    or None when no rollup holds the level at a grain that fits (sum the changes instead)."""
    if q.by == HOUR:
        grain, expr = "hourly", "period"
    elif q.by in (MONTH, FY) and _month_aligned(q):
        grain, expr = "monthly", "period" if q.by == MONTH else PERIOD_SQL[FY].format(t="period")
    else:
        grain, expr = "daily", "period" if q.by == DAY else PERIOD_SQL[q.by].format(t="period")
    if q.level in NOT_ROLLED_UP[grain]:
        return None
    return f"{family}_rollup_{grain}", expr


def _filters(q: Query, code_column: str, period_column: str, ms: bool) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    if q.code is not None:
        where.append(f"{code_column} = {{code:String}}")
        params["code"] = q.code
    scale = 1000 if ms else 1
    if q.start is not None:
        params["lo"] = london_midnight_s(q.start) * scale
        where.append(f"{period_column} >= {{lo:Int64}}" if ms else f"{period_column} >= toDateTime({{lo:Int64}}, 'Europe/London')")
    if q.end is not None:
        params["hi"] = london_midnight_s(q.end + timedelta(days=1)) * scale
        where.append(f"{period_column} < {{hi:Int64}}" if ms else f"{period_column} < toDateTime({{hi:Int64}}, 'Europe/London')")
    return where, params


#: Levels each rollup grain leaves out (about one incident per cell or fewer: see migration 0003).
NOT_ROLLED_UP: Final = {"hourly": frozenset({"lsoa", "msoa"}), "daily": frozenset({"lsoa"}), "monthly": frozenset()}

#: The rollups' sums, as signed aggregates over the changes tables (the materialised views' SELECT).
DIRECT_SUMS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "dispositions": (
        ("incidents", "sumIf(sign, disposition IS NOT NULL)"),
        ("hear_and_treat", "sumIf(sign, disposition = 'hear_and_treat')"),
        ("see_and_treat", "sumIf(sign, disposition = 'see_and_treat')"),
        ("conveyed_ed", "sumIf(sign, disposition = 'conveyed_ed')"),
        ("conveyed_elsewhere", "sumIf(sign, disposition = 'conveyed_elsewhere')"),
        ("open", "sumIf(sign, disposition IS NULL)"),
    ),
    "response": (
        ("responses", "sumIf(sign, response_ms IS NOT NULL)"),
        ("response_ms_sum", "sum(sign * ifNull(response_ms, 0))"),
    ),
    "handover": (
        ("arrivals", "sum(sign)"),
        ("handovers", "sumIf(sign, handover_duration_ms IS NOT NULL)"),
        ("handover_ms_sum", "sum(sign * ifNull(handover_duration_ms, 0))"),
        ("over_15", "sumIf(sign, handover_duration_ms > 900000)"),
        ("over_30", "sumIf(sign, handover_duration_ms > 1800000)"),
        ("over_45", "sumIf(sign, handover_duration_ms > 2700000)"),
        ("over_60", "sumIf(sign, handover_duration_ms > 3600000)"),
        ("lost_ms", "sum(sign * lost_ms)"),
    ),
}
_HAVING: Final = {
    "dispositions": "s_incidents != 0 OR s_open != 0", "response": "s_responses != 0", "handover": "s_arrivals != 0",
}


def direct_sql(q: Query) -> tuple[str, dict[str, Any]]:
    """The same sums as :func:`rollup_sql`, straight from the signed changes table: for the tables
    the rollups leave out, and as the reference the rollups are checked (and benchmarked) against."""
    code_col = _CODE_COLUMN[q.level]
    where, params = _filters(q, code_col, "day_ms", ms=True)
    keys = "code, p"
    inner = f"{code_col} AS code, intDiv({q.by}_ms, 1000) AS p"
    if q.metric == "response":
        keys += ", category"
        inner += ", assumeNotNull(category) AS category"
        where.insert(0, "category IS NOT NULL")
    table = "handover_changes" if q.metric == "handover" else "incident_changes"
    select = ", ".join(f"{expr} AS s_{name}" for name, expr in DIRECT_SUMS[q.metric])
    sql = (f"SELECT {inner}, {select}\nFROM {table}\n" + (f"WHERE {' AND '.join(where)}\n" if where else "")
           + f"GROUP BY {keys}\nHAVING {_HAVING[q.metric]}")
    return sql, params


def rollup_sql(q: Query) -> tuple[str, dict[str, Any]]:
    """Counts and sums per (code, period start in epoch seconds[, category]) from the rollups."""
    source = _rollup_source(q, "handover" if q.metric == "handover" else "incident")
    if source is None:
        return direct_sql(q)
    table, period = source
    where, params = _filters(q, "code", "period", ms=False)
    where.insert(0, "level = {level:String}")
    params["level"] = q.level
    keys, inner = "code, p", f"code, toUnixTimestamp({period}) AS p"
    if q.metric == "response":
        keys += ", category"
        inner += ", category"
        where.append("category != ''")
    select = ", ".join(f"sum({name}) AS s_{name}" for name, _ in DIRECT_SUMS[q.metric])
    sql = (f"SELECT {inner}, {select}\nFROM {table}\nWHERE {' AND '.join(where)}\n"
           f"GROUP BY {keys}\nHAVING {_HAVING[q.metric]}")
    return sql, params


def _centile_period_column(q: Query) -> str:
    """The column to filter dates on: the one grouped by when the dates cover whole periods of it
    (the same rows as ``day_ms``, one column fewer to read), else ``day_ms``. Dates are London
    midnights, so hours always fit; months fit when --from/--to are month-aligned."""
    if q.by in (HOUR, DAY) or (q.by == MONTH and _month_aligned(q)):
        return f"{q.by}_ms"
    return "day_ms"


def centile_sql(q: Query) -> tuple[str, dict[str, Any]]:
    """The exact 90th centile per (code, period start in epoch seconds[, category]) from the changes.
    Kept to the rows it needs and the cheapest grouping (bench/bench_queries.py: response ICB x
    month at 50M incidents 256 -> about 150 ms): for one area the code alone is the PREWHERE (its
    few granules are cut to its rows before any other column is read; ClickHouse's own choice also
    moves the null and date tests there, reading those columns for whole granules) and it is not a
    grouping key; rows are grouped by the period column as stored, converted to seconds on the
    few result rows."""
    code_col = _CODE_COLUMN[q.level]
    where, params = _filters(q, code_col, _centile_period_column(q), ms=True)
    prewhere, keys, outer = "", [f"{q.by}_ms AS pm"], ["intDiv(pm, 1000) AS p"]
    if q.code is not None:
        prewhere = f"  PREWHERE {where.pop(0)}\n"
        outer.insert(0, "{code:String} AS code")
    else:
        keys.insert(0, f"{code_col} AS code")
        outer.insert(0, "code")
    if q.metric == "response":
        table, value = "incident_changes", "response_ms"
        where[:0] = ["response_ms IS NOT NULL", "category IS NOT NULL"]
        keys.append("assumeNotNull(category) AS category")
        outer.append("category")
    else:
        table, value = "handover_changes", "handover_duration_ms"
        where.insert(0, "handover_duration_ms IS NOT NULL")
    group = ", ".join(k.rsplit(" AS ", 1)[1] for k in keys)
    sql = (
        f"SELECT {', '.join(outer)}, {P90_SQL} AS p90_ms\nFROM (\n"
        f"  SELECT {', '.join(keys)}, arraySort(groupArray(assumeNotNull({value}) * 2 + (sign > 0))) AS h,"
        f" sum(sign) AS t\n  FROM {table}\n{prewhere}  WHERE {' AND '.join(where)}\n"
        f"  GROUP BY {group})"
    )
    return sql, params


def _div(a: int, b: int, scale: int = 1) -> float | None:
    return None if b == 0 else a / b / scale  # the same operations as domain.metrics


def run(store: Store, q: Query, direct: bool = False) -> list[tuple[str | Number, ...]]:
    """The table's rows (columns ``q.columns``), sorted by code, period (and category), periods
    labelled. ``direct``: sum the changes table instead of the rollups (same answer, slower)."""
    sql, params = direct_sql(q) if direct else rollup_sql(q)
    sums = store.query(sql, params).rows
    p90: dict[tuple[Any, ...], int | None] = {}
    if q.metric != "dispositions":
        csql, cparams = centile_sql(q)
        for r in store.query(csql, cparams).rows:
            p90[tuple(r[:-1])] = None if r[-1] is None else int(r[-1])
    out: list[tuple[tuple[Any, ...], tuple[str | Number, ...]]] = []
    for r in sums:
        code, p = str(r[0]), int(r[1])
        label = period_label(q.by, p * 1000)
        if q.metric == "dispositions":
            out.append(((code, p, ""), (code, label, *(int(v) for v in r[2:]))))
        elif q.metric == "response":
            cat, n, s = str(r[2]), int(r[3]), int(r[4])
            c = p90.get((code, p, cat))
            out.append(((code, p, cat), (code, label, cat, n, _div(s, n, 1000), None if c is None else c / 1000)))
        else:
            _arr, n, s, o15, o30, o45, o60, lost = (int(v) for v in r[2:])
            c = p90.get((code, p))
            out.append(((code, p, ""), (
                code, label, n, _div(s, n, MINUTE_MS), None if c is None else c / MINUTE_MS,
                o15, o30, o45, o60, lost / HOUR_MS,
            )))
    out.sort(key=lambda x: x[0])
    return [row for _, row in out]


def render(columns: Sequence[str], rows: Sequence[Sequence[str | Number]], fmt: str) -> str:
    """``table`` (aligned text, as the oracle renders), ``csv`` or ``json`` (a list of objects)."""
    if fmt == "table":
        return format_table(columns, rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(["" if v is None else v for v in r] for r in rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=1)
    raise QueryError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def oracle_table(report: Any, q: Query) -> list[tuple[str | Number, ...]]:
    """The batch oracle's rows for ``q`` (``report``: a ``domain.oracle.Report``), with the same date
    filter on period starts: equal to :func:`run` when --from/--to cover whole periods (days always)."""
    lo = None if q.start is None else london_midnight_s(q.start) * 1000
    hi = None if q.end is None else london_midnight_s(q.end + timedelta(days=1)) * 1000
    rows: Rows = {k: v for k, v in report.rows.items()
                  if (lo is None or k[4] >= lo) and (hi is None or k[4] < hi)}
    return table(rows, q.metric, q.level, q.by, q.code)
