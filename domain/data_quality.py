"""The per-trust data-quality scorecard: how late events arrive, how often dispositions are corrected,
what was refused and why. The reference for the store's SQL (amb/insight/quality.py), from the same
inputs: accepted events with the time each copy was sent, and the dead letters with their reasons.

Definitions (kept identical in SQL):

- An event counts once per event id (as the oracle dedupes); its **sent time** is the earliest
  Kafka timestamp of any copy, and its **lateness** = sent time - event time (ms, negative when the
  sender's clock runs ahead). Events are in the period by event time.
- Lateness centiles are ClickHouse ``quantileExact`` (domain.metrics.centile) over the trust's
  events, in minutes; ``late_*`` are the shares of events later than 1 h, 24 h and the 7-day
  late-arrival horizon.
- A **corrected incident** has more than one distinct disposition event (a later one corrects the
  earlier); ``corrections`` counts the disposition events beyond each incident's first;
  ``corrected_rate`` = corrected incidents / incidents with any disposition event in the period.
- **Dead letters** are counted by trust and first reason, in the period by when they were refused;
  a dead letter whose trust cannot be told is under ``""``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from domain.events import Event, EventType
from domain.metrics import centile

HOUR_MS: Final = 3_600_000
MINUTE_MS: Final = 60_000
HORIZON_MS: Final = 7 * 24 * HOUR_MS
COLUMNS: Final = ("events", "lateness_p50_min", "lateness_p90_min", "lateness_p99_min", "late_1h_rate",
                  "late_24h_rate", "late_7d_rate", "dispositions", "corrected", "corrected_rate", "corrections",
                  "dead_letters")

Number = int | float | None


@dataclass(frozen=True)
class Scorecard:
    """Per trust: the COLUMNS figures; and dead letters per (trust, reason)."""

    trusts: Mapping[str, Mapping[str, Number]]
    dead_by_reason: Mapping[tuple[str, str], int]


def _rate(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def _minutes(ms: int | None) -> float | None:
    return None if ms is None else ms / MINUTE_MS


def row(events: int, p50_ms: int | None, p90_ms: int | None, p99_ms: int | None, late_1h: int, late_24h: int,
        late_7d: int, dispositions: int, corrected: int, corrections: int, dead: int) -> dict[str, Number]:
    """One trust's figures from its counts and lateness centiles (ms): the one place they are formed,
    for the Python reference and the store's SQL alike."""
    return {
        "events": events,
        "lateness_p50_min": _minutes(p50_ms), "lateness_p90_min": _minutes(p90_ms),
        "lateness_p99_min": _minutes(p99_ms),
        "late_1h_rate": _rate(late_1h, events), "late_24h_rate": _rate(late_24h, events),
        "late_7d_rate": _rate(late_7d, events),
        "dispositions": dispositions, "corrected": corrected, "corrected_rate": _rate(corrected, dispositions),
        "corrections": corrections, "dead_letters": dead,
    }


def figures(lateness: list[int], dispositions: Mapping[str, int], dead: int) -> dict[str, Number]:
    """One trust's row from its events' lateness (ms), distinct disposition events per incident and
    dead-letter count."""
    return row(len(lateness), centile(lateness, 0.5), centile(lateness, 0.9), centile(lateness, 0.99),
               sum(v > HOUR_MS for v in lateness), sum(v > 24 * HOUR_MS for v in lateness),
               sum(v > HORIZON_MS for v in lateness), len(dispositions),
               sum(c > 1 for c in dispositions.values()), sum(c - 1 for c in dispositions.values() if c > 1), dead)


def dead_totals(dead: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Dead letters per trust, from counts per (trust, reason)."""
    out: dict[str, int] = defaultdict(int)
    for (trust, _reason), n in dead.items():
        out[trust] += n
    return dict(out)


def scorecard(sent: Iterable[tuple[Event, int]], dead_letters: Iterable[tuple[str, str, int]],
              start_ms: int, end_ms: int) -> Scorecard:
    """``sent``: (event, Kafka timestamp of this copy), duplicates included; ``dead_letters``:
    (trust, first reason, refused at ms). Events by event time and dead letters by refusal time in
    [start_ms, end_ms)."""
    first: dict[str, tuple[Event, int]] = {}
    for ev, ts in sent:
        prev = first.get(ev.event_id)
        if prev is None or ts < prev[1]:
            first[ev.event_id] = (ev if prev is None else prev[0], ts)
    lateness: dict[str, list[int]] = defaultdict(list)
    disp: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ev, ts in first.values():
        if not start_ms <= ev.event_time < end_ms:
            continue
        lateness[ev.trust].append(ts - ev.event_time)
        if ev.event_type == EventType.DISPOSITION:
            disp[ev.trust][ev.incident_id] += 1
    dead: dict[tuple[str, str], int] = defaultdict(int)
    for trust, reason, at in dead_letters:
        if start_ms <= at < end_ms:
            dead[(trust, reason)] += 1
    dead_total = dead_totals(dead)
    trusts = sorted(set(lateness) | set(dead_total))
    return Scorecard({t: figures(lateness.get(t, []), disp.get(t, {}), dead_total.get(t, 0))
                      for t in trusts}, dict(dead))
