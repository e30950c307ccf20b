"""Metric definitions (domain.md "Metric definitions"): time buckets, rollup levels, mergeable aggregates.

Everything here is defined so that ClickHouse can reproduce it to the unit from the fact rows of
:mod:`domain.facts`:

- durations are integer milliseconds, so sums are exact (``sum(response_ms)`` in SQL);
- the 90th centile is ClickHouse's ``quantileExact(0.9)`` (see :func:`centile`), whose mergeable
  state (``quantileExactState``/``quantileExactMerge``) rolls up from LSOA to England exactly;
- period keys are the UTC instant (epoch ms) at which the Europe/London local hour, day, ISO week,
  month or financial year containing the clock start begins (``PERIOD_SQL`` gives the SQL);
- every geographic level holds every incident once: unattributed incidents go to code ``unknown``
  at each sub-England level, so level totals add up (sum over ICBs = sum over regions = England).

Aggregates are small mutable accumulators with ``add`` and ``merge`` (commutative and associative),
so a partitioned computation can merge partial results; ``numbers()`` gives the reported figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Final, NamedTuple, TypeVar, cast
from zoneinfo import ZoneInfo

from domain.events import Disposition

if TYPE_CHECKING:
    from domain.facts import Call111Fact, HandoverFact, IncidentFact

Number = int | float | None
RowKey = tuple[str, str, str, str, int]
"""(metric group, level, code, period kind, period start epoch ms UTC)."""
Rows = dict[RowKey, dict[str, Number]]

LONDON: Final = ZoneInfo("Europe/London")
HOUR_MS: Final = 3_600_000
MINUTE_MS: Final = 60_000

UNKNOWN: Final = "unknown"
"""Code of an unattributed incident at every sub-England level (and of an unknown site or host ICB)."""
ENGLAND: Final = "E92000001"

# Geographic levels, finest first; every incident appears once at each.
LSOA, MSOA, LAD, SICBL, ICB, REGION, COUNTRY, TRUST = (
    "lsoa", "msoa", "lad", "sicbl", "icb", "region", "england", "trust",
)
GEO_LEVELS: Final = (LSOA, MSOA, LAD, SICBL, ICB, REGION, COUNTRY, TRUST)
# Handover only: the hospital site and the ICB hosting it (differs from the incident's ICB across borders).
SITE, HOST_ICB = "site", "host_icb"

HOUR, DAY, WEEK, MONTH, FY = "hour", "day", "week", "month", "fy"
PERIOD_KINDS: Final = (HOUR, DAY, WEEK, MONTH, FY)

# Metric groups (the first element of a RowKey).
DISPOSITIONS, HANDOVER, CALLS_111, QUALITY = "dispositions", "handover", "calls_111", "quality"
RESPONSE_PREFIX: Final = "response:"
CATEGORIES: Final = ("C1", "C2", "C3", "C4")


def response_group(category: str) -> str:
    """Response times are one group per category: ``response:C1`` … ``response:C4``."""
    return RESPONSE_PREFIX + category


# --------------------------------------------------------------------------------------- periods
class Periods(NamedTuple):
    """Start (epoch ms UTC) of the Europe/London local hour, day, ISO week, month and financial year."""

    hour: int
    day: int
    week: int
    month: int
    fy: int


def _midnight_ms(d: date) -> int:
    # London's clocks change at 01:00 UTC, so local midnight always exists and is unambiguous.
    return int(datetime(d.year, d.month, d.day, tzinfo=LONDON).timestamp()) * 1000


@lru_cache(maxsize=1 << 16)
def _day_periods(hour_ms: int) -> tuple[int, int, int, int]:
    d = datetime.fromtimestamp(hour_ms // 1000, LONDON).date()
    fy_year = d.year if d.month >= 4 else d.year - 1
    return (
        _midnight_ms(d),
        _midnight_ms(d - timedelta(days=d.weekday())),
        _midnight_ms(d.replace(day=1)),
        _midnight_ms(date(fy_year, 4, 1)),
    )


def periods(ms: int) -> Periods:
    """Period keys of an instant. London's offset is always whole hours, so the local hour starts at
    the UTC hour; the day, week, month and year depend only on that hour (hence the cache)."""
    hour = ms - ms % HOUR_MS
    return Periods(hour, *_day_periods(hour))


PERIOD_SQL: Final[Mapping[str, str]] = {
    HOUR: "toStartOfHour({t})",
    DAY: "toStartOfDay(toTimeZone({t}, 'Europe/London'))",
    WEEK: "toDateTime(toMonday(toTimeZone({t}, 'Europe/London')), 'Europe/London')",
    MONTH: "toDateTime(toStartOfMonth(toTimeZone({t}, 'Europe/London')), 'Europe/London')",
    FY: "toDateTime(makeDate(toYear(addMonths(toDate(toTimeZone({t}, 'Europe/London')), -3)), 4, 1), "
        "'Europe/London')",
}
"""ClickHouse expressions giving the same instant as :func:`periods` for a DateTime/DateTime64 ``{t}``.
Note ``toMonday``/``toStartOfMonth`` return a Date, which must be put back at London midnight."""


def period_label(kind: str, start_ms: int) -> str:
    """Human label of a period: ``2026-10-25 01:00 GMT``, ``2026-10-25``, ``2026-W43``, ``2026-10``, ``2026/27``."""
    local = datetime.fromtimestamp(start_ms // 1000, LONDON)
    if kind == HOUR:
        return local.strftime("%Y-%m-%d %H:00 %Z")
    if kind == DAY:
        return local.strftime("%Y-%m-%d")
    if kind == WEEK:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == MONTH:
        return local.strftime("%Y-%m")
    if kind == FY:
        return f"{local.year}/{(local.year + 1) % 100:02d}"
    raise ValueError(f"unknown period kind {kind!r}; expected one of {', '.join(PERIOD_KINDS)}")


# --------------------------------------------------------------------------------------- centile
CENTILE: Final = 0.9


def centile(values: Sequence[int], q: float = CENTILE) -> int | None:
    """ClickHouse ``quantileExact(q)``: the element at 0-based index ``min(int(q * n), n - 1)`` of the
    sorted values (no interpolation; for n = 10 the 90th centile is the largest value). ``q * n`` is
    the same IEEE double product ClickHouse computes, so the index matches bit for bit. None if empty."""
    n = len(values)
    if n == 0:
        return None
    return sorted(values)[min(int(q * n), n - 1)]


def _div(a: int, b: int, scale: int = 1) -> float | None:
    return None if b == 0 else a / b / scale


# ------------------------------------------------------------------------------------ aggregates
AMBSYS: Final[Mapping[str, str]] = {
    "A7": "incidents", "A17": "hear_and_treat", "A56": "face_to_face",
    "A53": "conveyed_ed", "A54": "conveyed_elsewhere", "A55": "see_and_treat",
}
"""AmbSYS field -> our name. A7 = A17 + A56; A56 = A53 + A54 + A55."""

_DISP_INDEX: Final[Mapping[str | None, int]] = {
    Disposition.HEAR_AND_TREAT: 0, Disposition.SEE_AND_TREAT: 1,
    Disposition.CONVEYED_ED: 2, Disposition.CONVEYED_ELSEWHERE: 3, None: 4,
}


class DispositionCounts:
    """AmbSYS outcome counts. ``incidents`` (A7) counts incidents WITH a disposition: rates use it as
    denominator; incidents without one yet are ``open``, counted apart (trust-export-format.md)."""

    __slots__ = ("c",)

    def __init__(self) -> None:
        self.c = [0, 0, 0, 0, 0]  # hear_and_treat, see_and_treat, conveyed_ed, conveyed_elsewhere, open

    def add(self, disposition: str | None) -> None:
        self.c[_DISP_INDEX[disposition]] += 1

    def merge(self, other: DispositionCounts) -> None:
        for i, v in enumerate(other.c):
            self.c[i] += v

    def numbers(self) -> dict[str, Number]:
        ht, st, ed, el, op = self.c
        a7 = ht + st + ed + el
        not_ed = ht + st + el
        return {
            "incidents": a7, "hear_and_treat": ht, "see_and_treat": st, "conveyed_ed": ed,
            "conveyed_elsewhere": el, "face_to_face": st + ed + el, "not_conveyed_ed": not_ed, "open": op,
            "non_conveyance_rate": _div(not_ed, a7), "hear_and_treat_rate": _div(ht, a7),
            "see_and_treat_rate": _div(st, a7), "conveyed_elsewhere_rate": _div(el, a7),
            "conveyed_ed_rate": _div(ed, a7),
        }


class ResponseTimes:
    """Response times of one category: exact value list (mergeable by concatenation)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[int] = []

    def add(self, response_ms: int) -> None:
        self.values.append(response_ms)

    def merge(self, other: ResponseTimes) -> None:
        self.values.extend(other.values)

    def numbers(self) -> dict[str, Number]:
        n, total, p90 = len(self.values), sum(self.values), centile(self.values)
        return {
            "count": n, "sum_ms": total, "mean_s": _div(total, n, 1000),
            "p90_ms": p90, "p90_s": None if p90 is None else p90 / 1000,
        }


