"""The ICB report's figures: what `amb report icb` and the web page publish for one ICB and period.

Two ways in, one way out. The store (``amb.insight.report``) and the batch oracle (:func:`oracle_inputs`,
from final fact rows) each produce :class:`Inputs`, the per-key aggregates in the number format of
``domain.metrics`` (``DispositionCounts.numbers()`` and friends); :func:`compose` turns Inputs into
the report's :class:`Figures`, tables of plain values. The acceptance test is that both ways give
equal Figures. :func:`disclose` then applies domain.md's disclosure control to every table
before anything is published.

Conventions: the period is clock-start London days ``[lo_ms, hi_ms)`` on each fact's ``day_ms``
(a 111 call's own day); an incident counts in an area by where it happened; handovers by the
incident's ICB; a site's "catchment ICB" is the ICB whose incidents make most of its arrivals in the
period (the store has no hospital → ICB reference, so the flow itself says where a site belongs).
Peers are the other ICBs of the region. No population figures are in ``data/geo``, so rates are per
incident (shares), not per 1,000 population.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar

from domain.disclosure import SUPPRESSED, TableSpec, Value, suppress
from domain.facts import Call111Fact, HandoverFact, IncidentFact
from domain.metrics import (
    CATEGORIES,
    ENGLAND,
    HOUR_MS,
    MINUTE_MS,
    UNKNOWN,
    Calls111,
    DispositionCounts,
    Handovers,
    Number,
    ResponseTimes,
    centile,
)

Numbers = Mapping[str, Number]
K = TypeVar("K", bound=Hashable)

DISP_COLS: Final = (
    "incidents", "hear_and_treat", "see_and_treat", "conveyed_elsewhere", "conveyed_ed", "open",
    "non_conveyance_rate", "hear_and_treat_rate", "see_and_treat_rate", "conveyed_elsewhere_rate", "conveyed_ed_rate",
)
RESP_COLS: Final = tuple(f"{c}_{x}" for c in CATEGORIES for x in ("count", "mean_s", "p90_s"))
HAND_COLS: Final = ("arrivals", "handovers", "handover_mean_min", "handover_p90_min", "over_15", "over_30",
                    "over_45", "over_60", "hours_lost")
CALL_COLS: Final = ("calls", "ambulance", "ambulance_share", "linked", "linked_found", "incidents_111")
QUALITY_COLS: Final = ("incidents", "events", "events_per_incident", "no_created", "unplaceable", "open",
                       "missing_handover", "response_negative", "handover_negative",
                       "span_le_1h", "span_1h_24h", "span_over_24h", "span_p90_min")
"""Per-trust data quality. ``span`` = the incident's latest event time minus its clock start: how long
after the incident updates kept coming (the store keeps event times, not arrival times; arrival
lateness is the worker's ``amb_`` histogram)."""
OUTCOME_COLS: Final = ("hear_and_treat", "see_and_treat", "conveyed_elsewhere", "conveyed_ed", "open")
NOTES: Final = {
    "population": "No population figures are held in data/geo: IMD figures are per incident, not per 1,000 people.",
    "dead_letters": "Dead letters (rejected events) are not held by the store: see `amb dlq show` and "
                    "the amb_dlq_* metrics.",
    "corrections": "The store keeps each incident's latest version only: the events per incident column counts "
                   "all distinct events (corrections and re-triage included).",
}

_DISP_ORDER: Final = {None: 4, "hear_and_treat": 0, "see_and_treat": 1, "conveyed_ed": 2, "conveyed_elsewhere": 3}


# --------------------------------------------------------------------------------- number formats
def disposition_numbers(ht: int, st: int, ed: int, el: int, open_: int) -> dict[str, Number]:
    """``DispositionCounts.numbers()`` from counts."""
    d = DispositionCounts()
    d.c = [ht, st, ed, el, open_]
    return d.numbers()


def _div(a: int, b: int, scale: int = 1) -> float | None:
    return None if b == 0 else a / b / scale  # the same operations as domain.metrics


def response_numbers(n: int, sum_ms: int, p90_ms: int | None) -> dict[str, Number]:
    """``ResponseTimes.numbers()`` from a count, a sum and the exact 90th centile."""
    return {"count": n, "sum_ms": sum_ms, "mean_s": _div(sum_ms, n, 1000), "p90_ms": p90_ms,
            "p90_s": None if p90_ms is None else p90_ms / 1000}


def handover_numbers(arrivals: int, n: int, sum_ms: int, over: Sequence[int], lost_ms: int,
                     p90_ms: int | None) -> dict[str, Number]:
    """The handover figures of ``Handovers.numbers()`` (without crew clear) from sums."""
    o15, o30, o45, o60 = over
    return {"arrivals": arrivals, "handovers": n, "sum_ms": sum_ms, "mean_min": _div(sum_ms, n, MINUTE_MS),
            "p90_ms": p90_ms, "p90_min": None if p90_ms is None else p90_ms / MINUTE_MS,
            "over_15": o15, "over_30": o30, "over_45": o45, "over_60": o60,
            "lost_ms": lost_ms, "hours_lost": lost_ms / HOUR_MS}


def quality_numbers(incidents: int, events: int, no_created: int, unplaceable: int, open_: int, missing: int,
                    response_negative: int, handover_negative: int, spans: Sequence[int],
                    span_p90_ms: int | None) -> dict[str, Number]:
    """Per-trust quality figures; ``spans`` = incidents with span ≤ 1 h, 1–24 h, > 24 h."""
    return {"incidents": incidents, "events": events, "events_per_incident": _div(events, incidents),
            "no_created": no_created, "unplaceable": unplaceable, "open": open_, "missing_handover": missing,
            "response_negative": response_negative, "handover_negative": handover_negative,
            "span_le_1h": spans[0], "span_1h_24h": spans[1], "span_over_24h": spans[2],
            "span_p90_min": None if span_p90_ms is None else span_p90_ms / MINUTE_MS}


EMPTY_DISP: Final = disposition_numbers(0, 0, 0, 0, 0)
EMPTY_RESP: Final = response_numbers(0, 0, None)
EMPTY_HAND: Final = handover_numbers(0, 0, 0, (0, 0, 0, 0), 0, None)


@dataclass(frozen=True)
class Block:
    """Every standard for one key: dispositions, response by category, handover."""

    disp: Numbers = field(default_factory=lambda: EMPTY_DISP)
    resp: Mapping[str, Numbers] = field(default_factory=dict)
    hand: Numbers = field(default_factory=lambda: EMPTY_HAND)

    def values(self) -> tuple[Number, ...]:
        resp: list[Number] = []
        for c in CATEGORIES:
            r = self.resp.get(c, EMPTY_RESP)
            resp += [r["count"], r["mean_s"], r["p90_s"]]
        return (*(self.disp[k] for k in DISP_COLS), *resp, *hand_values(self.hand))


def hand_values(h: Numbers) -> tuple[Number, ...]:
    return (h["arrivals"], h["handovers"], h["mean_min"], h["p90_min"], h["over_15"], h["over_30"], h["over_45"],
            h["over_60"], h["hours_lost"])


@dataclass(frozen=True)
class Context:
    """What the report is about: the ICB, its region and peers, the host trust, the period."""

    icb: str
    region: str
    peers: tuple[str, ...]
    host_trust: str
    lo_ms: int
    hi_ms: int
    label: str
    names: Mapping[str, str] = field(default_factory=dict)

    def name(self, code: str) -> str:
        return self.names.get(code, code)


@dataclass(frozen=True)
class Inputs:
    """The aggregates the report is composed from (one source: the store or the oracle)."""

    standards: Mapping[str, Block]  # area code (ICB, region, England, peers) -> figures
    trusts: Mapping[str, Numbers]  # trust -> dispositions of the ICB's incidents
    sites: Mapping[str, Numbers]  # site -> handovers of the ICB's patients
    site_icbs: Mapping[str, Mapping[str, int]]  # those sites -> incident ICB -> arrivals (every ICB)
    host_split: Mapping[str, Numbers]  # incident ICB -> the host trust's handovers
    imd: Mapping[int, Block]  # IMD decile (0 = unknown LSOA) -> the ICB's figures
    quality: Mapping[str, Numbers]  # trust -> quality
    quality_geo: Mapping[tuple[str, str], int]  # (trust, geo status) -> incidents not placed ok
    calls: Mapping[str, Numbers]  # area code -> 111 link
    outcomes: Numbers  # dispositions of the incidents the ICB's ambulance-disposition 111 calls became
    daily: Mapping[int, Block]  # London day start ms -> the ICB's figures


@dataclass(frozen=True)
class Table:
    """One table of the report. ``group``: per row, the key whose rows add up to a published total
    (for secondary suppression), None for a row that is itself such a total."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    group: tuple[Value, ...] = ()


Figures = dict[str, Table]


# ---------------------------------------------------------------------------------------- compose
def _ordered(m: Mapping[str, Numbers]) -> list[str]:
    return sorted(m)


def compose(inp: Inputs, ctx: Context) -> Figures:
    """The report's tables from aggregates (pure; the same for the store and the oracle)."""
    f: Figures = {}
    roles = [("icb", ctx.icb), ("region", ctx.region), ("england", ENGLAND), *(("peer", p) for p in ctx.peers)]
    f["standards"] = Table(
        ("role", "code", "name", *DISP_COLS, *RESP_COLS, *HAND_COLS),
        tuple((role, code, ctx.name(code), *inp.standards.get(code, Block()).values()) for role, code in roles),
        tuple(ctx.region if role in ("icb", "peer") else None for role, _ in roles),
    )
    f["trusts"] = Table(("trust", "name", *DISP_COLS), tuple(
        (t, ctx.name(t), *(inp.trusts[t][k] for k in DISP_COLS)) for t in _ordered(inp.trusts)),
        tuple("icb" for _ in inp.trusts))
    site_rows = []
    for s in sorted(inp.sites, key=lambda s: (-int(inp.sites[s]["arrivals"] or 0), s)):
        by_icb = inp.site_icbs.get(s, {})
        home = min(by_icb, key=lambda i: (-by_icb[i], i)) if by_icb else UNKNOWN
        site_rows.append((s, home, ctx.name(home), home != ctx.icb, *hand_values(inp.sites[s])))
    f["destinations"] = Table(("site", "catchment_icb", "catchment_name", "cross_border", *HAND_COLS),
                              tuple(site_rows), tuple("icb" for _ in site_rows))
    total_lost = sum(int(h["lost_ms"] or 0) for h in inp.host_split.values())
    f["host_split"] = Table(("icb", "name", *HAND_COLS, "share_of_hours_lost"), tuple(
        (i, ctx.name(i), *hand_values(inp.host_split[i]), _div(int(inp.host_split[i]["lost_ms"] or 0), total_lost))
        for i in _ordered(inp.host_split)), tuple("trust" for _ in inp.host_split))
    f["imd"] = Table(("imd_decile", *DISP_COLS, *RESP_COLS, *HAND_COLS), tuple(
        (d if d else "unknown", *inp.imd[d].values()) for d in sorted(inp.imd, key=lambda d: d or 99)),
        tuple("icb" for _ in inp.imd))
    f["quality"] = Table(("trust", "name", *QUALITY_COLS), tuple(
        (t, ctx.name(t), *(inp.quality[t][k] for k in QUALITY_COLS)) for t in _ordered(inp.quality)),
        tuple("england" for _ in inp.quality))
    f["quality_geo"] = Table(("trust", "geo_status", "incidents"), tuple(
        (t, s, n) for (t, s), n in sorted(inp.quality_geo.items())), tuple(None for _ in inp.quality_geo))
    call_roles = roles[:3]
    f["calls_111"] = Table(("role", "code", "name", *CALL_COLS), tuple(
        (role, code, ctx.name(code), *(inp.calls.get(code, _EMPTY_CALLS)[k] for k in CALL_COLS))
        for role, code in call_roles), tuple(None for _ in call_roles))
    f["calls_111_outcomes"] = Table(("incidents", *OUTCOME_COLS), (
        (sum(int(inp.outcomes[k] or 0) for k in OUTCOME_COLS), *(inp.outcomes[k] for k in OUTCOME_COLS)),), (None,))
    f["daily"] = Table(("day_ms", *DISP_COLS, *RESP_COLS, *HAND_COLS), tuple(
        (d, *inp.daily[d].values()) for d in sorted(inp.daily)), tuple("icb" for _ in inp.daily))
    return f


_EMPTY_CALLS: Final = Calls111().numbers()


# ----------------------------------------------------------------------------------------- oracle
def _blocks(incidents: Iterable[IncidentFact], handovers: Iterable[HandoverFact],
            key_i: Callable[[IncidentFact], K | None], key_h: Callable[[HandoverFact], K | None]) -> dict[K, Block]:
    disp: dict[K, DispositionCounts] = defaultdict(DispositionCounts)
    resp: dict[K, dict[str, ResponseTimes]] = defaultdict(lambda: defaultdict(ResponseTimes))
    hand: dict[K, Handovers] = defaultdict(Handovers)
    for f in incidents:
        k = key_i(f)
        if k is None:
            continue
        disp[k].add(f.disposition)
        if f.response_ms is not None and f.category is not None:
            resp[k][f.category].add(f.response_ms)
    for h in handovers:
        kh = key_h(h)
        if kh is not None:
            hand[kh].add(h.handover_duration_ms, None)
    return {k: Block(disp[k].numbers() if k in disp else EMPTY_DISP,
                     {c: r.numbers() for c, r in resp.get(k, {}).items()},
                     hand[k].numbers() if k in hand else EMPTY_HAND)
            for k in set(disp) | set(hand)}


def oracle_inputs(incidents: Sequence[IncidentFact], handovers: Sequence[HandoverFact], calls: Sequence[Call111Fact],
                  ctx: Context, imd: Mapping[str, int]) -> Inputs:
    """The report's aggregates straight from final fact rows (``domain.oracle.latest``) with
    ``domain.metrics``' own accumulators: the reference the store is tested against."""
    lo, hi = ctx.lo_ms, ctx.hi_ms
    inc = [f for f in incidents if lo <= f.day_ms < hi]
    hand = [h for h in handovers if lo <= h.day_ms < hi]
    areas = {ctx.icb, ctx.region, ENGLAND, *ctx.peers}

    def area_keys(f: IncidentFact | HandoverFact | Call111Fact) -> list[str]:
        return [c for c in (f.icb, f.region, ENGLAND) if c in areas]

    standards: dict[str, Block] = {}
    for code in areas:
        def k_i(f: IncidentFact | HandoverFact, c: str = code) -> str | None:
            return c if c in area_keys(f) else None
        standards.update(_blocks(inc, hand, k_i, k_i))
    mine = [f for f in inc if f.icb == ctx.icb]
    my_hand = [h for h in hand if h.icb == ctx.icb]
    trusts: dict[str, DispositionCounts] = defaultdict(DispositionCounts)
    for f in mine:
        trusts[f.trust].add(f.disposition)
    sites: dict[str, Handovers] = defaultdict(Handovers)
    for h in my_hand:
        sites[h.site].add(h.handover_duration_ms, None)
    site_icbs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for h in hand:
        if h.site in sites:
            site_icbs[h.site][h.icb] += 1
    split: dict[str, Handovers] = defaultdict(Handovers)
    for h in hand:
        if h.trust == ctx.host_trust:
            split[h.icb].add(h.handover_duration_ms, None)
    imd_blocks = _blocks(mine, my_hand, lambda f: imd.get(f.lsoa, 0), lambda h: imd.get(h.lsoa, 0))
    quality = _oracle_quality(inc, hand)
    qgeo: dict[tuple[str, str], int] = defaultdict(int)
    for f in inc:
        if f.geo_status != "ok":
            qgeo[(f.trust, f.geo_status)] += 1
    known = {(f.trust, f.incident_id): f for f in incidents}
    cl = [c for c in calls if lo <= c.day_ms < hi]
    call_aggs: dict[str, Calls111] = defaultdict(Calls111)
    outcomes = DispositionCounts()
    for c in cl:
        link = c.linked_incident_id
        found = link is not None and (c.trust, link) in known
        for code in area_keys(c):
            call_aggs[code].add_call(c.disposition_ambulance is True, link is not None, found)
        if c.icb == ctx.icb and c.disposition_ambulance is True and found and link is not None:
            outcomes.add(known[(c.trust, link)].disposition)
    for f in inc:
        if f.source == "111":
            for code in area_keys(f):
                call_aggs[code].add_incident_111()
    daily = _blocks(mine, my_hand, lambda f: f.day_ms, lambda h: h.day_ms)
    return Inputs(standards, {t: d.numbers() for t, d in trusts.items()}, {s: h.numbers() for s, h in sites.items()},
                  {s: dict(v) for s, v in site_icbs.items()}, {i: h.numbers() for i, h in split.items()},
                  imd_blocks, quality, dict(qgeo), {a: c.numbers() for a, c in call_aggs.items()},
                  outcomes.numbers(), daily)


def _oracle_quality(inc: Sequence[IncidentFact], hand: Sequence[HandoverFact]) -> dict[str, Numbers]:
    by: dict[str, list[IncidentFact]] = defaultdict(list)
    for f in inc:
        by[f.trust].append(f)
    out: dict[str, Numbers] = {}
    for t, fs in by.items():
        spans = [f.last_event_ms - f.period_ms for f in fs]
        out[t] = quality_numbers(
            len(fs), sum(f.version for f in fs), sum(f.clock_start_ms is None for f in fs),
            sum(f.icb == UNKNOWN for f in fs), sum(f.open for f in fs),
            sum(f.conveyed and f.handover_duration_ms is None and not f.handover_negative for f in fs),
            sum(f.response_negative for f in fs), sum(f.handover_negative for f in fs),
            (sum(s <= HOUR_MS for s in spans), sum(HOUR_MS < s <= 24 * HOUR_MS for s in spans),
             sum(s > 24 * HOUR_MS for s in spans)),
            centile(spans))
    return out


# ------------------------------------------------------------------------------------- disclosure
_DISP_DERIVED: Final = {
    "non_conveyance_rate": ("incidents", "hear_and_treat", "see_and_treat", "conveyed_elsewhere"),
    "hear_and_treat_rate": ("incidents", "hear_and_treat"), "see_and_treat_rate": ("incidents", "see_and_treat"),
    "conveyed_elsewhere_rate": ("incidents", "conveyed_elsewhere"), "conveyed_ed_rate": ("incidents", "conveyed_ed"),
}
_DISP_COUNTS: Final = ("incidents", "hear_and_treat", "see_and_treat", "conveyed_elsewhere", "conveyed_ed", "open")
_DISP_TOTALS: Final = (("incidents", ("hear_and_treat", "see_and_treat", "conveyed_elsewhere", "conveyed_ed")),)
_RESP_COUNTS: Final = tuple(f"{c}_count" for c in CATEGORIES)
_RESP_DERIVED: Final = {f"{c}_{x}": (f"{c}_count",) for c in CATEGORIES for x in ("mean_s", "p90_s")}
_HAND_COUNTS: Final = ("arrivals", "handovers", "over_15", "over_30", "over_45", "over_60")
_HAND_DERIVED: Final = {k: ("handovers",) for k in ("handover_mean_min", "handover_p90_min", "hours_lost")}
_STANDARD: Final = TableSpec(
    counts=(*_DISP_COUNTS, *_RESP_COUNTS, *_HAND_COUNTS),
    derived={**_DISP_DERIVED, **_RESP_DERIVED, **_HAND_DERIVED}, totals=_DISP_TOTALS, groups=("_group",))
_HAND_ONLY: Final = TableSpec(counts=_HAND_COUNTS, derived=_HAND_DERIVED, groups=("_group",))
SPECS: Final[Mapping[str, TableSpec]] = {
    "standards": _STANDARD,
    "trusts": TableSpec(counts=_DISP_COUNTS, derived=_DISP_DERIVED, totals=_DISP_TOTALS, groups=("_group",)),
    "destinations": _HAND_ONLY,
    "host_split": replace(_HAND_ONLY, derived={**_HAND_DERIVED, "share_of_hours_lost": ("handovers",)}),
    "imd": _STANDARD,
    "quality": TableSpec(
        counts=("incidents", "events", "no_created", "unplaceable", "open", "missing_handover", "response_negative",
                "handover_negative", "span_le_1h", "span_1h_24h", "span_over_24h"),
        derived={"events_per_incident": ("incidents",), "span_p90_min": ("incidents",)},
        totals=(("incidents", ("span_le_1h", "span_1h_24h", "span_over_24h")),), groups=("_group",)),
    "quality_geo": TableSpec(counts=("incidents",), groups=("_group",)),
    "calls_111": TableSpec(counts=("calls", "ambulance", "linked", "linked_found", "incidents_111"),
                           derived={"ambulance_share": ("calls", "ambulance")}, groups=("_group",)),
    "calls_111_outcomes": TableSpec(counts=("incidents", *OUTCOME_COLS),
                                    totals=(("incidents", OUTCOME_COLS),), groups=("_group",)),
    "daily": _STANDARD,
}
"""Disclosure control per report table (domain.disclosure): counts of 1-7 suppressed, figures on
fewer than 8 records withheld, complements suppressed within rows and across rows that add up to
a published total (an ICB's trusts, sites, deciles and days; a region's ICBs)."""


def disclose(figures: Figures) -> Figures:
    """Every table after disclosure control: hidden cells are :data:`SUPPRESSED` (``*``)."""
    out: Figures = {}
    for name, t in figures.items():
        if not t.rows:
            out[name] = t
            continue
        rows = [(*r, g) for r, g in zip(t.rows, t.group, strict=True)]
        d = suppress((*t.columns, "_group"), rows, SPECS[name])
        out[name] = Table(t.columns, tuple(r[:-1] for r in d.rows), t.group)
    return out


def suppressed_cells(figures: Figures) -> int:
    return sum(v == SUPPRESSED for t in figures.values() for r in t.rows for v in r)
