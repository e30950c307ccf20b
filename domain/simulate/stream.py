"""The simulated feed in delivery order, across trusts and days.

Days are generated one at a time (every trust), their events merged with those still pending from
earlier days, and everything delivered before a watermark is released sorted by delivery time.
The watermark is the next day's start less the longest a next-day event can precede its day
(a linked 111 call), so nothing generated later can be delivered earlier than what was released.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from domain.events import TRUSTS, Event
from domain.simulate import mess as mess_mod
from domain.simulate.config import SimConfig
from domain.simulate.geography import LocationPool, SitePlan
from domain.simulate.lifecycle import (
    CALL_111_LEAD_CAP_MS,
    CallTruth,
    EventTable,
    IncidentTruth,
    local_day,
    simulate_trust_day,
)


@dataclass
class Truth:
    """Ground truth collected while generating: one entry per trust-day."""

    incidents: list[IncidentTruth]
    calls: list[CallTruth]

    @classmethod
    def empty(cls) -> Truth:
        return cls([], [])


def days(cfg: SimConfig, pool: LocationPool, truth: Truth | None = None) -> Iterator[EventTable]:
    """Each simulated day's events for every trust (with mess applied), unsorted."""
    sites = SitePlan.for_pool(pool, cfg.seed)
    for d in range(cfg.days):
        day = cfg.start + timedelta(days=d)
        tables = []
        for trust in cfg.trusts:
            td = simulate_trust_day(cfg, pool, sites, trust, day)
            rng = np.random.default_rng([cfg.seed, TRUSTS.index(trust), day.toordinal(), 1])
            tables.append(mess_mod.apply(td.events, cfg.mess, rng))
            if truth is not None:
                truth.incidents.append(td.incidents)
                truth.calls.append(td.calls)
        yield EventTable.concat(tables)


def chunks(cfg: SimConfig, pool: LocationPool, *, include_malformed: bool = True,
           truth: Truth | None = None) -> Iterator[EventTable]:
    """The feed in delivery order, in chunks (about one per simulated day)."""
    pending = EventTable.concat([])
    for d, table in enumerate(days(cfg, pool, truth)):
        if not include_malformed:
            table = table.take(np.flatnonzero(table.valid))
        pending = EventTable.concat([pending, table])
        pending = pending.take(np.argsort(pending.delivery, kind="stable"))
        if d + 1 < cfg.days:
            watermark = local_day(cfg.start + timedelta(days=d + 1))[0] - CALL_111_LEAD_CAP_MS
            cut = int(np.searchsorted(pending.delivery, watermark, side="left"))
        else:
            cut = len(pending)
        if cut:
            yield pending.take(slice(0, cut))
        pending = pending.take(slice(cut, None))


def generate(cfg: SimConfig, pool: LocationPool, *, include_malformed: bool = True,
             truth: Truth | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(delivery epoch ms, interchange record) in delivery order: the API tests and tools use."""
    for chunk in chunks(cfg, pool, include_malformed=include_malformed, truth=truth):
        for t, line in zip(chunk.delivery.tolist(), chunk.lines.tolist(), strict=True):
            yield t, json.loads(line)


def clean_events(cfg: SimConfig, pool: LocationPool, truth: Truth | None = None) -> Iterator[Event]:
    """The valid events (duplicates, late and corrected ones included; malformed ones left out) as
    domain Events in delivery order: the input of the batch oracle."""
    from domain.validation import Rejection, parse_record

    for _, record in generate(cfg, pool, include_malformed=False, truth=truth):
        event = parse_record(record, now_ms=2**62)
        if isinstance(event, Rejection):  # pragma: no cover - a generator bug, never a feed property
            raise AssertionError(f"simulator produced an invalid event: {event}: {record}")
        yield event
