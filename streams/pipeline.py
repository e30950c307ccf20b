"""The worker's batch step, with no Kafka in it: raw messages in, facts and dead letters out.

    decode + validate each message (amb.codec)        -> dead letter with the reason, or an Event
    load the batch's incident states (one read each)  -> StateStore (a Faust table in the worker)
    fold the events in arrival order (domain.incident.update: duplicates change nothing)
    attribute the new or corrected locations          -> ONE attributor call for the whole batch
    build each touched incident's current fact        -> domain.facts, encoded by streams.fact_codec
    write back every touched state, expire old ones   -> StateStore

Every touched incident gets its CURRENT fact re-sent and its state re-written, also when the only
input was a duplicate. That is the crash-safety rule without exactly-once: if the worker dies after
the state write but before the fact (or the changelog record) left, the source offset was not
committed, the event is read again, is a duplicate by then, and the re-send heals the gap.

The agent in streams.agents feeds it batches of consumer records (streams.bulk); the tests feed it lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from domain.events import Event, EventType
from domain.facts import (
    GEO_NO_LOCATION,
    Attributor,
    Geo,
    Hierarchy,
    attribute,
    call_fact,
    handover_fact,
    incident_fact,
    period_time,
    unknown_geo,
)
from domain.incident import (
    CALL,
    INCIDENT,
    LATE_HORIZON_MS,
    Call111State,
    IncidentState,
    expires_at,
    update,
    update_call,
)
from domain.validation import Code, Rejection
from streams import fact_codec
from streams.live import LiveView
from streams.state import (
    ExpiryIndex,
    IncidentRecord,
    Watermarks,
    decode_record,
    encode_record,
    loc_key,
    new_record,
    read_header,
)

if TYPE_CHECKING:
    from streams.native import NativeStep

LATE_AFTER_EXPIRY: Final = Code.LATE_AFTER_EXPIRY.value
WRONG_KEY: Final = Code.WRONG_KEY.value
REDUCER_ERROR: Final = Code.REDUCER_ERROR.value
"""DLQ reason codes the worker adds to domain.validation.Code (which the codec and validator use)."""
_MISSING: Final[Any] = object()
KIND_INCIDENT: Final = fact_codec.KIND_INCIDENT
KIND_CALL: Final = fact_codec.KIND_CALL


@dataclass(frozen=True, slots=True)
class InMessage:
    """One consumed Kafka message, as the batch step needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class StateStore(Protocol):
    """Incident-state rows by table key. ``topic``/``partition`` name the source message the row
    belongs with: a Faust table writes the changelog partition of that number."""

    def get(self, key: bytes, topic: str, partition: int) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, topic: str, partition: int) -> None: ...

    def delete(self, key: bytes, topic: str, partition: int) -> None: ...


class DictStore:
    """A StateStore in a dict: tests, benchmarks and the naive baseline."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}

    def get(self, key: bytes, topic: str, partition: int) -> bytes | None:
        return self.rows.get(key)

    def put(self, key: bytes, value: bytes, topic: str, partition: int) -> None:
        self.rows[key] = value

    def delete(self, key: bytes, topic: str, partition: int) -> None:
        self.rows.pop(key, None)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message refused by the batch step; ``reason`` is what amb.dlq.dead_letter takes."""

    message: InMessage
    reason: Rejection | tuple[str, str]

    @property
    def code(self) -> str:
        return str(self.reason.code) if isinstance(self.reason, Rejection) else self.reason[0]


@dataclass(slots=True)
class FactOut:
    """One fact message to send (``key``, ``value``, ``headers``) and the source it came from."""

    key: bytes
    value: bytes
    kind: str
    version: int
    topic: str
    partition: int


@dataclass
class BatchResult:
    facts: list[FactOut] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event type, trust)
    duplicates: Counter[str] = field(default_factory=Counter)  # trust
    attributed: Counter[str] = field(default_factory=Counter)  # geography status
    new_states: int = 0
    expired: int = 0
    max_event_time: int = 0


Decoder = Callable[[bytes | None, int, str, str | None], "Event | Rejection"]


def wrong_key(key: bytes | None, want: str) -> tuple[str, str]:
    """The dead-letter reason of a message whose key is not its event's ``trust:incident``."""
    return (WRONG_KEY, f"message key {key!r} is not trust:incident {want!r}: the incident's events would "
                       "not stay on one partition")


def late_after_expiry(horizon_ms: int) -> tuple[str, str]:
    """The dead-letter reason of an event too old to start a state (see streams.state)."""
    return (LATE_AFTER_EXPIRY, (
        f"event time is more than the late horizon ({horizon_ms // 86_400_000} days) "
        f"before the partition's stream time and the incident has no state (expired or never "
        "seen): applying it would start a version-1 state whose facts lose to the kept ones"))


