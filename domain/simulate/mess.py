"""Delivery trouble: duplicates, late and out-of-order delivery, malformed records.

Applied to a trust-day's clean events after the lifecycle (which already did re-triage,
corrections and unplaceable locations, because those change the events' content). Only the
delivery time moves for late and shuffled events; their ``event_time`` stays the truth.
Malformed records are extra copies of real events, mutated to fail validation, with their own
event ids, so removing them (``valid`` False) leaves exactly the clean feed.
"""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np

from domain.events import TRUSTS
from domain.simulate import render
from domain.simulate.config import Mess
from domain.simulate.lifecycle import DISPOSITION, HANDOVER, MIN_MS, EventTable

LATE_MIN_MS: Final = 15 * MIN_MS
LATE_MAX_MS: Final = 3 * 24 * 60 * MIN_MS
SHUFFLE_MAX_MS: Final = 30 * MIN_MS
DUP_REPLAY_MEAN_MS: Final = 20 * MIN_MS
# Longest an event can be delivered after it happened (late, then shuffled, then replayed).
MAX_DELIVERY_DELAY_MS: Final = LATE_MAX_MS + SHUFFLE_MAX_MS + 24 * 60 * MIN_MS

MALFORMED_KINDS: Final = (
    "bad_enum", "missing_field", "bad_time", "handover_before_arrival", "trust_mismatch", "conveyed_without_site",
)


def apply(events: EventTable, mess: Mess, rng: np.random.Generator) -> EventTable:
    """The events as a real feed would deliver them: late, shuffled, duplicated, with bad records."""
    n = len(events)
    delivery = events.delivery.copy()
    late = np.flatnonzero(rng.random(n) < mess.late)
    span = rng.uniform(np.log(LATE_MIN_MS), np.log(LATE_MAX_MS), len(late))
    delivery[late] = events.event_time[late] + np.exp(span).astype(np.int64)
    shuffled = np.flatnonzero(rng.random(n) < mess.shuffle)
    delivery[shuffled] += (rng.random(len(shuffled)) * SHUFFLE_MAX_MS).astype(np.int64)
    moved = EventTable(events.trust, events.event_time, delivery, events.kind, events.lines, events.valid)

    dup = np.flatnonzero(rng.random(n) < mess.dup)
    dups = moved.take(dup)
    dups = EventTable(dups.trust, dups.event_time,
                      dups.delivery + 1 + rng.exponential(DUP_REPLAY_MEAN_MS, len(dup)).astype(np.int64),
                      dups.kind, dups.lines, dups.valid)

    n_bad = int(rng.binomial(n, mess.malformed)) if n else 0
    bad = _malformed(moved, n_bad, rng)
    return EventTable.concat([moved, dups, bad])


def _malformed(events: EventTable, n_bad: int, rng: np.random.Generator) -> EventTable:
    if n_bad == 0:
        return events.take(slice(0, 0))
    src = rng.integers(0, len(events), n_bad)
    kinds = rng.integers(0, len(MALFORMED_KINDS), n_bad)
    ids = render.assemble(n_bad, render.uuids(rng, n_bad))
    handovers = np.flatnonzero(events.kind == HANDOVER)
    dispositions = np.flatnonzero(events.kind == DISPOSITION)
    conveyed = dispositions[['"destination_site"' in x for x in events.lines[dispositions].tolist()]]
    lines = []
    for i, (s, k) in enumerate(zip(src.tolist(), kinds.tolist(), strict=True)):
        kind = MALFORMED_KINDS[k]
        if kind == "handover_before_arrival" and len(handovers):
            s = int(handovers[rng.integers(0, len(handovers))])
            src[i] = s
        elif kind == "conveyed_without_site" and len(conveyed):
            s = int(conveyed[rng.integers(0, len(conveyed))])
            src[i] = s
        record: dict[str, Any] = json.loads(events.lines[s])
        record["event_id"] = ids[i]
        _mutate(record, kind, rng)
        lines.append(json.dumps(record, separators=(",", ":")))
    out = events.take(src)
    arr = np.empty(n_bad, dtype=object)
    arr[:] = lines
    return EventTable(out.trust, out.event_time, out.delivery + 1, out.kind, arr, np.zeros(n_bad, dtype=bool))


def _mutate(record: dict[str, Any], kind: str, rng: np.random.Generator) -> None:
    """Break one record the way real exports break (each kind fails a rule of the interchange format)."""
    if kind == "handover_before_arrival" and record["event_type"] == "handover":
        arrived = record["arrived_at_hospital"]
        record["handover_at"] = render.iso_strings(np.array([_ms(arrived) - 5 * MIN_MS], dtype=np.int64))[0]
    elif kind == "conveyed_without_site" and "destination_site" in record:
        del record["destination_site"]
    elif kind == "trust_mismatch":
        others = [t for t in TRUSTS if t != record["trust"]]
        record["trust"] = others[int(rng.integers(0, len(others)))]
    elif kind == "missing_field":
        del record[("incident_id", "event_time", "event_type")[int(rng.integers(0, 3))]]
    elif kind == "bad_time":
        t = record["event_time"]
        record["event_time"] = f"{t[8:10]}/{t[5:7]}/{t[0:4]} {t[11:16]}"
    elif "category" in record:
        record["category"] = "C7"
    elif "disposition" in record:
        record["disposition"] = "taken_home"
    else:
        record["event_type"] = "incident_updated"


def _ms(text: str) -> int:
    return int(np.datetime64(text.rstrip("Z"), "ms").astype(np.int64))
