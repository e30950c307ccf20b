"""Live operational aggregates: what a control room wants to see now, kept in worker memory.

Derived from the same state transitions as the facts: after each batch the worker hands every
changed incident (its new state and geography) to :meth:`LiveView.observe`, which replaces that
incident's one :class:`LiveRow`. Figures are computed from the rows when asked
(:meth:`LiveView.snapshot`: a Prometheus scrape or `amb live`), so a corrected disposition moves
the incident between buckets instead of counting it twice.

Clock: the live "now" is the latest incident clock start the worker has seen, capped at the wall
clock (for a live feed that is the wall clock within seconds; for a replayed day it is the end of
that day), and "today" is the Europe/London day containing it. Clock starts, not event times: a
disposition corrected three days later must not move everyone's "today" to that date.

- incidents today / last 60 minutes: by the incident's clock start (period time), per trust and ICB;
- dispositions today and the non-conveyance rate (A17 + A55 + A54) / incidents with a disposition;
- handovers completed today / last 60 minutes, hours lost today (Σ max(0, handover − 15 min)),
  per hospital site and per ICB of the incident;
- patients waiting at each hospital: arrived, not yet handed over, arrived within the last 24 h
  (an older open arrival is a missing handover event, counted in data quality, not a patient on a
  trolley), and the longest such wait.

Approximate across rebalances, exact otherwise: each worker holds the incidents of the partitions
it owns. On assignment the worker seeds rows from its restored table (recent incidents only,
see streams.agents) and on revocation drops the partitions' rows, so in steady state the sum over
workers is exact; during a rebalance an incident may briefly be counted by two workers or none.
Prometheus sums counts over workers (``sum by (icb)``); a rate must be recomputed from the counts,
which `amb live` does when given several workers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from domain.events import CONVEYED, Disposition
from domain.facts import Geo, period_time
from domain.incident import IncidentState
from domain.metrics import HOUR_MS, UNKNOWN, lost_ms, periods

WAITING_CAP_MS: Final = 24 * HOUR_MS
NOT_CONVEYED_TO_ED: Final = frozenset({Disposition.HEAR_AND_TREAT.value, Disposition.SEE_AND_TREAT.value,
                                       Disposition.CONVEYED_ELSEWHERE.value})


@dataclass(slots=True)
class LiveRow:
    """The live-relevant part of one incident."""

    trust: str
    icb: str
    period_ms: int
    disposition: str | None
    site: str | None
    arrived_ms: int | None
    handover_ms: int | None
    topic: str
    partition: int


@dataclass
class LiveSnapshot:
    """The live figures at ``as_of_ms`` (0 before any event). Keys are (trust, icb) unless named."""

    as_of_ms: int
    day_start_ms: int
    incidents_today: Counter[tuple[str, str]] = field(default_factory=Counter)
    incidents_last_hour: Counter[tuple[str, str]] = field(default_factory=Counter)
    dispositions_today: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # trust, icb, disp
    handovers_today: Counter[str] = field(default_factory=Counter)  # site
    handovers_last_hour: Counter[str] = field(default_factory=Counter)  # site
    lost_ms_today_icb: Counter[str] = field(default_factory=Counter)
    lost_ms_today_site: Counter[str] = field(default_factory=Counter)
    waiting: Counter[str] = field(default_factory=Counter)  # site
    longest_wait_ms: dict[str, int] = field(default_factory=dict)  # site

    def nonconveyance_rate(self, icb: str | None = None, trust: str | None = None) -> float | None:
        """(A17 + A55 + A54) / incidents with a disposition today, for an ICB, a trust or all."""
        num = den = 0
        for (t, i, d), n in self.dispositions_today.items():
            if (icb is None or i == icb) and (trust is None or t == trust):
                den += n
                if d in NOT_CONVEYED_TO_ED:
                    num += n
        return num / den if den else None


class LiveView:
    """One worker's live rows; see the module docstring for what is counted and when."""

    def __init__(self, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.rows: dict[bytes, LiveRow] = {}
        self.now_ms = 0
        self.wall_ms = wall_ms
        self._pruned_day = 0

    def __len__(self) -> int:
        return len(self.rows)

    def observe(self, key: bytes, state: IncidentState, geo: Geo | None, topic: str, partition: int) -> None:
        """Record an incident's state after a transition (111 calls are not part of the live view)."""
        self.observe_fields(key, state.trust, geo.icb if geo is not None else UNKNOWN, period_time(state),
                            state.clock_start is not None,
                            None if state.disposition is None else state.disposition.value,
                            state.site or state.destination_site, state.arrived_at_hospital, state.handover_at,
                            topic, partition)

    def observe_fields(self, key: bytes, trust: str, icb: str, period: int, clock_started: bool,
                       disposition: str | None, site: str | None, arrived_ms: int | None, handover_ms: int | None,
                       topic: str, partition: int) -> None:
        """:meth:`observe` from the fields it reads (the native batch step has no state objects)."""
        if period > self.now_ms and clock_started:
            self.now_ms = min(period, self.wall_ms())
        self.rows[key] = LiveRow(trust, icb, period, disposition, site, arrived_ms, handover_ms, topic, partition)
        if self.now_ms - self._pruned_day > 2 * HOUR_MS:
            self.prune()

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the rows of revoked partitions: their new owner counts them now."""
        gone = set(partitions)
        if gone:
            self.rows = {k: r for k, r in self.rows.items() if (r.topic, r.partition) not in gone}

    def prune(self) -> None:
        """Drop rows that can no longer count: before today, not waiting, no handover today."""
        day = periods(self.now_ms).day if self.now_ms else 0
        self._pruned_day = self.now_ms
        keep_from = min(day, self.now_ms - WAITING_CAP_MS)
        self.rows = {k: r for k, r in self.rows.items() if self._relevant(r, day, keep_from)}

    @staticmethod
    def _relevant(r: LiveRow, day: int, keep_from: int) -> bool:
        if r.period_ms >= day or (r.handover_ms is not None and r.handover_ms >= day):
            return True
        return r.arrived_ms is not None and r.handover_ms is None and r.arrived_ms >= keep_from

    def snapshot(self) -> LiveSnapshot:
        now = self.now_ms
        day = periods(now).day if now else 0
        hour_ago = now - HOUR_MS
        snap = LiveSnapshot(now, day)
        for r in self.rows.values():
            ti = (r.trust, r.icb)
            if day <= r.period_ms <= now:
                snap.incidents_today[ti] += 1
                if r.period_ms > hour_ago:
                    snap.incidents_last_hour[ti] += 1
                if r.disposition is not None:
                    snap.dispositions_today[(r.trust, r.icb, r.disposition)] += 1
            if r.arrived_ms is None or r.disposition not in _CONVEYED:
                continue
            site = r.site or UNKNOWN
            if r.handover_ms is None:
                if now - WAITING_CAP_MS <= r.arrived_ms <= now:
                    snap.waiting[site] += 1
                    wait = now - r.arrived_ms
                    if wait > snap.longest_wait_ms.get(site, -1):
                        snap.longest_wait_ms[site] = wait
            elif day <= r.handover_ms <= now:
                snap.handovers_today[site] += 1
                if r.handover_ms > hour_ago:
                    snap.handovers_last_hour[site] += 1
                duration = r.handover_ms - r.arrived_ms
                if duration > 0:
                    lost = lost_ms(duration)
                    snap.lost_ms_today_icb[r.icb] += lost
                    snap.lost_ms_today_site[site] += lost
        return snap


_CONVEYED: Final = frozenset(d.value for d in CONVEYED) | {None}
"""A handover counts for a conveyed incident, or one whose disposition has not arrived yet."""