def trust_of_events_topic(topic: str) -> str | None:
    """``<prefix>.events.<ODS>`` -> ODS; None for any other topic (no publishing-trust check)."""
    _, sep, trust = topic.rpartition(".events.")
    return trust if sep and trust else None


class BatchStep:
    """Decode -> validate -> fold -> attribute -> facts for one batch; holds the worker's in-memory
    side state (watermarks, expiry index, live view) between batches."""

    def __init__(
        self,
        attributor: Attributor,
        hierarchy: Hierarchy,
        store: StateStore,
        *,
        decoder: Decoder | None = None,
        horizon_ms: int = LATE_HORIZON_MS,
        stale_ms: int | None = None,
        live: LiveView | None = None,
        trust_of_topic: Callable[[str], str | None] = trust_of_events_topic,
        native: bool | None = None,
    ) -> None:
        """``native``: run the step in the ``amb_native`` extension (streams.native; same results,
        several times faster): None = when it is built and ``decoder`` is the default, True =
        required (AmbError without it), False = never."""
        fingerprint: bytes | None = None
        if decoder is None:
            from amb.codec import default_codec

            codec = default_codec()
            fingerprint = codec.fingerprint

            def decoder(value: bytes | None, now_ms: int, topic: str, trust: str | None) -> Event | Rejection:
                return codec.decode_and_validate(value, now_ms, topic, trust)

        self.decode: Decoder = decoder
        self.attributor = attributor
        self.hierarchy = hierarchy
        self.store = store
        self.horizon_ms = horizon_ms
        self.stale_ms = 4 * horizon_ms if stale_ms is None else stale_ms
        self.live = live
        self.trust_of_topic = trust_of_topic
        self.watermarks = Watermarks()
        self.expiry = ExpiryIndex()
        self.native: NativeStep | None = None
        if native is not False:
            from streams.native import NativeStep

            self.native = NativeStep.create(self, fingerprint, required=bool(native))

    # ------------------------------------------------------------------------------------------
    def process(self, messages: Iterable[InMessage], now_ms: int) -> BatchResult:
        """One batch, in arrival order. Never raises for bad input: that becomes a dead letter.

        Written for speed (it runs once per input event): locals for everything looked up per
        event, per-topic and per-partition values cached for the batch, counters keyed by the
        event type member and converted once at the end."""
        if self.native is not None:
            return self.native.process(messages, now_ms)
        out = BatchResult()
        records: dict[bytes, IncidentRecord | None] = {}
        touched: dict[bytes, tuple[IncidentRecord, InMessage]] = {}
        store_get, wms, decode = self.store.get, self.watermarks, self.decode
        trusts: dict[str, str | None] = {}
        marks: dict[tuple[str, int], int] = {}  # this batch's watermark per source partition
        events: dict[tuple[EventType, str], int] = {}
        duplicates: dict[str, int] = {}
        dead = out.dead
        horizon = self.horizon_ms
        max_event_time = 0
        call_111 = EventType.CALL_111
        for m in messages:
            topic = m.topic
            trust = trusts.get(topic, _MISSING)
            if trust is _MISSING:
                trust = trusts[topic] = self.trust_of_topic(topic)
            ev = decode(m.value, now_ms, topic, trust)
            if isinstance(ev, Rejection):
                dead.append(DeadLetter(m, ev))
                continue
            want_key = f"{ev.trust}:{ev.incident_id}".encode()
            if m.key != want_key:
                dead.append(DeadLetter(m, wrong_key(m.key, want_key.decode())))
                continue
            et = ev.event_type
            is_call = et is call_111
            k = f"{ev.trust}:{CALL if is_call else INCIDENT}:{ev.incident_id}".encode()
            rec = records.get(k, _MISSING)
            if rec is _MISSING:
                raw = store_get(k, topic, m.partition)
                rec = records[k] = None if raw is None else decode_record(raw)
            tp = (topic, m.partition)
            wm = marks.get(tp)
            if wm is None:
                wm = marks[tp] = wms.get(topic, m.partition)
            t = ev.event_time
            if rec is None:
                if wm and t + horizon <= wm:
                    dead.append(DeadLetter(m, late_after_expiry(horizon)))
                    continue
                rec = records[k] = new_record(ev.trust, CALL if is_call else INCIDENT, ev.incident_id, m.partition)
                out.new_states += 1
            try:
                cur = rec.state
                changed = update_call(cur, ev) if isinstance(cur, Call111State) else update(cur, ev)
            except Exception as exc:  # noqa: BLE001 - one odd event must not stop the worker
                dead.append(DeadLetter(m, (REDUCER_ERROR, f"{type(exc).__name__}: {exc}"[:500])))
                continue
            if t > wm:
                marks[tp] = t
            if t > max_event_time:
                max_event_time = t
            ek = (et, ev.trust)
            events[ek] = events.get(ek, 0) + 1
            if not changed:
                duplicates[ev.trust] = duplicates.get(ev.trust, 0) + 1
            touched[k] = (rec, m)
        for (topic, partition), wm in marks.items():
            wms.advance(topic, partition, wm)
        out.max_event_time = max_event_time
        for (et, trust), n in events.items():
            out.events[(et.value, trust)] += n
        for trust, n in duplicates.items():
            out.duplicates[trust] += n
        if touched:
            self._attribute([rec for rec, _ in touched.values()], out)
            self._emit(touched, out)
        out.expired = self.expire()
        return out

    def _attribute(self, recs: list[IncidentRecord], out: BatchResult) -> None:
        """Place every record whose location or period time is new, in one attributor call."""
        todo: list[IncidentRecord] = []
        for rec in recs:
            s = rec.state
            want = (loc_key(s.location), period_time(s))
            if rec.geo is not None and rec.geo_for == want:
                continue
            rec.geo_for = want
            if s.location is None or s.location.empty:
                rec.geo = unknown_geo(GEO_NO_LOCATION)
            else:
                todo.append(rec)
        if not todo:
            return
        geos = attribute([r.state.location for r in todo], [period_time(r.state) for r in todo],
                         self.attributor, self.hierarchy)
        for rec, geo in zip(todo, geos, strict=True):
            rec.geo = geo
            out.attributed[geo.status] += 1

    def _emit(self, touched: dict[bytes, tuple[IncidentRecord, InMessage]], out: BatchResult) -> None:
        live, put, note = self.live, self.store.put, self.expiry.note
        horizon, stale = self.horizon_ms, self.stale_ms
        facts = out.facts
        no_geo = unknown_geo(GEO_NO_LOCATION)
        encode_incident, encode_call = fact_codec.encode_incident, fact_codec.encode_call
        for k, (rec, m) in touched.items():
            s = rec.state
            geo: Geo = rec.geo if rec.geo is not None else no_geo
            topic, partition = m.topic, m.partition
            if isinstance(s, IncidentState):
                fact = incident_fact(s, geo)
                value = encode_incident(fact, handover_fact(s, geo, fact))
                kind = KIND_INCIDENT
                ident = s.incident_id
                if live is not None:
                    live.observe(k, s, geo, topic, partition)
            else:
                value = encode_call(call_fact(s, geo))
                kind = KIND_CALL
                ident = s.call_id
            facts.append(FactOut(f"{s.trust}:{ident}".encode(), value, kind, s.version, topic, partition))
            exp = expires_at(s, horizon, stale)
            put(k, encode_record(rec, exp), topic, partition)
            note(k, exp, topic, partition)

    # ------------------------------------------------------------------------------------------
    def expire(self, limit: int = 10_000) -> int:
        """Drop states past their expiry in their partition's event time. Returns how many."""
        n = 0
        for key, topic, partition in self.expiry.due(self.watermarks, limit):
            raw = self.store.get(key, topic, partition)
            self.expiry.discard(key, topic, partition)
            if raw is None:
                continue
            head = read_header(raw)
            if head.expires_at > self.watermarks.get(topic, partition):  # written by another path: keep
                self.expiry.note(key, head.expires_at, topic, partition)
                continue
            self.store.delete(key, topic, partition)
            if self.live is not None:
                self.live.rows.pop(key, None)
            n += 1
        return n

    def adopt(self, rows: Iterable[tuple[bytes, bytes]], topic_of_key: Callable[[bytes], str],
              live_since_ms: int | None = None) -> int:
        """Take over restored table rows (after a rebalance): note their expiry, advance the
        watermarks to their last events and, for rows whose last event is at or after
        ``live_since_ms``, seed the live view. Returns the number of rows."""
        n = 0
        for key, value in rows:
            head = read_header(value)
            topic = topic_of_key(key)
            self.expiry.note(key, head.expires_at, topic, head.partition)
            self.watermarks.advance(topic, head.partition, head.last_event_time)
            if self.live is not None and live_since_ms is not None and head.last_event_time >= live_since_ms:
                rec = decode_record(value)
                if isinstance(rec.state, IncidentState):
                    self.live.observe(key, rec.state, rec.geo, topic, head.partition)
            n += 1
        return n

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked: drop their in-memory side state (the table keeps the rows)."""
        tps = list(partitions)
        self.expiry.forget(tps)
        self.watermarks.forget(tps)
        if self.live is not None:
            self.live.forget(tps)

    @property
    def states_held(self) -> int:
        return len(self.expiry)


def describe(result: BatchResult) -> dict[str, Any]:
    """A one-line-able summary of a batch (logs, tests)."""
    return {"events": sum(result.events.values()), "duplicates": sum(result.duplicates.values()),
            "facts": len(result.facts), "dead": len(result.dead), "new": result.new_states,
            "expired": result.expired}
