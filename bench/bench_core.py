"""Speed of the pure streaming core: the incident reducer and the batch oracle.

    python bench/bench_core.py [--quick] [--json PATH]

Events are a synthetic week of incidents across all trusts (about six events each, 10% NHS 111
calls, re-triage, disposition corrections, multi-part handovers), delivered out of order (up to
30 minutes of jitter) with 3% repeats. Figures, per second of this process's CPU time, best of
several rounds:

- reducer ``apply`` (pure: copies the state per event) and ``update`` (in place, the worker's hot
  path), against the naive baseline that keeps each incident's events and recomputes the state
  from all of them, re-sorted, on every event (``reference_state``);
- the oracle (dedupe, fold, attribute, facts, every metric at every level and period), against
  the same pipeline folding each incident once with ``reference_state`` over its sorted events
  (ratio near 1: the fold is a small part; rolling ~50 cells per incident up is the cost).

- the worker's batch step (``streams.pipeline.BatchStep``: decode, validate, fold, attribute,
  facts, state rows into a dict) on the same events as Avro messages in 2000-message batches,
  against the same step writing the previous release's rows (state format 1, a JSON dict) and
  encoding facts with ``json`` over dicts: what the row format and the generated fact encoders
  buy (the loop itself is the same in both).

The naive per-event baseline is measured on the first 100k events (its cost per event does not
grow with the total: incidents are small). Sizes: 1M events (``--quick``: 100k).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain.events import TRUSTS, Category, Disposition, Event, EventType, Location, Source  # noqa: E402
from domain.facts import Areas, build_facts  # noqa: E402
from domain.incident import (  # noqa: E402
    Call111State,
    IncidentState,
    apply,
    fold,
    reference_state,
    state_key,
    update_call,
)
from domain.oracle import compute, rollup  # noqa: E402

START_MS = 1_774_656_000_000  # 2026-03-28T00:00Z: the week spans the spring clock change
MIN = 60_000
N_LSOA = 5000
SITES = tuple(f"R{i:02d}X1" for i in range(40))


class DictAttributor:
    """Postcode ``P<n>`` -> LSOA n (one dict lookup), the shape of the real batched index."""

    def attribute(self, locations: Sequence[Location], times_ms: Sequence[int]) -> list[tuple[str | None, str]]:
        out: list[tuple[str | None, str]] = []
        for loc in locations:
            pc = loc.postcode
            out.append((f"E01{int(pc[1:]):06d}", "ok") if pc and pc[0] == "P" else (None, "unknown_postcode"))
        return out


class DictHierarchy:
    def __init__(self) -> None:
        self.table = {
            f"E01{i:06d}": Areas(f"E02{i // 5:06d}", f"E06{i // 50:06d}", f"E38{i // 120:06d}",
                                 f"E54{i // 400:06d}", f"E40{i // 800:06d}")
            for i in range(N_LSOA)
        }

    def areas(self, lsoa21: str, at_ms: int) -> Areas | None:
        return self.table.get(lsoa21)


def synthetic(n: int, seed: int = 0) -> list[Event]:
    """``n`` events in arrival order (out of order, with repeats)."""
    rng = random.Random(seed)
    timed: list[tuple[int, Event]] = []
    k = 0

    def eid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    while len(timed) < n:
        k += 1
        trust = rng.choice(TRUSTS)
        inc = f"{k:09d}"
        t0 = START_MS + rng.randrange(0, 7 * 86_400_000)
        loc = Location(postcode=f"P{rng.randrange(N_LSOA)}") if rng.random() > 0.02 else Location(postcode="ZZ9 9ZZ")
        if rng.random() < 0.1:
            timed.append((t0, Event(eid(), EventType.CALL_111, trust, inc, t0, call_id=inc, location=loc,
                                    disposition_ambulance=rng.random() < 0.12)))
            continue

        def ev(et: EventType, dt: int, inc: str = inc, trust: str = trust, t0: int = t0, **kw: object) -> None:
            timed.append((t0 + dt, Event(eid(), et, trust, inc, t0 + dt, **kw)))  # type: ignore[arg-type]

        ev(EventType.INCIDENT_CREATED, 20_000, clock_start=t0, category=rng.choice(list(Category)),
           source=Source.CALL_999 if rng.random() < 0.9 else Source.CALL_111, location=loc)
        if rng.random() < 0.2:
            ev(EventType.CATEGORY_CHANGED, 3 * MIN, category=rng.choice(list(Category)))
        r = rng.random()
        disp = (Disposition.HEAR_AND_TREAT if r < 0.16 else Disposition.SEE_AND_TREAT if r < 0.46 else
                Disposition.CONVEYED_ED if r < 0.95 else Disposition.CONVEYED_ELSEWHERE)
        arrive = rng.randrange(3 * MIN, 90 * MIN)
        if disp != Disposition.HEAR_AND_TREAT:
            ev(EventType.RESPONSE_ARRIVED, arrive)
            if rng.random() < 0.3:
                ev(EventType.RESPONSE_ARRIVED, arrive + rng.randrange(MIN, 10 * MIN))
        site = rng.choice(SITES)
        ev(EventType.DISPOSITION, arrive + 30 * MIN, disposition=disp, destination_site=site)
        if rng.random() < 0.05:
            ev(EventType.DISPOSITION, arrive + 40 * MIN, disposition=rng.choice(list(Disposition)), destination_site=site)
        if disp in (Disposition.CONVEYED_ED, Disposition.CONVEYED_ELSEWHERE):
            at = t0 + arrive + rng.randrange(30 * MIN, 60 * MIN)
            dur = int(rng.expovariate(1 / (25 * MIN)))
            ev(EventType.HANDOVER, at - t0, site=site, arrived_at_hospital=at)
            ev(EventType.HANDOVER, at - t0 + dur, site=site, arrived_at_hospital=at, handover_at=at + dur)
            ev(EventType.HANDOVER, at - t0 + dur + 15 * MIN, site=site, arrived_at_hospital=at,
               handover_at=at + dur, clear_at=at + dur + rng.randrange(5 * MIN, 30 * MIN))
    # delivery: up to 30 minutes out of order, then 3% repeats delivered later
    order = sorted(timed, key=lambda te: te[0] + rng.randrange(0, 30 * MIN))
    out = [e for _, e in order][:n]
    for _ in range(n * 3 // 100):
        i = rng.randrange(len(out))
        out.insert(min(len(out), i + rng.randrange(1, 1000)), out[i])
    return out[:n]


def cpu_rate(n: int, run: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return n / best


def reduce_apply(events: list[Event]) -> None:
    states: dict[tuple[str, str, str], IncidentState] = {}
    calls: dict[tuple[str, str, str], Call111State] = {}
    for e in events:
        k = state_key(e)
        if k[1] == "call_111":
            c = calls.get(k)
            if c is None:
                c = calls[k] = Call111State(e.trust, e.incident_id)
            update_call(c, e)
        else:
            states[k] = apply(states.get(k), e)


def reduce_update(events: list[Event]) -> None:
    fold(events)


def reduce_naive(events: list[Event]) -> None:
    """Keep every event per incident; on each event re-sort them all and recompute the state."""
    seen: dict[tuple[str, str, str], list[Event]] = {}
    for e in events:
        k = state_key(e)
        evs = seen.setdefault(k, [])
        evs.append(e)
        if k[1] != "call_111":
            evs.sort(key=lambda x: (x.event_time, x.event_id))
            reference_state(evs)


def oracle_naive(events: list[Event], attributor: DictAttributor, hierarchy: DictHierarchy) -> None:
    """The oracle pipeline with each incident folded by ``reference_state`` over its sorted events."""
    groups: dict[tuple[str, str, str], list[Event]] = {}
    for e in events:
        groups.setdefault(state_key(e), []).append(e)
    states: list[IncidentState | Call111State] = []
    for k in sorted(groups):
        if k[1] == "call_111":
            s = fold(groups[k])[k]
        else:
            ref = reference_state(sorted(groups[k], key=lambda x: (x.event_time, x.event_id)))
            assert ref is not None
            s = ref
        states.append(s)
    facts = build_facts(states, attributor, hierarchy)
    rollup(facts.incidents, facts.handovers, facts.calls)


def batch_step_rate(events: list[Event], att: DictAttributor, hier: DictHierarchy, previous: bool) -> float:
    """Events per CPU-second of BatchStep.process; ``previous``: with the previous release's
    encodings (format-1 state rows, json fact encoding) patched in."""
    from unittest import mock

    from amb.codec import default_codec
    from streams import fact_codec, pipeline, state
    from streams.live import LiveView

    codec, now = default_codec(), START_MS + 30 * 86_400_000
    msgs = [pipeline.InMessage(f"amb.events.{e.trust}", i % 8, i, e.key.encode(), codec.encode(e, now))
            for i, e in enumerate(events)]

    def run() -> None:
        step = pipeline.BatchStep(att, hier, pipeline.DictStore(), live=LiveView())
        for i in range(0, len(msgs), 2000):
            step.process(msgs[i:i + 2000], now)

    if not previous:
        return cpu_rate(len(msgs), run, 2)
    with mock.patch.object(pipeline, "encode_record", state.encode_record_v1), \
            mock.patch.object(fact_codec, "encode_incident", fact_codec.encode_incident_json), \
            mock.patch.object(fact_codec, "encode_call", fact_codec.encode_call_json):
        return cpu_rate(len(msgs), run, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k events instead of 1M")
    parser.add_argument("--json", type=Path, help="write the figures as a JSON list to this path")
    args = parser.parse_args()

    n = 100_000 if args.quick else 1_000_000
    rounds = 3 if args.quick else 2
    print(f"generating {n:,} events ...", flush=True)
    events = synthetic(n)
    sample = events[:100_000]
    att, hier = DictAttributor(), DictHierarchy()

    naive = cpu_rate(len(sample), lambda: reduce_naive(sample), 1)
    figures = [
        ("reducer apply (pure, copy per event)", cpu_rate(n, lambda: reduce_apply(events), rounds),
         "naive: re-sort and recompute per event", naive),
        ("reducer update (in place)", cpu_rate(n, lambda: reduce_update(events), rounds),
         "naive: re-sort and recompute per event", naive),
    ]
    step_events = events[: min(n, 200_000)]
    figures.append(("worker batch step (2000-message batches)", batch_step_rate(step_events, att, hier, False),
                    "batch step with format-1 rows and json facts", batch_step_rate(step_events, att, hier, True)))
    naive_oracle = cpu_rate(n, lambda: oracle_naive(events, att, hier), 1)
    t = time.process_time()
    report = compute(events, att, hier)  # one run only: a 1M-event report holds millions of rows
    figures.append(("oracle compute (all metrics, levels, periods)", n / (time.process_time() - t),
                    "oracle with naive sorted fold per incident", naive_oracle))

    print(f"\n{n:,} events, {report.events:,} distinct, {len(report.incidents):,} incidents, "
          f"{len(report.calls):,} 111 calls, {len(report.rows):,} report rows; naive reducer on {len(sample):,}")
    width = max(len(f[0]) for f in figures)
    print(f"{'figure'.ljust(width)}  {'events/s':>12}  {'baseline events/s':>18}  ratio  baseline")
    for name, value, base_name, base in figures:
        print(f"{name.ljust(width)}  {value:>12,.0f}  {base:>18,.0f}  {value / base:>5.1f}  {base_name}")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": name, "value": round(value), "unit": "events/s", "baseline": base_name,
             "baseline_value": round(base)} for name, value, base_name, base in figures
        ], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
