"""The worker's batch step in the ``amb_native`` extension (native/src/worker.rs), driven from here.

``BatchStep.process`` (streams/pipeline.py) is the definition; this gives the same result for every
batch — the same dead letters in the same order, the same fact bytes, the same state rows, the
same watermarks, expiry and live view (tests/test_native_worker.py checks it with hypothesis) —
at several times the speed, because decoding, validating, folding and encoding happen in Rust
with no Python object per event. Python keeps what needs Python:

- the messages the native side is not sure about (another writer schema, a malformed body, an
  ``unknown`` symbol, anything not *surely valid*): decoded and judged by the codec, rejections
  kept here with their reasons, valid events handed back (``Batch.provide``);
- the table (reads before the fold, writes after it) and format-1 rows, rewritten as format 2
  for the native reader (the same state; the row written back is format 2 either way);
- geography: the locations the fold says are new go through ``domain.facts.attribute``;
- the expiry index, the watermarks and the live view, fed from what the native side returns.

Without the extension the worker runs the Python step and says so once in its log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from domain.events import TRUSTS, Location
from domain.facts import attribute
from domain.metrics import _day_periods
from domain.validation import Rejection
from streams.state import FORMAT, decode_record, encode_record, read_header

if TYPE_CHECKING:
    from streams.pipeline import BatchResult, BatchStep, InMessage

log = logging.getLogger("amb.worker")
_warned = False

KINDS: Final = ("incident", "call_111")


def load() -> Any | None:
    """The extension module, if it is built with the worker core (None otherwise)."""
    try:
        import amb_native
    except ImportError:
        return None
    return amb_native if hasattr(amb_native, "WorkerCore") else None


class NativeStep:
    """One BatchStep's native core; :meth:`process` is ``BatchStep.process``."""

    def __init__(self, step: BatchStep, module: Any, fingerprint: bytes) -> None:
        self.step = step
        self.core = module.WorkerCore(fingerprint, list(TRUSTS), step.horizon_ms, step.stale_ms, _day_periods)
        self._topic_index: dict[str, int] = {}
        self._topics: list[str] = []
        self._trusts: list[str | None] = []

    @classmethod
    def create(cls, step: BatchStep, fingerprint: bytes | None, required: bool = False) -> NativeStep | None:
        """The native step for ``step``, or None: no extension, or a custom decoder (no fingerprint)."""
        global _warned
        from amb.errors import AmbError

        module = load()
        if module is None or fingerprint is None:
            why = ("the amb_native extension is not built (make builds it; see native/README.md)" if module is None
                   else "a custom decoder is in use")
            if required:
                raise AmbError(f"the native batch step was asked for but {why}")
            if module is None and not _warned:
                _warned = True
                log.warning("%s: the worker runs its batch step in Python, several times slower", why)
            return None
        return cls(step, module, fingerprint)

    def _places(self, postcodes: list[str | None], lat: bytes, lon: bytes, easting: bytes, northing: bytes,
                times: bytes) -> list[tuple[str, ...]]:
        """domain.facts.attribute of the fold's new locations (columns), as 7-tuples."""
        step = self.step
        cols = [np.frombuffer(c, dtype=np.float64) for c in (lat, lon, easting, northing)]
        t = np.frombuffer(times, dtype=np.int64)
        places = getattr(step.attributor, "places", None)
        if places is not None and step.attributor is step.hierarchy:  # type: ignore[comparison-overlap]
            return places(postcodes, *cols, t)  # type: ignore[no-any-return]
        locs = [Location(pc, *(None if np.isnan(v) else float(v) for v in row))
                for pc, row in zip(postcodes, zip(*(c.tolist() for c in cols), strict=True), strict=True)]
        geos = attribute(locs, t.tolist(), step.attributor, step.hierarchy)
        return [(g.lsoa, g.msoa, g.lad, g.sicbl, g.icb, g.region, g.status) for g in geos]

    def _topic(self, topic: str) -> int:
        i = self._topic_index.get(topic)
        if i is None:
            i = self._topic_index[topic] = len(self._topics)
            self._topics.append(topic)
            self._trusts.append(self.step.trust_of_topic(topic))
        return i

    def process(self, messages: Iterable[InMessage], now_ms: int) -> BatchResult:
        from streams import pipeline as pl

        step = self.step
        out = pl.BatchResult()
        msgs = messages if isinstance(messages, list) else list(messages)
        index = self._topic_index
        for t in {m.topic for m in msgs} - index.keys():
            self._topic(t)
        tix = [index[m.topic] for m in msgs]
        partitions = [m.partition for m in msgs]
        topics, trusts = self._topics, self._trusts
        batch, need = self.core.decode([m.value for m in msgs], [m.key for m in msgs], tix, partitions, trusts,
                                       now_ms)
        rejections: dict[int, Rejection] = {}
        for i in need:
            m = msgs[i]
            ev = step.decode(m.value, now_ms, m.topic, trusts[tix[i]])
            if isinstance(ev, Rejection):
                rejections[i] = ev
                batch.reject(i)
            else:
                batch.provide(i, ev)
        keys = batch.state_keys()
        get = step.store.get
        rows: list[bytes | None] = []
        for key, ti, p in keys:
            raw = get(key, topics[ti], p)
            if raw is not None and raw[0] != FORMAT:  # format 1: the same state, as the native side reads it
                raw = encode_record(decode_record(raw), read_header(raw).expires_at)
            rows.append(raw)
        wms = step.watermarks
        marks_in = {tp: wms.get(topics[tp[0]], tp[1]) for tp in set(zip(tix, partitions, strict=True))}
        todo, marks = batch.fold(step.horizon_ms, rows, marks_in)
        for (ti, p), wm in marks.items():
            wms.advance(topics[ti], p, wm)
        places = self._places(*todo) if todo[0] else []
        if places:
            out.attributed.update(p[6] for p in places)
        written, facts, live_rows, dead, counts, dups, new_states, max_event_time = batch.emit(self.core, places)
        put, note = step.store.put, step.expiry.note
        for ri, row, expires, ti, p in written:
            key = keys[ri][0]
            topic = topics[ti]
            put(key, row, topic, p)
            note(key, expires, topic, p)
        live = step.live
        if live is not None:
            observe = live.observe_fields
            for ri, trust, period, clocked, disposition, site, arrived, handover, icb, ti, p in live_rows:
                observe(keys[ri][0], trust, icb, period, clocked, disposition, site, arrived, handover, topics[ti], p)
        fact_out = out.facts
        for key, value, kind, version, ti, p in facts:
            fact_out.append(pl.FactOut(key, value, KINDS[kind], version, topics[ti], p))
        for i, code, want in dead:
            m = msgs[i]
            if code is None:
                reason: Any = rejections[i]
            elif code == pl.WRONG_KEY:
                reason = pl.wrong_key(m.key, want)
            else:
                reason = pl.late_after_expiry(step.horizon_ms)
            out.dead.append(pl.DeadLetter(m, reason))
        out.events.update(counts)
        out.duplicates.update(dups)
        out.new_states = new_states
        out.max_event_time = max_event_time
        out.expired = step.expire()
        return out