HANDOVER_STANDARD_MS: Final = 15 * MINUTE_MS
HANDOVER_THRESHOLDS_MIN: Final = (15, 30, 45, 60)  # "over N" counts in Handovers.numbers
CLEAR_STANDARD_MS: Final = 30 * MINUTE_MS


def lost_ms(handover_ms: int) -> int:
    """Time lost to a handover beyond the 15-minute standard: max(0, duration − 15 min)."""
    return max(0, handover_ms - HANDOVER_STANDARD_MS)


class Handovers:
    """Hospital handovers: arrival → handover complete ("over N" means strictly more than N minutes),
    hours lost, and arrival → crew clear (standard 30 min)."""

    __slots__ = ("arrivals", "clear", "values")

    def __init__(self) -> None:
        self.arrivals = 0
        self.values: list[int] = []
        self.clear: list[int] = []

    def add(self, handover_ms: int | None, clear_ms: int | None) -> None:
        self.arrivals += 1
        if handover_ms is not None:
            self.values.append(handover_ms)
        if clear_ms is not None:
            self.clear.append(clear_ms)

    def merge(self, other: Handovers) -> None:
        self.arrivals += other.arrivals
        self.values.extend(other.values)
        self.clear.extend(other.clear)

    def numbers(self) -> dict[str, Number]:
        v = self.values
        n, total, p90 = len(v), sum(v), centile(v)
        lost = over_15 = over_30 = over_45 = over_60 = 0
        for x in v:
            if x > 15 * MINUTE_MS:
                lost += x - HANDOVER_STANDARD_MS
                over_15 += 1
                if x > 30 * MINUTE_MS:
                    over_30 += 1
                    if x > 45 * MINUTE_MS:
                        over_45 += 1
                        over_60 += x > 60 * MINUTE_MS
        return {
            "arrivals": self.arrivals, "handovers": n, "sum_ms": total,
            "mean_min": _div(total, n, MINUTE_MS), "p90_ms": p90,
            "p90_min": None if p90 is None else p90 / MINUTE_MS,
            "over_15": over_15, "over_30": over_30, "over_45": over_45, "over_60": over_60,
            "lost_ms": lost, "hours_lost": lost / HOUR_MS,
            "clear_count": len(self.clear), "clear_sum_ms": sum(self.clear),
            "clear_over_30": sum(1 for x in self.clear if x > CLEAR_STANDARD_MS),
        }


