"""Avro codec speed: the generated encoder/decoder against fastavro on the same events.

    python bench/bench_codec.py [--quick] [--json PATH]

Prints events/s for encode, decode and decode+validate (what the stream worker calls per
message), each beside its baseline measured in the same run: fastavro's schemaless writer/reader
with the parsed schema cached (plus the dict -> Event step a fastavro reader needs). Rates are per
second of this process's CPU time (single-threaded work, so other load on the machine does not
count), best of several rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastavro  # noqa: E402

from amb.codec import Codec, event_from_avro, event_to_avro  # noqa: E402
from domain.events import Category, Disposition, Event, EventType, Location, Source  # noqa: E402

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SITES = ("R0A07", "RBN01", "RXN02", "RW602", "RM301", "RRK15")


def sample_events(n: int, trust: str = "RX7", seed: int = 0, now_ms: int = NOW_MS) -> list[Event]:
    """``n`` valid events shaped like a day's lifecycle mix (creates, arrivals, dispositions, handovers, 111)."""
    rng = random.Random(seed)
    out: list[Event] = []
    k = 0
    while len(out) < n:
        k += 1
        inc = f"{trust}-{seed}-{k:09d}"
        t0 = now_ms - rng.randint(3_600_000, 86_400_000)
        form = rng.random()
        loc = (Location(postcode=f"M{rng.randint(1, 40)} {rng.randint(1, 9)}AB") if form < 0.5 else
               Location(lat=53 + rng.random(), lon=-2.5 + rng.random()) if form < 0.8 else
               Location(easting=380000.0 + rng.randint(0, 9999), northing=390000.0 + rng.randint(0, 9999)))

        def ev(et: EventType, dt: int, inc: str = inc, t0: int = t0, **kw: Any) -> Event:
            return Event(event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), event_type=et, trust=trust,
                         incident_id=kw.pop("incident_id", inc), event_time=t0 + dt, **kw)

        if rng.random() < 0.1:
            call = f"111-{seed}-{k:09d}"
            out.append(ev(EventType.CALL_111, 0, incident_id=call, call_id=call,
                          disposition_ambulance=rng.random() < 0.12, location=loc))
            continue
        cat = rng.choice(list(Category))
        out.append(ev(EventType.INCIDENT_CREATED, 20_000, clock_start=t0, category=cat,
                      source=rng.choice(list(Source)), location=loc))
        if rng.random() < 0.1:
            out.append(ev(EventType.CATEGORY_CHANGED, 60_000, category=rng.choice(list(Category))))
        disp = rng.choices(list(Disposition), weights=(15.8, 29.6, 49.9, 4.7))[0]
        if disp is not Disposition.HEAR_AND_TREAT:
            out.append(ev(EventType.RESPONSE_ARRIVED, rng.randint(300_000, 3_000_000)))
        site = rng.choice(SITES)
        conveyed = disp in (Disposition.CONVEYED_ED, Disposition.CONVEYED_ELSEWHERE)
        out.append(ev(EventType.DISPOSITION, 3_100_000, disposition=disp,
                      destination_site=site if conveyed else None))
        if conveyed:
            arrived = t0 + 3_600_000
            out.append(ev(EventType.HANDOVER, 5_400_000, site=site, arrived_at_hospital=arrived,
                          handover_at=arrived + rng.randint(300_000, 5_000_000),
                          clear_at=arrived + rng.randint(5_000_001, 7_000_000)))
    return out[:n]


def best_rate(fn: Callable[[], int], rounds: int) -> float:
    """Items per CPU second of the fastest of ``rounds`` runs of ``fn`` (which returns its item count)."""
    best = 0.0
    for _ in range(rounds):
        t = time.process_time()
        count = fn()
        dt = time.process_time() - t
        best = max(best, count / dt)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the figures as a JSON list to PATH")
    args = ap.parse_args(argv)
    n, rounds = (20_000, 3) if args.quick else (200_000, 5)

    codec = Codec("single")
    parsed = fastavro.parse_schema(codec.schema)  # the real schema, logical types and all
    events = sample_events(n)
    values = codec.encode_batch(events, NOW_MS)
    dicts = [event_to_avro(e, NOW_MS) for e in events]

    def enc_generated() -> int:
        codec.encode_batch(events, NOW_MS)
        return n

    def enc_fastavro() -> int:
        for d in dicts:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, d)
            codec.header + buf.getvalue()  # noqa: B018 - same framing work as the generated path
        return n

    def enc_fastavro_from_events() -> int:
        for e in events:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, event_to_avro(e, NOW_MS))
        return n

    def dec_generated() -> int:
        decode = codec.decode
        for v in values:
            decode(v)
        return n

    def dec_fastavro() -> int:
        stripped = codec._parsed
        for v in values:
            buf = io.BytesIO(v)
            buf.seek(10)
            event_from_avro(fastavro.schemaless_reader(buf, stripped, None))  # type: ignore[arg-type]
        return n

    def dec_validate() -> int:
        codec.decode_batch(values, NOW_MS)
        return n

    def dec_validate_fastavro() -> int:
        from domain.validation import validate

        stripped = codec._parsed
        for v in values:
            buf = io.BytesIO(v)
            buf.seek(10)
            validate(event_from_avro(fastavro.schemaless_reader(buf, stripped, None)), now_ms=NOW_MS)  # type: ignore[arg-type]
        return n

    rows = [
        ("encode Event -> single-object bytes", best_rate(enc_generated, rounds),
         "fastavro schemaless_writer, dicts ready", best_rate(enc_fastavro, rounds)),
        ("encode Event -> single-object bytes", best_rate(enc_generated, rounds),
         "Event -> dict -> fastavro schemaless_writer", best_rate(enc_fastavro_from_events, rounds)),
        ("decode bytes -> Event", best_rate(dec_generated, rounds),
         "fastavro schemaless_reader + dict->Event", best_rate(dec_fastavro, rounds)),
        ("decode_and_validate", best_rate(dec_validate, rounds),
         "fastavro reader + dict->Event + validate", best_rate(dec_validate_fastavro, rounds)),
    ]
    size = sum(map(len, values)) / n
    print(f"bench_codec: {n:,} events ({size:.0f} bytes each on average), best of {rounds} rounds")
    print(f"{'measure':<50} {'events/s':>12}   {'baseline':<45} {'events/s':>12} {'x':>6}")
    for name, value, base_name, base in rows:
        print(f"{name:<50} {value:>12,.0f}   {base_name:<45} {base:>12,.0f} {value / base:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": name, "value": round(value), "unit": "events/s", "baseline": base_name,
             "baseline_value": round(base)} for name, value, base_name, base in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
