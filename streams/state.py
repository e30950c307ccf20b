"""Incident state as the worker keeps it: the domain state plus its attribution, as table bytes.

One table row per incident (or NHS 111 call), keyed ``trust:kind:id`` (``domain.incident.state_key``
joined by ``:``). The value is a fixed 19-byte header and a JSON body::

    header  >B q q H   format (1), expires_at ms, last_event_time ms, partition
    body    {"s": domain.incident.to_dict(state), "g": [lsoa, msoa, lad, sicbl, icb, region, status],
             "a": [location, period time] the attribution was made for}

The header lets a rebalance scan decide expiry, rebuild watermarks and pick today's incidents for
the live view without parsing JSON. The body is JSON (not pickle) so a state written by one
release is read by the next: the changelog outlives the code that wrote it.

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
from typing import Any, Final

from domain.events import Location
from domain.facts import Geo
from domain.incident import Call111State, IncidentState, State, from_dict, to_dict

FORMAT: Final = 1
_dumps = json.JSONEncoder(separators=(",", ":")).encode
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
    body: dict[str, Any] = {"s": to_dict(rec.state)}
    if rec.geo is not None:
        g = rec.geo
        body["g"] = [g.lsoa, g.msoa, g.lad, g.sicbl, g.icb, g.region, g.status]
    if rec.geo_for is not None:
        body["a"] = [list(rec.geo_for[0]) if rec.geo_for[0] is not None else None, rec.geo_for[1]]
    head = _HEADER.pack(FORMAT, expires_at, rec.state.last_event_time, rec.partition)
    return head + _dumps(body).encode()


def read_header(value: bytes) -> Header:
    fmt, expires_at, last, partition = _HEADER.unpack_from(value)
    if fmt != FORMAT:
        raise ValueError(f"incident-state row has format {fmt}; this worker reads {FORMAT}")
    return Header(expires_at, last, partition)


def decode_record(value: bytes) -> IncidentRecord:
    head = read_header(value)
    body = json.loads(value[HEADER_SIZE:])
    state = from_dict(body["s"])
    g = body.get("g")
    a = body.get("a")
    geo_for: AttributedFor | None = None
    if a is not None:
        geo_for = (None if a[0] is None else tuple(a[0]), int(a[1]))
    return IncidentRecord(state, head.partition, None if g is None else Geo(*g), geo_for)


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