class Calls111:
    """NHS 111 → 999 link. ``calls``/``ambulance``/``linked``/``linked_found`` count 111 calls by the
    call's geography and call time; ``incidents_111`` counts incidents created with source 111 by the
    incident's geography and clock start. Share with ambulance disposition = ambulance / calls."""

    __slots__ = ("c",)

    def __init__(self) -> None:
        self.c = [0, 0, 0, 0, 0]  # calls, ambulance, linked, linked_found, incidents_111

    def add_call(self, ambulance: bool, linked: bool, linked_found: bool) -> None:
        c = self.c
        c[0] += 1
        c[1] += ambulance
        c[2] += linked
        c[3] += linked_found

    def add_incident_111(self) -> None:
        self.c[4] += 1

    def merge(self, other: Calls111) -> None:
        for i, v in enumerate(other.c):
            self.c[i] += v

    def numbers(self) -> dict[str, Number]:
        calls, amb, linked, found, inc = self.c
        return {
            "calls": calls, "ambulance": amb, "ambulance_share": _div(amb, calls),
            "linked": linked, "linked_found": found, "incidents_111": inc,
        }


class Quality:
    """Data-quality figures per trust and England: nothing is dropped, so the odd cases are counted."""

    __slots__ = ("c",)
    NAMES: Final = (
        "incidents", "events", "no_created", "geo_unknown", "open", "complete",
        "response_negative", "handover_negative",
    )

    def __init__(self) -> None:
        self.c = [0] * len(self.NAMES)

    def add(self, fact: IncidentFact) -> None:
        c = self.c
        c[0] += 1
        c[1] += fact.version
        c[2] += fact.clock_start_ms is None
        c[3] += fact.icb == UNKNOWN
        c[4] += fact.open
        c[5] += fact.complete
        c[6] += fact.response_negative
        c[7] += fact.handover_negative

    def merge(self, other: Quality) -> None:
        for i, v in enumerate(other.c):
            self.c[i] += v

    def numbers(self) -> dict[str, Number]:
        return dict(zip(self.NAMES, self.c, strict=True))


