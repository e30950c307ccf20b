"""The ICB report from the ClickHouse store: `amb report icb` and the web page use this one module.

A :class:`Source` is anything that runs a SELECT: the store itself (the CLI, the operator's view)
or the analyst service's audited, scoped fetch (:class:`ServiceSource`, the web page). The SQL here
reads the current fact rows (``… FINAL``: the highest version of each incident, as the oracle's
``latest``) and returns only integer counts, integer millisecond sums and exact 90th centiles
(``quantileExact(0.9)``, ``domain.metrics.centile``); every mean, rate and hours figure is then
derived in Python by ``domain.icb_report`` with the same float operations as the batch oracle, so
the published figures equal the oracle's to the bit (tests/test_report.py).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

from amb.errors import AmbError
from amb.insight.series import Areas, load_areas
from domain.icb_report import (
    Block,
    Context,
    Figures,
    Inputs,
    Numbers,
    compose,
    disposition_numbers,
    handover_numbers,
    quality_numbers,
    response_numbers,
)
from domain.metrics import ENGLAND, HOUR_MS
from sinks.queries import london_midnight_s
from sinks.store import Result


class ReportError(AmbError):
    """A report was asked for something that does not exist (ICB, period)."""


class Source(Protocol):
    """Runs one SELECT with ``{name:Type}`` parameters (a Store, or the service's audited fetch)."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result: ...


# ------------------------------------------------------------------------------------ the request
@dataclass(frozen=True)
class Period:
    """Clock-start London days ``start``..``end`` inclusive."""

    start: date
    end: date

    @classmethod
    def parse(cls, period: str | None, start: date | None = None, end: date | None = None) -> Period:
        """``--period 2026-10`` (a month) or ``--from``/``--to`` dates."""
        if period:
            if start or end:
                raise ReportError("give --period or --from/--to, not both")
            try:
                y, m = (int(x) for x in period.split("-"))
                first = date(y, m, 1)
            except ValueError:
                raise ReportError(f"--period {period!r} is not a month like 2026-10") from None
            nxt = date(y + m // 12, m % 12 + 1, 1)
            return cls(first, nxt - timedelta(days=1))
        if not (start and end):
            raise ReportError("give --period YYYY-MM or both --from and --to")
        if start > end:
            raise ReportError(f"--from {start} is after --to {end}")
        return cls(start, end)

    @property
    def lo_ms(self) -> int:
        return london_midnight_s(self.start) * 1000

    @property
    def hi_ms(self) -> int:
        return london_midnight_s(self.end + timedelta(days=1)) * 1000

    @property
    def label(self) -> str:
        if self.start.day == 1 and (self.end + timedelta(days=1)).day == 1 and self.start.month == self.end.month:
            return self.start.strftime("%Y-%m")
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


@dataclass(frozen=True)
class Reference:
    """ICBs, regions and trusts: names, ODS codes, which trusts serve which ICB (data/geo)."""

    areas: Areas
    trust_names: dict[str, str]
    icb_trusts: dict[str, list[tuple[str, bool]]]  # ICB -> [(trust, primary)]

    def icbs(self) -> list[tuple[str, str, str]]:
        """(ONS code, ODS code, name) of every ICB, by name."""
        ods = {v: k for k, v in self.areas.ods.items()}
        return sorted(((c, ods.get(c, ""), self.areas.names[c]) for c in self.areas.icb_region),
                      key=lambda x: x[2])

    def resolve(self, code: str) -> str:
        icb = self.areas.resolve_icb(code)
        if icb not in self.areas.icb_region:
            raise ReportError(f"unknown ICB {code!r}: give an ICB ODS code (e.g. QOP) or ONS code (E54…)")
        return icb

    def context(self, icb: str, period: Period) -> Context:
        region = self.areas.icb_region[icb]
        peers = tuple(sorted(c for c, r in self.areas.icb_region.items() if r == region and c != icb))
        serving = self.icb_trusts.get(icb, [])
        host = next((t for t, primary in serving if primary), serving[0][0] if serving else "")
        names = {**self.areas.names, **self.trust_names}
        return Context(icb, region, peers, host, period.lo_ms, period.hi_ms, period.label, names)


@lru_cache(maxsize=4)
def load_reference(geo_data_dir: Path) -> Reference:
    trusts: dict[str, str] = {}
    serving: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    path = geo_data_dir / "ambulance_trusts.csv"
    if path.exists():
        with path.open(newline="", encoding="utf-8") as f:
            trusts = {r["trust_ods"]: r["trust_name"] for r in csv.DictReader(f)}
    path = geo_data_dir / "trust_icb.csv"
    if path.exists():
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                serving[r["icb_code"]].append((r["trust_ods"], r["is_primary"] == "1"))
    return Reference(load_areas(geo_data_dir), trusts, dict(serving))


# ------------------------------------------------------------------------------------------- SQL
_INC: Final = "(SELECT * FROM incident_facts FINAL WHERE day_ms >= {lo:Int64} AND day_ms < {hi:Int64})"
_HAND: Final = "(SELECT * FROM handover_facts FINAL WHERE day_ms >= {lo:Int64} AND day_ms < {hi:Int64})"
_CALLS: Final = "(SELECT * FROM call_facts FINAL WHERE day_ms >= {lo:Int64} AND day_ms < {hi:Int64})"
_IMD_JOIN: Final = "LEFT JOIN (SELECT lsoa21_code, imd_decile FROM imd_lsoa21 FINAL) AS d ON d.lsoa21_code = f.lsoa"
AREA_KEY: Final = f"arrayJoin([icb, region, '{ENGLAND}'])"
"""One row per area an incident counts in (its ICB, its region, England)."""

DISP_SQL: Final = ("countIf(disposition = 'hear_and_treat'), countIf(disposition = 'see_and_treat'), "
                   "countIf(disposition = 'conveyed_ed'), countIf(disposition = 'conveyed_elsewhere'), "
                   "countIf(disposition IS NULL)")
RESP_SQL: Final = ("count(), sum(assumeNotNull(response_ms)), "
                   "quantileExact(0.9)(assumeNotNull(response_ms))")
HAND_SQL: Final = (
    "count(), countIf(handover_duration_ms IS NOT NULL), sum(ifNull(handover_duration_ms, 0)), "
    "countIf(handover_duration_ms > 900000), countIf(handover_duration_ms > 1800000), "
    "countIf(handover_duration_ms > 2700000), countIf(handover_duration_ms > 3600000), sum(lost_ms), "
    "quantileExactIf(0.9)(assumeNotNull(handover_duration_ms), handover_duration_ms IS NOT NULL)")


def _key(v: Any) -> Any:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _hand(r: Sequence[Any]) -> Numbers:
    arrivals, n, s, o15, o30, o45, o60, lost, p90 = r
    return handover_numbers(int(arrivals), int(n), int(s), (int(o15), int(o30), int(o45), int(o60)), int(lost),
                            int(p90) if n else None)


class Reader:
    """The report's queries over one source and period."""

    def __init__(self, source: Source, ctx: Context) -> None:
        self.source = source
        self.ctx = ctx
        self.params: dict[str, Any] = {"lo": ctx.lo_ms, "hi": ctx.hi_ms, "icb": ctx.icb}

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return self.source.query(sql, {**self.params, **params}).rows

    def disp(self, key: str, where: str = "1", join: str = "", **p: Any) -> dict[Any, Numbers]:
        sql = f"SELECT {key} AS k, {DISP_SQL} FROM {_INC} AS f {join} WHERE {where} GROUP BY k"
        return {_key(r[0]): disposition_numbers(*(int(v) for v in r[1:])) for r in self.rows(sql, **p)}

    def resp(self, key: str, where: str = "1", join: str = "", **p: Any) -> dict[Any, dict[str, Numbers]]:
        sql = (f"SELECT {key} AS k, assumeNotNull(category) AS cat, {RESP_SQL} FROM {_INC} AS f {join} "
               f"WHERE response_ms IS NOT NULL AND category IS NOT NULL AND ({where}) GROUP BY k, cat")
        out: dict[Any, dict[str, Numbers]] = defaultdict(dict)
        for r in self.rows(sql, **p):
            out[_key(r[0])][str(r[1])] = response_numbers(int(r[2]), int(r[3]), int(r[4]))
        return out

    def hand(self, key: str, where: str = "1", join: str = "", **p: Any) -> dict[Any, Numbers]:
        sql = f"SELECT {key} AS k, {HAND_SQL} FROM {_HAND} AS f {join} WHERE {where} GROUP BY k"
        return {_key(r[0]): _hand(r[1:]) for r in self.rows(sql, **p)}

    def blocks(self, key: str, where: str = "1", join: str = "", **p: Any) -> dict[Any, Block]:
        disp, resp, hand = self.disp(key, where, join, **p), self.resp(key, where, join, **p), self.hand(
            key, where, join, **p)
        return {k: Block(disp.get(k, Block().disp), resp.get(k, {}), hand.get(k, Block().hand))
                for k in set(disp) | set(hand)}

    def inputs(self) -> Inputs:
        ctx = self.ctx
        areas = [ctx.icb, ctx.region, ENGLAND, *ctx.peers]
        in_areas = "k IN {areas:Array(String)}"
        standards = self.blocks(AREA_KEY, in_areas, areas=areas)
        trusts = self.disp("trust", "icb = {icb:String}")
        sites = self.hand("assumeNotNull(site)", "icb = {icb:String}")
        site_icbs: dict[str, dict[str, int]] = defaultdict(dict)
        if sites:
            for s, i, n in self.rows(f"SELECT site, icb, count() FROM {_HAND} WHERE site IN {{sites:Array(String)}} "
                                     "GROUP BY site, icb", sites=sorted(sites)):
                site_icbs[str(s)][str(i)] = int(n)
        split = self.hand("icb", "trust = {trust:String}", trust=ctx.host_trust)
        imd = self.blocks("ifNull(toUInt8(d.imd_decile), 0)", "icb = {icb:String}", _IMD_JOIN)
        return Inputs(standards, trusts, sites, dict(site_icbs), split, imd, self.quality(), self.quality_geo(),
                      self.calls(areas), self.outcomes(), self.blocks("day_ms", "icb = {icb:String}"))

    def quality(self) -> dict[str, Numbers]:
        span = "(last_event_ms - period_ms)"
        sql = (f"SELECT trust, count(), sum(version), countIf(clock_start_ms IS NULL), countIf(icb = 'unknown'), "
               "countIf(open), countIf(conveyed AND handover_duration_ms IS NULL AND NOT handover_negative), "
               f"countIf(response_negative), countIf(handover_negative), countIf({span} <= {HOUR_MS}), "
               f"countIf({span} > {HOUR_MS} AND {span} <= {24 * HOUR_MS}), countIf({span} > {24 * HOUR_MS}), "
               f"quantileExact(0.9)({span}) FROM {_INC} GROUP BY trust")
        out: dict[str, Numbers] = {}
        for r in self.rows(sql):
            v = [int(x) for x in r[1:13]]
            out[str(r[0])] = quality_numbers(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8:11], v[11])
        return out

    def quality_geo(self) -> dict[tuple[str, str], int]:
        sql = f"SELECT trust, geo_status, count() FROM {_INC} WHERE geo_status != 'ok' GROUP BY trust, geo_status"
        return {(str(t), str(s)): int(n) for t, s, n in self.rows(sql)}

    def calls(self, areas: Sequence[str]) -> dict[str, Numbers]:
        found = ("linked_incident_id IS NOT NULL AND (trust, assumeNotNull(linked_incident_id)) IN "
                 "(SELECT trust, incident_id FROM incident_facts FINAL)")
        sql = (f"SELECT {AREA_KEY} AS k, count(), countIf(disposition_ambulance = true), "
               f"countIf(linked_incident_id IS NOT NULL), countIf({found}) FROM {_CALLS} "
               "WHERE k IN {areas:Array(String)} GROUP BY k")
        calls = {str(r[0]): [int(v) for v in r[1:]] for r in self.rows(sql, areas=list(areas))}
        sql = f"SELECT {AREA_KEY} AS k, count() FROM {_INC} WHERE source = '111' AND k IN {{areas:Array(String)}} GROUP BY k"
        inc = {str(k): int(n) for k, n in self.rows(sql, areas=list(areas))}
        out: dict[str, Numbers] = {}
        for code in set(calls) | set(inc):
            c, a, linked, fnd = calls.get(code, [0, 0, 0, 0])
            out[code] = {"calls": c, "ambulance": a, "ambulance_share": None if c == 0 else a / c,
                         "linked": linked, "linked_found": fnd, "incidents_111": inc.get(code, 0)}
        return out

    def outcomes(self) -> Numbers:
        sql = ("SELECT i.disposition, count() FROM (SELECT trust, assumeNotNull(linked_incident_id) AS incident_id "
               f"FROM {_CALLS} WHERE icb = {{icb:String}} AND disposition_ambulance = true "
               "AND linked_incident_id IS NOT NULL) AS c INNER JOIN (SELECT trust, incident_id, disposition "
               "FROM incident_facts FINAL) AS i ON c.trust = i.trust AND c.incident_id = i.incident_id "
               "GROUP BY i.disposition")
        n = {r[0]: int(r[1]) for r in self.rows(sql)}
        return disposition_numbers(n.get("hear_and_treat", 0), n.get("see_and_treat", 0), n.get("conveyed_ed", 0),
                                   n.get("conveyed_elsewhere", 0), n.get(None, 0))


def figures(source: Source, ctx: Context) -> Figures:
    """Every figure of the report (before disclosure control) from the store."""
    return compose(Reader(source, ctx).inputs(), ctx)
