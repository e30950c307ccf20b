"""A small, deterministic set of incident and handover facts at real LSOAs (Greater Manchester,
Cheshire and Merseyside, North East London), for the service tests and bench/bench_serve.py."""

from __future__ import annotations

import csv
import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.facts import HandoverFact, IncidentFact
from domain.metrics import lost_ms, periods

ROOT = Path(__file__).resolve().parents[1]
GEO_DIR = ROOT / "data" / "geo"

GM, CM, NEL = "E54000057", "E54000008", "E54000029"  # ICB ONS codes (QOP, QYG, QMF)
NORTH_WEST, LONDON = "E40000010", "E40000003"
TRUST_OF = {GM: "RX7", CM: "RX7", NEL: "RRU"}
DISPOSITIONS = ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere")
SITES = {GM: "RW3MR", CM: "REM21", NEL: "R1HKH"}


@dataclass(frozen=True)
class Place:
    lsoa: str
    msoa: str
    lad: str
    sicbl: str
    icb: str
    region: str


def places(icb: str, n: int) -> list[Place]:
    """The first ``n`` LSOAs of an ICB in the reference table (stable order)."""
    out: list[Place] = []
    with gzip.open(GEO_DIR / "lsoa21_geography.csv.gz", "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["icb_code"] == icb:
                out.append(Place(r["lsoa21_code"], r["msoa21_code"], r["lad_code"], r["sicbl_code"], icb,
                                 r["region_code"]))
                if len(out) == n:
                    break
    return out


def ms(year: int, month: int, day: int, hour: int = 12) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def incident(trust: str, incident_id: str, t: int, p: Place, disposition: str | None, category: str = "C2",
             response_ms: int | None = 600_000, site: str | None = None, handover_ms: int | None = None,
             version: int = 1) -> IncidentFact:
    pk = periods(t)
    conveyed = disposition in ("conveyed_ed", "conveyed_elsewhere")
    return IncidentFact(
        trust, incident_id, version, t, t, pk.hour, pk.day, pk.week, pk.month, pk.fy, category, "999",
        disposition, disposition is None, conveyed, disposition is not None,
        None if disposition == "hear_and_treat" else response_ms, False, site if conveyed else None,
        site if conveyed else None, handover_ms if conveyed else None, False,
        p.lsoa, p.msoa, p.lad, p.sicbl, p.icb, p.region, "ok", t, t + 3_600_000,
    )


def handover(f: IncidentFact) -> HandoverFact:
    assert f.site is not None and f.handover_duration_ms is not None and f.clock_start_ms is not None
    arrived = f.clock_start_ms + 1_800_000
    pk = periods(f.clock_start_ms)
    d = f.handover_duration_ms
    return HandoverFact(
        f.trust, f.incident_id, f.version, f.site, arrived, arrived + d, arrived + d + 900_000, d, d + 900_000,
        lost_ms(d), f.disposition, f.category, pk.hour, pk.day, pk.week, pk.month, pk.fy,
        f.lsoa, f.msoa, f.lad, f.sicbl, f.icb, f.region, "ok",
    )


def dataset(n_per_icb: dict[str, int] | None = None, seed: int = 7, months: tuple[int, ...] = (5,),
            ) -> tuple[list[IncidentFact], list[HandoverFact]]:
    """Incidents in May 2026 (by default): GM many, CM a few (small counts to suppress), NEL some."""
    rnd = random.Random(seed)
    n_per_icb = n_per_icb or {GM: 120, CM: 6, NEL: 40}
    inc: list[IncidentFact] = []
    for icb, n in n_per_icb.items():
        where = places(icb, 20)
        for k in range(n):
            month = months[k % len(months)]
            t = ms(2026, month, 1 + k % 28, 8 + k % 12)
            disp = rnd.choices(DISPOSITIONS, weights=(16, 30, 50, 5))[0]
            cat = rnd.choice(("C1", "C2", "C2", "C3"))
            inc.append(incident(TRUST_OF[icb], f"{icb[-3:]}-{k:05d}", t, where[k % len(where)], disp, cat,
                                rnd.randint(200_000, 3_000_000), SITES[icb], rnd.randint(300_000, 4_000_000)))
    hand = [handover(f) for f in inc if f.conveyed]
    return inc, hand