Aggregate = DispositionCounts | ResponseTimes | Handovers | Calls111 | Quality
_A = TypeVar("_A", DispositionCounts, ResponseTimes, Handovers, Calls111, Quality)
CellKey = tuple[str, str, str, int]
"""(level, code, period kind, period start ms): a RowKey without its group."""


# ---------------------------------------------------------------------------------------- rollup
def geo_keys(fact: IncidentFact | HandoverFact | Call111Fact) -> tuple[tuple[str, str], ...]:
    """The (level, code) cells a fact rolls up into, one per geographic level."""
    return (
        (LSOA, fact.lsoa), (MSOA, fact.msoa), (LAD, fact.lad), (SICBL, fact.sicbl),
        (ICB, fact.icb), (REGION, fact.region), (COUNTRY, ENGLAND), (TRUST, fact.trust),
    )


def period_keys(fact: IncidentFact | HandoverFact | Call111Fact) -> tuple[tuple[str, int], ...]:
    return ((HOUR, fact.hour_ms), (DAY, fact.day_ms), (WEEK, fact.week_ms), (MONTH, fact.month_ms), (FY, fact.fy_ms))


def _cell(cells: dict[CellKey, _A], key: CellKey, factory: type[_A]) -> _A:
    agg = cells.get(key)
    if agg is None:
        agg = cells[key] = factory()
    return agg


class Rollup:
    """Every metric at every level and period, accumulated from final fact rows (one per incident).

    Feed it the highest version of each fact only (as ClickHouse's ReplacingMergeTree ... FINAL
    does); two rollups over disjoint incidents merge with :meth:`merge`.
    """

    def __init__(self, site_icb: Mapping[str, str] | None = None) -> None:
        self.site_icb = site_icb
        self.groups: dict[str, dict[CellKey, Aggregate]] = {}

    def _cells(self, group: str, factory: type[_A]) -> dict[CellKey, _A]:
        cells = self.groups.get(group)
        if cells is None:
            cells = self.groups[group] = {}
        return cast("dict[CellKey, _A]", cells)

    def add_incident(self, fact: IncidentFact) -> None:
        # The oracle's hot loop (about 40 cells per incident): cell lookups are inlined on purpose.
        pers = period_keys(fact)
        disp = self._cells(DISPOSITIONS, DispositionCounts)
        idx = _DISP_INDEX[fact.disposition]
        rms = fact.response_ms
        resp = self._cells(response_group(fact.category), ResponseTimes) if (
            rms is not None and fact.category is not None) else None
        calls = self._cells(CALLS_111, Calls111) if fact.source == "111" else None
        for level, code in geo_keys(fact):
            for kind, p in pers:
                key = (level, code, kind, p)
                d = disp.get(key)
                if d is None:
                    d = disp[key] = DispositionCounts()
                d.c[idx] += 1
                if resp is not None and rms is not None:
                    r = resp.get(key)
                    if r is None:
                        r = resp[key] = ResponseTimes()
                    r.values.append(rms)
                if calls is not None:
                    _cell(calls, key, Calls111).add_incident_111()
        qual = self._cells(QUALITY, Quality)
        for level, code in ((COUNTRY, ENGLAND), (TRUST, fact.trust)):
            for kind, p in pers:
                _cell(qual, (level, code, kind, p), Quality).add(fact)

    def add_handover(self, fact: HandoverFact) -> None:
        cells = self._cells(HANDOVER, Handovers)
        geos = geo_keys(fact) + ((SITE, fact.site),)
        if self.site_icb is not None:
            geos += ((HOST_ICB, self.site_icb.get(fact.site, UNKNOWN)),)
        dur, clear = fact.handover_duration_ms, fact.clear_duration_ms
        pers = period_keys(fact)
        for level, code in geos:
            for kind, p in pers:
                key = (level, code, kind, p)
                h = cells.get(key)
                if h is None:
                    h = cells[key] = Handovers()
                h.arrivals += 1
                if dur is not None:
                    h.values.append(dur)
                if clear is not None:
                    h.clear.append(clear)

    def add_call(self, fact: Call111Fact, linked_found: bool) -> None:
        """``linked_found``: the call's linked incident exists (a join the caller does)."""
        cells = self._cells(CALLS_111, Calls111)
        amb, linked = fact.disposition_ambulance is True, fact.linked_incident_id is not None
        pers = period_keys(fact)
        for level, code in geo_keys(fact):
            for kind, p in pers:
                _cell(cells, (level, code, kind, p), Calls111).add_call(amb, linked, linked_found)

    def merge(self, other: Rollup) -> None:
        """Add another rollup's cells (over other incidents) into this one."""
        for group, cells in other.groups.items():
            mine = self.groups.setdefault(group, {})
            for key, agg in cells.items():
                cur = mine.get(key)
                if cur is None:
                    cur = mine[key] = type(agg)()
                _merge(cur, agg)

    def rows(self) -> Rows:
        return {
            (group, *key): agg.numbers()
            for group, cells in self.groups.items()
            for key, agg in cells.items()
        }


