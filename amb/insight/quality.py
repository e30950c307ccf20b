"""The data-quality scorecard from the store: ``raw_events`` (lateness, corrections) and
``dead_letters`` (refusals by reason), both kept by `amb sink`. Definitions: domain/data_quality.py,
whose ``row`` forms every figure from the counts these queries return (one SQL for chDB and server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from amb.errors import AmbError
from domain.data_quality import COLUMNS, HORIZON_MS, HOUR_MS, Scorecard, dead_totals, row
from sinks.store import Result

_WINDOW: Final = "event_time_ms >= {lo:Int64} AND event_time_ms < {hi:Int64}"
_TRUSTS: Final = " AND trust IN {trusts:Array(String)}"

EVENTS_SQL: Final = (
    "SELECT trust, count(), quantileExact(0.5)(late), quantileExact(0.9)(late), quantileExact(0.99)(late), "
    f"countIf(late > {HOUR_MS}), countIf(late > {24 * HOUR_MS}), countIf(late > {HORIZON_MS}) FROM ("
    "SELECT trust, event_id, min(kafka_ts_ms) - any(event_time_ms) AS late FROM raw_events "
    "WHERE {where} GROUP BY trust, event_id) GROUP BY trust")
"""Per event id (duplicates collapse here, whether or not merged): the earliest copy's send time."""
DISPOSITIONS_SQL: Final = (
    "SELECT trust, count(), countIf(n > 1), sumIf(n - 1, n > 1) FROM ("
    "SELECT trust, incident_id, uniqExact(event_id) AS n FROM raw_events "
    "WHERE event_type = 'disposition' AND {where} GROUP BY trust, incident_id) GROUP BY trust")
DEAD_SQL: Final = (
    "SELECT trust, reason, count() FROM dead_letters FINAL "
    "WHERE dead_lettered_ms >= {lo:Int64} AND dead_lettered_ms < {hi:Int64}{trusts} GROUP BY trust, reason")


class Source(Protocol):
    """A store, or the service's audited fetch (amb.insight.web.ServiceSource)."""

    def query(self, sql: str, params: Any = None) -> Result: ...


class NoArchive(AmbError):
    """raw_events is empty: the scorecard would be all zeros, which would be a lie."""


def archived_events(store: Source) -> int:
    return int(store.query("SELECT count() FROM raw_events").scalar() or 0)


def scorecard(store: Source, start_ms: int, end_ms: int, trusts: Sequence[str] | None = None) -> Scorecard:
    """The scorecard for events (by event time) and dead letters (by refusal time) in [start, end);
    ``trusts``: only these. Raises :class:`NoArchive` when the store holds no raw events at all."""
    if archived_events(store) == 0:
        raise NoArchive("no raw events in the store: the data-quality scorecard needs the raw archive, "
                        "which `amb sink` keeps unless started with --no-archive")
    params: dict[str, Any] = {"lo": start_ms, "hi": end_ms}
    where = _WINDOW
    if trusts:
        params["trusts"] = list(trusts)
        where += _TRUSTS
    ev = {str(r[0]): r[1:] for r in store.query(EVENTS_SQL.replace("{where}", where), params).rows}
    disp = {str(r[0]): r[1:] for r in store.query(DISPOSITIONS_SQL.replace("{where}", where), params).rows}
    dead_rows = store.query(DEAD_SQL.replace("{trusts}", _TRUSTS if trusts else ""), params).rows
    dead = {(str(t), str(r)): int(n) for t, r, n in dead_rows}
    dead_total = dead_totals(dead)
    out = {}
    for t in sorted(set(ev) | set(dead_total)):
        e = ev.get(t, (0, None, None, None, 0, 0, 0))
        d = disp.get(t, (0, 0, 0))
        n = int(e[0])
        p50, p90, p99 = (None if n == 0 else int(v) for v in e[1:4])
        out[t] = row(n, p50, p90, p99, int(e[4]), int(e[5]), int(e[6]), int(d[0]), int(d[1]), int(d[2]),
                     dead_total.get(t, 0))
    return Scorecard(out, dead)


def table_rows(card: Scorecard) -> list[tuple[Any, ...]]:
    """(trust, *COLUMNS) per trust, for the terminal, CSV and JSON."""
    return [(t, *(card.trusts[t][c] for c in COLUMNS)) for t in sorted(card.trusts)]


def publishable(card: Scorecard) -> list[tuple[Any, ...]]:
    """table_rows with the disclosure rule on incident counts (1-7 -> *, and their rate with them);
    event and dead-letter counts describe data, not people, and are shown as they are."""
    from domain.disclosure import MIN_COUNT, SUPPRESSED

    out = []
    for r in table_rows(card):
        d = dict(zip(("trust", *COLUMNS), r, strict=True))
        for c in ("dispositions", "corrected", "corrections"):
            if isinstance(d[c], int) and 0 < d[c] < MIN_COUNT:
                d[c] = SUPPRESSED
                d["corrected_rate"] = SUPPRESSED
        out.append(tuple(d.values()))
    return out


def scorecard_html(source: Source, start_ms: int, end_ms: int) -> str:
    """The report's scorecard section: per trust, then dead letters by reason; or, with no raw
    archive, a sentence saying so (never a table of zeros)."""
    import html

    from amb.insight.render import html_table
    from domain.icb_report import Table

    try:
        card = scorecard(source, start_ms, end_ms)
    except NoArchive as exc:
        return f'<p class="note">{html.escape(str(exc))}.</p>'
    out = ["<h3>Scorecard: lateness, corrections and refusals</h3>",
           html_table(Table(("trust", *COLUMNS), tuple(publishable(card)))),
           '<p class="note">Lateness: when the trust sent an event (its earliest copy) minus when it happened. '
           "Corrected: incidents with more than one disposition event. Events by event time, dead letters by "
           "when they were refused.</p>"]
    dead = tuple((t or "unknown", r, n) for (t, r), n in sorted(card.dead_by_reason.items()))
    out.append(html_table(Table(("trust", "reason", "dead_letters"), dead)))
    return "\n".join(out)
