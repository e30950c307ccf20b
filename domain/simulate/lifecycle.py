"""One trust's day of incidents, generated column-wise with numpy.

Every incident is drawn whole (clock start, category, disposition, response, hospital, handover)
and then turned into the events a trust's CAD/ePR would export, each with the time it happened
(``event_time``) and the time it is delivered (``delivery``). The ground truth of every incident
is kept beside the events so tests and the batch oracle can check what the platform computes.

Each (seed, trust, day) has its own random stream, so a trust's events do not depend on which
other trusts or days are simulated with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from domain.events import TRUSTS
from domain.simulate import calibration as cal
from domain.simulate import render
from domain.simulate.config import SimConfig
from domain.simulate.geography import (
    FORM_EN,
    FORM_LATLON,
    FORM_POSTCODE,
    FORM_POSTCODE_LATLON,
    FORM_SCOTTISH,
    FORM_UNKNOWN_POSTCODE,
    SCOTTISH_POSTCODES,
    SEA_POINTS,
    UNKNOWN_POSTCODES,
    LocationPool,
    SitePlan,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
Obj = npt.NDArray[np.object_]
Str = npt.NDArray[np.str_]

LONDON: Final = ZoneInfo("Europe/London")
HOUR_MS: Final = 3_600_000
MIN_MS: Final = 60_000
# Longest a linked 111 call precedes its incident: bounds how early an event of day d+1 can be.
CALL_111_LEAD_CAP_MS: Final = HOUR_MS

# Event kinds (columns of EventTable.kind).
CREATED: Final = 0
CATEGORY_CHANGED: Final = 1
RESPONSE_ARRIVED: Final = 2
DISPOSITION: Final = 3
HANDOVER: Final = 4
CALL_111: Final = 5
KIND_NAMES: Final = ("incident_created", "category_changed", "response_arrived", "disposition", "handover", "call_111")

CATEGORY_NAMES: Final = ("C1", "C2", "C3", "C4")
DISPOSITION_NAMES: Final = ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere")
SOURCE_NAMES: Final = ("999", "111")

# Hour-of-day effect on handover delays: hospitals fill up through the day; z-scores of the demand
# curve four hours earlier.
_lagged = np.roll(np.array(cal.HOUR_SHARE), 4)
HANDOVER_HOUR_EFFECT: Final = (_lagged - _lagged.mean()) / _lagged.std()


@dataclass(frozen=True)
class EventTable:
    """Events as columns; ``lines`` are interchange JSON lines, ``valid`` is False for malformed ones."""

    trust: I64          # index into TRUSTS
    event_time: I64
    delivery: I64
    kind: npt.NDArray[np.int8]
    lines: Obj
    valid: Bool

    def __len__(self) -> int:
        return len(self.lines)

    @staticmethod
    def concat(tables: list[EventTable]) -> EventTable:
        if not tables:
            return EMPTY_EVENTS
        return EventTable(
            trust=np.concatenate([t.trust for t in tables]),
            event_time=np.concatenate([t.event_time for t in tables]),
            delivery=np.concatenate([t.delivery for t in tables]),
            kind=np.concatenate([t.kind for t in tables]),
            lines=np.concatenate([t.lines for t in tables]),
            valid=np.concatenate([t.valid for t in tables]),
        )

    def take(self, idx: npt.NDArray[np.intp] | I64 | slice) -> EventTable:
        return EventTable(self.trust[idx], self.event_time[idx], self.delivery[idx], self.kind[idx],
                          self.lines[idx], self.valid[idx])


EMPTY_EVENTS: Final = EventTable(
    np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8),
    np.zeros(0, object), np.zeros(0, bool),
)


@dataclass(frozen=True)
class IncidentTruth:
    """What really happened to each incident (final values, after re-triage and corrections).

    Times are epoch ms, -1 where not applicable. ``lsoa21``/``icb`` are '' for incidents sent with an
    unplaceable location. Codes index CATEGORY_NAMES, DISPOSITION_NAMES and SOURCE_NAMES.
    """

    trust: str
    incident_id: Str
    clock_start: I64
    category: npt.NDArray[np.int8]
    initial_category: npt.NDArray[np.int8]
    source: npt.NDArray[np.int8]
    lsoa21: Str
    icb: Str
    location_form: npt.NDArray[np.int8]
    disposition: npt.NDArray[np.int8]
    disposition_time: I64
    corrected: Bool
    response_at: I64
    destination_site: Str
    arrived_at_hospital: I64
    handover_at: I64
    clear_at: I64

    def __len__(self) -> int:
        return len(self.incident_id)


@dataclass(frozen=True)
class CallTruth:
    """NHS 111 calls: ``linked_incident_id`` is '' for calls that did not become an incident."""

    trust: str
    call_id: Str
    call_time: I64
    ambulance: Bool
    linked_incident_id: Str
    lsoa21: Str


@dataclass(frozen=True)
class TrustDay:
    events: EventTable
    incidents: IncidentTruth
    calls: CallTruth


def local_day(day: date) -> tuple[int, I64]:
    """(UTC epoch ms of local midnight, local hour of each elapsed hour of the day): 23-25 hours."""
    start = datetime(day.year, day.month, day.day, tzinfo=LONDON)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=LONDON)
    start_ms = int(start.timestamp()) * 1000
    n_hours = (int(end.timestamp()) * 1000 - start_ms) // HOUR_MS
    utc = datetime.fromtimestamp(start_ms / 1000, tz=ZoneInfo("UTC"))
    hours = [(utc + timedelta(hours=k)).astimezone(LONDON).hour for k in range(n_hours)]
    return start_ms, np.array(hours, dtype=np.int64)


def day_factor(day: date) -> float:
    """Demand on this day relative to an average day (weekday and month)."""
    return cal.WEEKDAY_FACTOR[day.weekday()] * cal.MONTH_FACTOR[day.month - 1]


def _lognormal(rng: np.random.Generator, median_sigma: tuple[float, float], n: int, cap_s: float) -> I64:
    median, sigma = median_sigma
    s = np.minimum(median * np.exp(sigma * rng.standard_normal(n)), cap_s)
    return (s * 1000).astype(np.int64)


def _ids(prefix: str, n: int) -> npt.NDArray[np.uint8]:
    """``prefix`` + a 6-digit sequence number from 1, as an (n, width) byte matrix."""
    if n > 999_999:
        raise ValueError(f"{n:,} ids in one trust-day do not fit 6 digits: lower the scale")
    out = np.empty((n, len(prefix) + 6), dtype=np.uint8)
    out[:, :len(prefix)] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    out[:, len(prefix):] = render.digits(np.arange(1, n + 1), 6)
    return out


def _times_in_day(rng: np.random.Generator, start_ms: int, hours: I64, n: int) -> I64:
    share = np.array(cal.HOUR_SHARE)[hours]
    bucket = rng.choice(len(hours), n, p=share / share.sum())
    t = start_ms + bucket * HOUR_MS + (rng.random(n) * HOUR_MS).astype(np.int64)
    return np.sort(t)


class _Locations:
    """Location columns of some incidents or calls, rendered as JSON fragments."""

    def __init__(self, rng: np.random.Generator, pool: LocationPool, trust: str, n: int, unplaceable: float):
        tl = pool.trust(trust)
        self.lsoa = tl.sample_lsoa(rng, n)
        self.row = pool.sample_postcode(rng, self.lsoa)
        form = rng.choice(4, n, p=cal.LOCATION_FORM_MIX).astype(np.int8)
        bad = np.flatnonzero(rng.random(n) < unplaceable)
        form[bad] = (FORM_UNKNOWN_POSTCODE + rng.integers(0, 3, len(bad))).astype(np.int8)
        self.form = form
        self.pool = pool
        self.bad_pick = rng.integers(0, 1 << 30, n)
        self.sea_jitter = rng.random((n, 2))
        placeable = form < FORM_UNKNOWN_POSTCODE
        self.lsoa21 = np.where(placeable, pool.lsoa_code[self.lsoa], "").astype(np.str_)
        self.icb = np.where(placeable, pool.icb_codes[pool.lsoa_icb[self.lsoa]], "").astype(np.str_)

    def fragments(self) -> list[str]:
        """Each row's location fields and the closing brace of its JSON object."""
        n = len(self.form)
        out = [""] * n
        p = self.pool
        for form in range(FORM_SCOTTISH + 1):
            idx = np.flatnonzero(self.form == form)
            if len(idx) == 0:
                continue
            rows = self.row[idx]
            il = idx.tolist()
            if form == FORM_POSTCODE:
                frag = [f',"postcode":"{pc}"' for pc in p.postcode[rows].tolist()]
            elif form == FORM_LATLON:
                frag = [f',"lat":{a:.6f},"lon":{b:.6f}' for a, b in zip(p.lat[rows].tolist(), p.lon[rows].tolist(), strict=True)]
            elif form == FORM_EN:
                frag = [f',"easting":{e},"northing":{n}'
                        for e, n in zip(p.easting[rows].tolist(), p.northing[rows].tolist(), strict=True)]
            elif form == FORM_POSTCODE_LATLON:
                frag = [f',"postcode":"{pc}","lat":{a:.6f},"lon":{b:.6f}'
                        for pc, a, b in zip(p.postcode[rows].tolist(), p.lat[rows].tolist(), p.lon[rows].tolist(), strict=True)]
            elif form == FORM_UNKNOWN_POSTCODE:
                frag = [f',"postcode":"{UNKNOWN_POSTCODES[k % len(UNKNOWN_POSTCODES)]}"' for k in self.bad_pick[idx].tolist()]
            elif form == FORM_SCOTTISH:
                frag = [f',"postcode":"{SCOTTISH_POSTCODES[k % len(SCOTTISH_POSTCODES)]}"' for k in self.bad_pick[idx].tolist()]
            else:  # FORM_SEA
                pts = np.array(SEA_POINTS)[self.bad_pick[idx] % len(SEA_POINTS)]
                ll = pts + (self.sea_jitter[idx] - 0.5) * 0.2
                frag = [f',"lat":{a:.6f},"lon":{b:.6f}' for a, b in ll.tolist()]
            for i, f in zip(il, frag, strict=True):
                out[i] = f + "}"
        return out