def _merge(into: Aggregate, other: Aggregate) -> None:
    if type(into) is not type(other):
        raise TypeError(f"cannot merge {type(other).__name__} into {type(into).__name__}")
    into.merge(other)  # type: ignore[arg-type]  # same type checked above


# ---------------------------------------------------------------------------------------- tables
TABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "dispositions": ("code", "period", "incidents", "hear_and_treat", "see_and_treat", "conveyed_ed",
                     "conveyed_elsewhere", "open"),
    "response": ("code", "period", "category", "count", "mean_s", "p90_s"),
    "handover": ("code", "period", "handovers", "mean_min", "p90_min", "over_15", "over_30", "over_45",
                 "over_60", "hours_lost"),
}
"""Columns of the ``amb query`` tables; the ClickHouse query renders the same names."""


def table(
    rows: Mapping[RowKey, Mapping[str, Number]], name: str, level: str, period_kind: str,
    code: str | None = None,
) -> list[tuple[str | Number, ...]]:
    """Rows of an ``amb query`` table (columns ``TABLES[name]``) for one level and period kind,
    optionally one code; sorted by code, period (and category). Periods are labelled."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")
    if period_kind not in PERIOD_KINDS:
        raise ValueError(f"unknown period kind {period_kind!r}; expected one of {', '.join(PERIOD_KINDS)}")
    out: list[tuple[tuple[str, int, str], tuple[str | Number, ...]]] = []
    cols = TABLES[name]
    for (group, lvl, c, kind, p), nums in rows.items():
        if lvl != level or kind != period_kind or (code is not None and c != code):
            continue
        if name == "response":
            if not group.startswith(RESPONSE_PREFIX):
                continue
            cat = group[len(RESPONSE_PREFIX):]
            out.append(((c, p, cat), (c, period_label(kind, p), cat, *(nums[k] for k in cols[3:]))))
        elif group == name:
            out.append(((c, p, ""), (c, period_label(kind, p), *(nums[k] for k in cols[2:]))))
    out.sort(key=lambda r: r[0])
    return [r for _, r in out]


def format_table(columns: Sequence[str], rows: Iterable[Sequence[str | Number]]) -> str:
    """Plain text table; floats to one decimal place (two for hours), None as blank."""
    def cell(col: str, v: str | Number) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.2f}" if col == "hours_lost" else f"{v:.1f}"
        return str(v)

    body = [[cell(c, v) for c, v in zip(columns, r, strict=True)] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
              for r in body]
    return "\n".join(lines)
