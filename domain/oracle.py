"""The batch oracle: every metric at every level and period, from a finite set of events.

The streaming worker and the ClickHouse sink compute the same figures incrementally; this is the
slow, obvious reference they are tested against. It is a pure function of the events (and the
injected geography), independent of their order and of repeats:

    dedupe by event id → group by incident (or 111 call) → reduce → attribute → fact rows
    → keep the highest version of each → roll up (:class:`domain.metrics.Rollup`).

:func:`rollup` is the last two steps alone: feed it the fact rows a stream emitted (every version,
in any order, with repeats) and it must give the same rows as :func:`compute` on the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from domain.events import Event
from domain.facts import (
    Attributor,
    Call111Fact,
    HandoverFact,
    Hierarchy,
    IncidentFact,
    build_facts,
)
from domain.incident import fold
from domain.metrics import (
    TABLES,
    Number,
    Rollup,
    RowKey,
    Rows,
    format_table,
    table,
)

_F = TypeVar("_F", IncidentFact, HandoverFact, Call111Fact)


def latest(facts: Iterable[_F]) -> list[_F]:
    """The highest version of each incident (or call), as ReplacingMergeTree(version) ... FINAL keeps.
    Sorted by (trust, id)."""
    best: dict[tuple[str, str], _F] = {}
    for f in facts:
        k = (f.trust, f.call_id if isinstance(f, Call111Fact) else f.incident_id)
        cur = best.get(k)
        if cur is None or f.version > cur.version:
            best[k] = f
    return [best[k] for k in sorted(best)]


def rollup(
    incidents: Iterable[IncidentFact], handovers: Iterable[HandoverFact] = (), calls: Iterable[Call111Fact] = (),
    site_icb: Mapping[str, str] | None = None,
) -> Rows:
    """Every metric from fact rows (any versions: only the highest of each incident counts).
    A call's ``linked_found`` is true when an incident fact exists with the call's trust and
    linked incident id."""
    inc = latest(incidents)
    r = Rollup(site_icb)
    for f in inc:
        r.add_incident(f)
    for h in latest(handovers):
        r.add_handover(h)
    known = {(f.trust, f.incident_id) for f in inc}
    for c in latest(calls):
        link = c.linked_incident_id
        r.add_call(c, link is not None and (c.trust, link) in known)
    return r.rows()


@dataclass(frozen=True)
class Report:
    """The oracle's answer. ``rows`` is keyed by (metric group, level, code, period kind, period start
    ms UTC) -> named numbers (see ``domain.metrics``); the facts are the final row of each incident,
    as the sink's tables hold them after FINAL."""

    rows: Rows
    incidents: tuple[IncidentFact, ...]
    handovers: tuple[HandoverFact, ...]
    calls: tuple[Call111Fact, ...]
    events: int  # distinct event ids folded
    duplicates: int  # repeats of an id, ignored
    conflicts: int  # repeats of an id with different content: the first seen is kept
    after_now: int  # events later than ``now_ms``, left out

    def get(self, group: str, level: str, code: str, period_kind: str, period: int) -> dict[str, Number] | None:
        return self.rows.get((group, level, code, period_kind, period))

    def table(self, name: str, level: str, period_kind: str, code: str | None = None) -> list[tuple[str | Number, ...]]:
        """Rows of an ``amb query`` table: ``dispositions``, ``response`` or ``handover``."""
        return table(self.rows, name, level, period_kind, code)

    def render(self, name: str, level: str, period_kind: str, code: str | None = None) -> str:
        """The table as text, as ``amb query`` prints it."""
        return format_table(TABLES[name], self.table(name, level, period_kind, code))


def compute(
    events: Iterable[Event], attributor: Attributor, hierarchy: Hierarchy, now_ms: int | None = None,
    site_icb: Mapping[str, str] | None = None,
) -> Report:
    """Every metric at every level and period. ``now_ms``: report as of that instant (events with a
    later event time are left out and counted). ``site_icb``: hospital site -> hosting ICB, which
    adds the ``host_icb`` level to handover."""
    distinct: dict[str, Event] = {}
    duplicates = conflicts = after = 0
    for e in events:
        if now_ms is not None and e.event_time > now_ms:
            after += 1
            continue
        prev = distinct.get(e.event_id)
        if prev is None:
            distinct[e.event_id] = e
            continue
        duplicates += 1
        if e != prev and replace(e, produced_time=prev.produced_time) != prev:
            conflicts += 1
    states = fold(distinct.values())
    facts = build_facts([states[k] for k in sorted(states)], attributor, hierarchy)
    rows = rollup(facts.incidents, facts.handovers, facts.calls, site_icb)
    return Report(
        rows, tuple(facts.incidents), tuple(facts.handovers), tuple(facts.calls),
        len(distinct), duplicates, conflicts, after,
    )


def totals(rows: Mapping[RowKey, Mapping[str, Number]], group: str, level: str, name: str) -> dict[tuple[str, int], int]:
    """Sum of one count over all codes of a level, per (period kind, period): level totals must agree
    (sum over ICBs = sum over regions = England)."""
    out: dict[tuple[str, int], int] = {}
    for (g, lvl, _code, kind, p), nums in rows.items():
        if g == group and lvl == level:
            v = nums[name]
            if not isinstance(v, int):
                raise ValueError(f"{group}.{name} is not a count")
            out[(kind, p)] = out.get((kind, p), 0) + v
    return out
