"""Incident state as the worker keeps it: the domain state plus its attribution, as table bytes.

One table row per incident (or NHS 111 call), keyed ``trust:kind:id`` (``domain.incident.state_key``
joined by ``:``). The value is a fixed 19-byte header and a JSON body::

    header  >B q q H   format, expires_at ms, last_event_time ms, partition
    body    format 2 (written now): one JSON array, fields by position (``_encode_v2``):
              [0, trust, incident_id, seen, first, last, location, created_key, clock_start, source,
               category_key, category, first_arrival, disposition_key, disposition, destination_site,
               site_key, site, arrived_key, arrived_at_hospital, handover_key, handover_at, clear_key,
               clear_at, geo, attributed_for]
              [1, trust, call_id, seen, first, last, location, call_key, disposition_ambulance,
               link_key, linked_incident_id, geo, attributed_for]
            with a location as [postcode, lat, lon, easting, northing], a key as [event_time,
            event_id], enums by value, geo as [lsoa, msoa, lad, sicbl, icb, region, status].
            format 1 (still read): {"s": domain.incident.to_dict(state), "g": geo, "a": attributed_for}

The header lets a rebalance scan decide expiry, rebuild watermarks and pick today's incidents for
the live view without parsing JSON. The body is JSON (not pickle or marshal) so a state written by
one release is read by the next: the changelog outlives the code that wrote it. Format 2 exists
for speed (the worker reads and writes a row per input event): an array built and read by
position costs about a third of the dict of format 1, and a row is about half the size.

Attribution is kept with the state: a location is placed once, with the boundaries in force at the
incident's period time (its clock start), and placed again only if the location or the clock start
is corrected.

Expiry (``AMB_LATE_HORIZON_DAYS``, default 7): a complete incident is dropped from the table that
long after its last event, an incomplete one after four times that (``domain.incident.expires_at``),
measured in EVENT time per source partition (the partition's watermark: the greatest event time
seen), so a replay of old data expires nothing early. An event that arrives for an incident that
is not in the table and is itself older than the horizon (event time + horizon <= watermark) goes
to the dead-letter topic with reason ``late_after_expiry``: it would otherwise start a new state at
version 1, whose facts lose to the higher version the sink already holds, i.e. be dropped
silently. `amb dlq replay` can re-drive it once someone decides what it means.
"""

from __future__ import annotations

import heapq
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final

from domain.events import Category, Disposition, Location, Source
from domain.facts import Geo
from domain.incident import Call111State, IncidentState, State, from_dict, to_dict