class _Events:
    """Accumulates event columns of one trust-day."""

    def __init__(self, trust: str):
        self.trust = trust
        self.times: list[I64] = []
        self.kinds: list[npt.NDArray[np.int8]] = []
        self.lines: list[list[str]] = []

    def add(self, kind: int, event_time: I64, lines: list[str]) -> None:
        self.times.append(event_time)
        self.kinds.append(np.full(len(event_time), kind, dtype=np.int8))
        self.lines.append(lines)

    def table(self, rng: np.random.Generator) -> EventTable:
        t = np.concatenate(self.times) if self.times else np.zeros(0, np.int64)
        lag = 500 + (rng.exponential(cal.DELIVERY_LAG_MEAN_S * 1000, len(t))).astype(np.int64)
        lines = np.empty(len(t), dtype=object)
        lines[:] = [x for part in self.lines for x in part]
        return EventTable(
            trust=np.full(len(t), TRUSTS.index(self.trust), dtype=np.int64),
            event_time=t,
            delivery=t + lag,
            kind=np.concatenate(self.kinds) if self.kinds else np.zeros(0, np.int8),
            lines=lines,
            valid=np.ones(len(t), dtype=bool),
        )


def simulate_trust_day(cfg: SimConfig, pool: LocationPool, sites: SitePlan, trust: str, day: date) -> TrustDay:
    """All incidents with clock start on local ``day`` for ``trust``, their events and 111 calls."""
    rng = np.random.default_rng([cfg.seed, TRUSTS.index(trust), day.toordinal()])
    mess = cfg.mess
    start_ms, hours = local_day(day)
    ymd = day.strftime("%Y%m%d")
    factor = day_factor(day) * cfg.scale

    # --- incidents ------------------------------------------------------------------------
    n = int(rng.poisson(cal.TRUST_DAILY_INCIDENTS[trust] * factor))
    t0 = _times_in_day(rng, start_ms, hours, n)
    cat = rng.choice(4, n, p=cal.CATEGORY_MIX).astype(np.int8)
    p_ht = np.array(cal.hear_and_treat_by_category(trust))[cat]
    face = 1 + rng.choice(3, n, p=cal.FACE_TO_FACE_SPLIT)
    disp = np.where(rng.random(n) < p_ht, 0, face).astype(np.int8)
    source = (rng.random(n) < cal.SOURCE_111_SHARE).astype(np.int8)
    loc = _Locations(rng, pool, trust, n, mess.unplaceable)

    # Response: lognormal by final category; none for hear and treat.
    mu = np.array([m for m, _ in cal.RESPONSE_LOGNORMAL])[cat]
    sig = np.array([s for _, s in cal.RESPONSE_LOGNORMAL])[cat]
    resp_s = np.clip(np.exp(mu + sig * rng.standard_normal(n)), cal.RESPONSE_MIN_S, cal.RESPONSE_MAX_S)
    has_resp = disp != 0
    arrive = np.where(has_resp, t0 + (resp_s * 1000).astype(np.int64), -1)

    # Re-triage: created with a neighbouring category, changed to the final one.
    retriaged = rng.random(n) < mess.retriage
    step = np.where(rng.random(n) < 0.5, -1, 1)
    initial = np.where(cat == 0, 1, np.where(cat == 3, 2, cat + step)).astype(np.int8)
    initial = np.where(retriaged, initial, cat).astype(np.int8)
    rt_delay = (rng.uniform(60, 1200, n) * 1000).astype(np.int64)
    rt_delay = np.where(has_resp, np.minimum(rt_delay, (arrive - t0) // 2), rt_delay)
    rt_time = t0 + np.maximum(rt_delay, 1000)

    # Disposition: hear and treat closes on the phone; others at the end of the time on scene.
    ht_close = t0 + _lognormal(rng, cal.HEAR_AND_TREAT_CLOSE, n, 12 * 3600)
    on_scene = np.where(disp == 1, _lognormal(rng, cal.ON_SCENE_SEE_AND_TREAT, n, 6 * 3600),
                        _lognormal(rng, cal.ON_SCENE_CONVEYED, n, 4 * 3600))
    disp_time = np.where(disp == 0, ht_close, arrive + on_scene)

    # Destination.
    tl = pool.trust(trust)
    dest_icb = sites.destination_icb(rng, pool.lsoa_icb[loc.lsoa], tl.icb_index)
    ed = sites.ed_site(rng, dest_icb)
    if trust == "R1F":
        ed[:] = sites.island_site
    other = sites.other_site(rng, dest_icb)
    ed_code = sites.ed_code[ed]
    other_code = sites.other_code[other]
    dest = np.where(disp == 2, ed_code, np.where(disp == 3, other_code, "")).astype(np.str_)

    # Handover (conveyed to ED): travel, then a copula draw from the national handover CDF.
    hv = np.flatnonzero(disp == 2)
    k = len(hv)
    arrived_h = np.full(n, -1, np.int64)
    handover_at = np.full(n, -1, np.int64)
    clear_at = np.full(n, -1, np.int64)
    arrived_h[hv] = disp_time[hv] + _lognormal(rng, cal.TRAVEL_TO_HOSPITAL, k, 3 * 3600)
    hour = ((arrived_h[hv] - start_ms) // HOUR_MS) % 24
    noise_w = float(np.sqrt(max(0.0, 1 - cal.HANDOVER_SITE_WEIGHT**2 - cal.HANDOVER_HOUR_WEIGHT**2)))
    score = (cal.HANDOVER_SITE_WEIGHT * sites.ed_pressure[ed[hv]]
             + cal.HANDOVER_HOUR_WEIGHT * HANDOVER_HOUR_EFFECT[hour]
             + noise_w * rng.standard_normal(k))
    u = (np.argsort(np.argsort(score, kind="stable"), kind="stable") + rng.random(k)) / max(k, 1)
    minutes = np.interp(u, cal.HANDOVER_KNOTS_CDF, cal.HANDOVER_KNOTS_MIN)
    handover_at[hv] = arrived_h[hv] + (minutes * MIN_MS).astype(np.int64)
    clear_at[hv] = handover_at[hv] + _lognormal(rng, cal.CLEAR_AFTER_HANDOVER, k, 90 * 60)
    n_hv_events = rng.choice(3, k, p=cal.HANDOVER_EVENT_COUNTS) + 1

    # Corrections: the first disposition sent is wrong; a later event puts it right.
    corrected = rng.random(n) < mess.correction
    wrong = np.array([1, 3, 3, 2], dtype=np.int8)[disp]
    corr_delay = _lognormal(rng, (3 * 3600.0, 1.0), n, 3 * 86400)
    final_disp_time = np.where(corrected, disp_time + np.maximum(corr_delay, MIN_MS), disp_time)

    inc_id = _ids(f"{trust}-{ymd}-", n)
    ids_arr = render.column_strings(inc_id)

    # --- 111 calls ------------------------------------------------------------------------
    linked = np.flatnonzero(source == 1) if cfg.calls_111 else np.zeros(0, np.int64)
    lead = np.minimum(_lognormal(rng, cal.CALL_111_LEAD, len(linked), 3600), CALL_111_LEAD_CAP_MS)
    calls_mean = cal.daily_111_calls(trust) * factor if cfg.calls_111 else 0.0
    linked_mean = cal.SOURCE_111_SHARE * cal.TRUST_DAILY_INCIDENTS[trust] * factor
    n_free = int(rng.poisson(max(0.0, calls_mean - linked_mean))) if cfg.calls_111 else 0
    p_free_amb = max(0.0, (cal.CALL_111_AMBULANCE_SHARE * calls_mean - linked_mean) / max(calls_mean - linked_mean, 1.0))
    free_time = _times_in_day(rng, start_ms, hours, n_free)
    free_amb = rng.random(n_free) < p_free_amb
    free_loc = _Locations(rng, pool, trust, n_free, mess.unplaceable)
    call_time = np.concatenate([t0[linked] - lead, free_time])
    call_order = np.argsort(call_time, kind="stable")
    call_time = call_time[call_order]
    n_calls = len(call_time)
    call_amb = np.concatenate([np.ones(len(linked), bool), free_amb])[call_order]
    linked_pos = np.concatenate([linked, np.full(n_free, -1, np.int64)])[call_order]
    linked_ids = np.where(linked_pos >= 0, ids_arr[np.maximum(linked_pos, 0)] if n else "", "").astype(np.str_)

    # --- events ---------------------------------------------------------------------------
    ev = _Events(trust)
    cat_b = render.text(CATEGORY_NAMES)
    frags = loc.fragments()
    t0_b = render.iso(t0)
    fixed = render.assemble(n, *render.head(n, "incident_created", trust, render.uuids(rng, n), inc_id, t0_b),
                            b',"clock_start":"', t0_b, b'Z","category":"', cat_b[initial],
                            b'","source":"', render.text(SOURCE_NAMES)[source], b'"')
    ev.add(CREATED, t0, [a + f for a, f in zip(fixed, frags, strict=True)])

    rt = np.flatnonzero(retriaged)
    ev.add(CATEGORY_CHANGED, rt_time[rt], render.assemble(
        len(rt), *render.head(len(rt), "category_changed", trust, render.uuids(rng, len(rt)), inc_id[rt],
                              render.iso(rt_time[rt])), b',"category":"', cat_b[cat[rt]], b'"}'))

    ra = np.flatnonzero(has_resp)
    ev.add(RESPONSE_ARRIVED, arrive[ra], render.assemble(
        len(ra), *render.head(len(ra), "response_arrived", trust, render.uuids(rng, len(ra)), inc_id[ra],
                              render.iso(arrive[ra])), b"}"))

    # Dispositions, one group per value (its width is fixed): the wrong first versions, then the truth.
    site_b = render.text(sites.ed_code)
    other_b = render.text(sites.other_code)
    dest_b = {2: site_b[ed], 3: other_b[other]}
    cr = np.flatnonzero(corrected)
    for rows, value, when in ((cr, wrong[cr], disp_time[cr]), (np.arange(n), disp, final_disp_time)):
        for d in range(4):
            sel = rows[value == d]
            pieces = render.head(len(sel), "disposition", trust, render.uuids(rng, len(sel)), inc_id[sel],
                                 render.iso(when[value == d]))
            pieces.append(f',"disposition":"{DISPOSITION_NAMES[d]}"'.encode())
            if d >= 2:
                pieces += [b',"destination_site":"', dest_b[d][sel], b'"']
            ev.add(DISPOSITION, when[value == d], render.assemble(len(sel), *pieces, b"}"))

    # Handover events: 1 (all at clear), 2 (arrival; then all at clear) or 3 (arrival, handover, clear).
    a, h, c = arrived_h[hv], handover_at[hv], clear_at[hv]
    groups = (
        (n_hv_events < 3, c, True, True),      # closing event with everything
        (n_hv_events == 3, c, False, True),    # closing event after a separate handover notice
        (n_hv_events >= 2, a, False, False),   # arrival notice
        (n_hv_events == 3, h, True, False),    # handover notice
    )
    for mask, when, with_h, with_c in groups:
        sel = np.flatnonzero(mask)
        m = len(sel)
        pieces = render.head(m, "handover", trust, render.uuids(rng, m), inc_id[hv[sel]], render.iso(when[sel]))
        pieces += [b',"site":"', site_b[ed[hv[sel]]], b'","arrived_at_hospital":"', render.iso(a[sel]), b'Z"']
        if with_h:
            pieces += [b',"handover_at":"', render.iso(h[sel]), b'Z"']
        if with_c:
            pieces += [b',"clear_at":"', render.iso(c[sel]), b'Z"']
        ev.add(HANDOVER, when[sel], render.assemble(m, *pieces, b"}"))

    if n_calls:
        call_b = _ids(f"C{trust}-{ymd}-", n_calls)
        call_frag = [frags[i] for i in linked.tolist()] + free_loc.fragments()
        call_frag = [call_frag[i] for i in call_order.tolist()]
        has_link = linked_ids != ""
        for amb, link in ((True, True), (True, False), (False, False)):
            sel = np.flatnonzero((call_amb == amb) & (has_link == link))
            m = len(sel)
            pieces = render.head(m, "call_111", trust, render.uuids(rng, m), call_b[sel], render.iso(call_time[sel]))
            pieces += [b',"call_id":"', call_b[sel], f'","disposition_ambulance":{"true" if amb else "false"}'.encode()]
            if link:
                pieces += [b',"linked_incident_id":"', inc_id[linked_pos[sel]], b'"']
            ev.add(CALL_111, call_time[sel], [x + call_frag[i] for x, i in zip(
                render.assemble(m, *pieces), sel.tolist(), strict=True)])

    table = ev.table(rng)
    incidents = IncidentTruth(
        trust=trust, incident_id=ids_arr, clock_start=t0, category=cat, initial_category=initial,
        source=source, lsoa21=loc.lsoa21, icb=loc.icb, location_form=loc.form, disposition=disp,
        disposition_time=final_disp_time, corrected=corrected, response_at=arrive, destination_site=dest,
        arrived_at_hospital=arrived_h, handover_at=handover_at, clear_at=clear_at,
    )
    calls = CallTruth(
        trust=trust, call_id=render.column_strings(_ids(f"C{trust}-{ymd}-", n_calls)), call_time=call_time, ambulance=call_amb,
        linked_incident_id=linked_ids,
        lsoa21=np.concatenate([loc.lsoa21[linked], free_loc.lsoa21]).astype(np.str_)[call_order],
    )
    return TrustDay(table, incidents, calls)