FORMAT: Final = 2
"""What :func:`encode_record` writes; :func:`decode_record` reads this and every format in READS."""
FORMAT_DICT: Final = 1
READS: Final = frozenset({FORMAT_DICT, FORMAT})
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _not_json(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _json_text(obj: Any) -> str:
    if _c_encoder is None:  # no C accelerator (not CPython): the plain way
        return _dumps(obj)
    return "".join(_c_encoder(obj, 0))


_c_encoder: Final = None if c_make_encoder is None else c_make_encoder(
    None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, True)
"""json's C encoder made once (``json.dumps`` builds one per call, half its cost for a row): no
circular check (a row is a tree of tuples and scalars), the same text as ``_dumps``."""
_HEADER: Final = struct.Struct(">Bqqh")
HEADER_SIZE: Final = _HEADER.size

LocKey = tuple[str | None, float | None, float | None, float | None, float | None]
AttributedFor = tuple[LocKey | None, int]


def loc_key(loc: Location | None) -> LocKey | None:
    return None if loc is None else (loc.postcode, loc.lat, loc.lon, loc.easting, loc.northing)


def table_key(trust: str, kind: str, ident: str) -> bytes:
    """``trust:kind:id``: trust and kind have no colon, so it splits back with ``split(':', 2)``."""
    return f"{trust}:{kind}:{ident}".encode()


def trust_of_key(key: bytes) -> str:
    return key.split(b":", 1)[0].decode()


@dataclass(slots=True)
class IncidentRecord:
    """What the table holds for one incident or call: state, geography and where it lives."""

    state: State
    partition: int
    geo: Geo | None = None
    geo_for: AttributedFor | None = None

    @property
    def version(self) -> int:
        return self.state.version


@dataclass(frozen=True, slots=True)
class Header:
    expires_at: int
    last_event_time: int
    partition: int


def encode_record(rec: IncidentRecord, expires_at: int) -> bytes:
    """The table value of ``rec`` (format 2)."""
    state = rec.state
    head = _HEADER.pack(FORMAT, expires_at, state.last_event_time, rec.partition)
    return head + _json_text(_encode_v2(rec)).encode()


def encode_record_v1(rec: IncidentRecord, expires_at: int) -> bytes:
    """The format-1 value of ``rec``: what the previous release wrote (tests of reading it)."""
    body: dict[str, Any] = {"s": to_dict(rec.state)}
    if rec.geo is not None:
        g = rec.geo
        body["g"] = [g.lsoa, g.msoa, g.lad, g.sicbl, g.icb, g.region, g.status]
    if rec.geo_for is not None:
        body["a"] = [list(rec.geo_for[0]) if rec.geo_for[0] is not None else None, rec.geo_for[1]]
    head = _HEADER.pack(FORMAT_DICT, expires_at, rec.state.last_event_time, rec.partition)
    return head + _dumps(body).encode()


def _encode_v2(rec: IncidentRecord) -> list[Any]:
    # json writes tuples as arrays and a StrEnum member as its value: no conversion needed.
    s = rec.state
    loc = s.location
    loc_v = None if loc is None else (loc.postcode, loc.lat, loc.lon, loc.easting, loc.northing)
    geo = rec.geo
    geo_v = None if geo is None else (geo.lsoa, geo.msoa, geo.lad, geo.sicbl, geo.icb, geo.region, geo.status)
    if isinstance(s, IncidentState):
        return [0, s.trust, s.incident_id, sorted(s.seen), s.first_event_time, s.last_event_time, loc_v,
                s.created_key, s.clock_start, s.source, s.category_key, s.category, s.first_arrival,
                s.disposition_key, s.disposition, s.destination_site, s.site_key, s.site, s.arrived_key,
                s.arrived_at_hospital, s.handover_key, s.handover_at, s.clear_key, s.clear_at, geo_v, rec.geo_for]
    return [1, s.trust, s.call_id, sorted(s.seen), s.first_event_time, s.last_event_time, loc_v,
            s.call_key, s.disposition_ambulance, s.link_key, s.linked_incident_id, geo_v, rec.geo_for]


def read_header(value: bytes) -> Header:
    fmt, expires_at, last, partition = _HEADER.unpack_from(value)
    if fmt not in READS:
        raise ValueError(f"incident-state row has format {fmt}; this worker reads {sorted(READS)}")
    return Header(expires_at, last, partition)


_SOURCE: Final = {m.value: m for m in Source}
_CATEGORY: Final = {m.value: m for m in Category}
_DISPOSITION: Final = {m.value: m for m in Disposition}


def _k(v: list[Any] | None) -> tuple[int, str] | None:
    return None if v is None else (v[0], v[1])


def decode_record(value: bytes) -> IncidentRecord:
    """A table value of any format in READS -> record; ValueError (or KeyError) if it is not one."""
    fmt, _expires, _last, partition = _HEADER.unpack_from(value)
    if fmt == FORMAT:
        return _decode_v2(json.loads(value[HEADER_SIZE:]), partition)
    head = read_header(value)
    body = json.loads(value[HEADER_SIZE:])
    state = from_dict(body["s"])
    g = body.get("g")
    a = body.get("a")
    geo_for: AttributedFor | None = None
    if a is not None:
        geo_for = (None if a[0] is None else tuple(a[0]), int(a[1]))
    return IncidentRecord(state, head.partition, None if g is None else Geo(*g), geo_for)


def _decode_v2(b: list[Any], partition: int) -> IncidentRecord:
    loc = b[6]
    location = None if loc is None else Location(*loc)
    state: State
    if b[0] == 0:
        (_, trust, ident, seen, first, last, _loc, created_key, clock_start, source, category_key, category,
         first_arrival, disposition_key, disposition, destination_site, site_key, site, arrived_key,
         arrived, handover_key, handover_at, clear_key, clear_at, geo, geo_for) = b
        state = IncidentState(
            trust, ident, frozenset(seen), first, last, _k(created_key), clock_start,
            None if source is None else _SOURCE[source], location, _k(category_key),
            None if category is None else _CATEGORY[category], first_arrival, _k(disposition_key),
            None if disposition is None else _DISPOSITION[disposition], destination_site, _k(site_key), site,
            _k(arrived_key), arrived, _k(handover_key), handover_at, _k(clear_key), clear_at)
    elif b[0] == 1:
        (_, trust, ident, seen, first, last, _loc, call_key, disposition_ambulance, link_key, linked,
         geo, geo_for) = b
        state = Call111State(trust, ident, frozenset(seen), first, last, _k(call_key), location,
                             disposition_ambulance, _k(link_key), linked)
    else:
        raise ValueError(f"incident-state row of unknown kind {b[0]!r}")
    attributed: AttributedFor | None = None
    if geo_for is not None:
        attributed = (None if geo_for[0] is None else tuple(geo_for[0]), geo_for[1])
    return IncidentRecord(state, partition, None if geo is None else Geo(*geo), attributed)


def new_record(trust: str, kind: str, ident: str, partition: int) -> IncidentRecord:
    from domain.incident import CALL

    state: State = Call111State(trust, ident) if kind == CALL else IncidentState(trust, ident)
    return IncidentRecord(state, partition)


# ---------------------------------------------------------------------------------- watermarks
class Watermarks:
    """Greatest event time seen per source (topic, partition): the event-time clock for expiry and
    for telling a late-after-expiry event from a new incident."""

    def __init__(self) -> None:
        self._wm: dict[tuple[str, int], int] = {}

    def get(self, topic: str, partition: int) -> int:
        return self._wm.get((topic, partition), 0)

    def advance(self, topic: str, partition: int, event_time: int) -> None:
        k = (topic, partition)
        if event_time > self._wm.get(k, 0):
            self._wm[k] = event_time

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        for tp in partitions:
            self._wm.pop(tp, None)

    def items(self) -> Iterator[tuple[tuple[str, int], int]]:
        return iter(self._wm.items())


# ------------------------------------------------------------------------------- expiry index
class ExpiryIndex:
    """When each held state may be dropped, per source (topic, partition): a dict key -> current
    expiry and a heap of (expiry, key) with lazy deletion. An incident's expiry only moves later
    (a new event) or disappears (expired, revoked); the heap keeps its first entry and re-files it
    when popped early. One dict entry and at most one live heap entry per state."""

    def __init__(self) -> None:
        self._heaps: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        self._current: dict[tuple[str, int], dict[bytes, int]] = {}

    def __len__(self) -> int:
        """States held (noted and not yet expired or revoked)."""
        return sum(len(d) for d in self._current.values())

    def note(self, key: bytes, expires_at: int, topic: str, partition: int) -> bool:
        """Record a state's expiry; True if the key was not held before (a new state)."""
        tp = (topic, partition)
        cur = self._current.setdefault(tp, {})
        old = cur.get(key)
        cur[key] = expires_at
        if old is None or expires_at < old:
            heapq.heappush(self._heaps.setdefault(tp, []), (expires_at, key))
        return old is None

    def discard(self, key: bytes, topic: str, partition: int) -> None:
        self._current.get((topic, partition), {}).pop(key, None)

    def due(self, watermarks: Watermarks, limit: int = 10_000) -> list[tuple[bytes, str, int]]:
        """Up to ``limit`` states whose expiry is at or before their partition's watermark. They stay
        held until :meth:`discard` (the caller deletes the row first)."""
        out: list[tuple[bytes, str, int]] = []
        for tp, heap in self._heaps.items():
            wm = watermarks.get(*tp)
            cur = self._current.get(tp, {})
            while heap and heap[0][0] <= wm and len(out) < limit:
                at, key = heapq.heappop(heap)
                now_at = cur.get(key)
                if now_at is None:
                    continue  # expired or discarded since
                if now_at > at:
                    heapq.heappush(heap, (now_at, key))  # moved later: file it again
                    continue
                out.append((key, tp[0], tp[1]))
        return out

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop everything about revoked partitions (their new owner rebuilds its own)."""
        for tp in partitions:
            self._heaps.pop(tp, None)
            self._current.pop(tp, None)
