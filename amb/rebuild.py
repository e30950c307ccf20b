"""Rebuild the store from the raw archive, and reconcile the store against it.

The raw archive is the store's own ``raw_events`` table (migration 0010; filled by `amb sink`,
one row per accepted event id, the message bytes as consumed). Both commands start from the same
recomputation: those events, re-validated with the clock they were accepted with, through the
batch oracle (domain.oracle: dedupe by event id, fold, attribute, facts, latest version of each
incident). No new logic: facts are loaded with the sink's own loader (sinks.loader), so the rollups
are filled by the same materialised views as in production. The Avro files of `amb archive` (a
cold export) can be the source instead (``source="files"``).

``rebuild_from`` (`amb rebuild --from DATE`) changes only the incidents with an archived event on
or after DATE (all their events are read, earlier ones included), in chunks by incident hash so
memory stays bounded, and leaves every other row alone. For each incident whose stored facts
differ from the recompute (or that the recompute no longer has, e.g. now refused):

1. retract: a -1 copy of each stored fact row into the signed changes, so every rollup loses it
   (the token names the run, chunk and rows: a rerun after a crash is dropped by every table);
2. delete that incident's rows from the changes and facts tables (a synchronous mutation), so
   the changes hold no stale pair and the facts no stale version;
3. load the recomputed facts through the loader (not stored any more, so they are new: +1).

The recomputed version is the number of distinct events, as the worker's, so the worker's next
fact for the incident still supersedes it and a replay of an older fact is still stale; and the
changes never hold two rows of one incident with the same key and version (which a
VersionedCollapsingMergeTree merge could cancel the wrong way). A run id kept in
``AMB_DATA_DIR/rebuild.journal`` until the run finishes makes a rerun after a crash reuse the same
tokens; run it with the sink stopped. A second run finds nothing to change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import pyarrow as pa

from amb.archive import ArchivedRecord, archive_dir, list_files, replay_events
from amb.config import Settings
from amb.errors import AmbError
from domain.events import Event
from domain.oracle import Report, compute

ROLLUP_FAMILIES: Final = ("incident", "handover")
GRAINS: Final = ("hourly", "daily", "monthly")
BATCH: Final = 50_000


class ReconcileError(AmbError):
    """The store differs from the recomputation (exit code 1 via the CLI)."""


@dataclass
class Recomputed:
    report: Report
    records: int
    files: int
    refused: list[tuple[ArchivedRecord, str]] = field(default_factory=list)


def _geo(settings: Settings, geo: Any) -> Any:
    if geo is None:
        from streams.geo import IndexGeo

        geo = IndexGeo.load(settings.geo_index_dir)
    return geo


RAW_COLUMNS: Final = "topic, partition, offset, kafka_ts_ms, accepted_ms, key, payload, event_id, trust, event_time_ms"


def _records(t: pa.Table) -> list[ArchivedRecord]:
    # String columns come back as Arrow utf8; key and payload are bytes (binary cast: no decoding)
    cols = [(t.column(i).cast(pa.binary()) if t.column_names[i] in ("key", "payload") else t.column(i)).to_pylist()
            for i in range(t.num_columns)]
    return [ArchivedRecord(str(tp), int(p), int(o), int(ts), int(acc), k or None, bytes(v), str(eid), str(tr), int(et))
            for tp, p, o, ts, acc, k, v, eid, tr, et in zip(*cols, strict=True)]


def store_events(settings: Settings, store: Any, where: str = "1", params: dict[str, Any] | None = None,
                 refused: list[tuple[ArchivedRecord, str]] | None = None
                 ) -> tuple[list[Event], int, list[tuple[str, str]]]:
    """The store's archived events (``raw_events FINAL`` rows matching ``where``), re-validated with
    the clock they were accepted with; refused ones go to ``refused``. Returns (events, rows read,
    the distinct (trust, incident id) of the rows read, refused ones included)."""
    from amb.archive import revalidate
    from amb.codec import Codec

    t = store.query_arrow(f"SELECT {RAW_COLUMNS}, incident_id FROM raw_events FINAL WHERE {where}", params or {})
    if t.num_rows == 0:
        return [], 0, []
    keys = sorted(set(zip(t.column("trust").to_pylist(), t.column("incident_id").to_pylist(), strict=True)))
    recs = _records(t.drop_columns(["incident_id"]))
    events = list(revalidate(recs, Codec.from_settings(settings).decode_and_validate, refused))
    return events, len(recs), [(str(a), str(b)) for a, b in keys]


def recompute(settings: Settings, progress: bool = False, geo: Any = None, source: str = "store",
              store: Any = None) -> Recomputed:
    """The oracle over the whole archive: the store's ``raw_events`` (``store``: an open store,
    default the configured one) or, with ``source="files"``, the Avro files of `amb archive`."""
    if source == "store":
        refused_rows: list[tuple[ArchivedRecord, str]] = []
        if store is None:
            from sinks.store import opened

            with opened(settings) as s:
                events, n, _ = store_events(settings, s, refused=refused_rows)
        else:
            events, n, _ = store_events(settings, store, refused=refused_rows)
        if n == 0:
            raise AmbError("the raw archive (raw_events) is empty: `amb sink` fills it (unless --no-archive)")
        return Recomputed(compute(events, _geo(settings, geo), _geo(settings, geo)), n, 0, refused_rows)
    if source != "files":
        raise AmbError(f"unknown archive source {source!r}: store or files")
    return _recompute_files(settings, progress, geo)


def _recompute_files(settings: Settings, progress: bool = False, geo: Any = None) -> Recomputed:
    """The oracle over the whole file archive (``geo``: an attributor+hierarchy; default the index)."""
    from tqdm import tqdm

    root = archive_dir(settings)
    files = list_files(root)
    if not files:
        raise AmbError(f"the raw archive {root} is empty: run `amb archive` first")
    geo = _geo(settings, geo)
    refused: list[tuple[ArchivedRecord, str]] = []
    counts = {"records": 0}
    bar = tqdm(total=len(files), unit="file", desc="reading archive", disable=not progress, leave=False)

    def on_file(_entry: Any, n: int) -> None:
        counts["records"] += n
        bar.update(1)

    from amb.codec import Codec

    try:
        events = list(replay_events(root, on_file=on_file, refused=refused,
                                    validate=Codec.from_settings(settings).decode_and_validate))
    finally:
        bar.close()
    report = compute(events, geo, geo)
    return Recomputed(report, counts["records"], len(files), refused)


def derived_tables() -> list[str]:
    """Every table the sink fills (facts, signed changes, rollups); not reference data or audit."""
    from sinks.loader import KINDS

    out = [t for k in KINDS for t in (k.changes_table, k.facts_table)]
    out += [f"{fam}_rollup_{g}" for fam in ROLLUP_FAMILIES for g in GRAINS]
    return out


@dataclass
class RebuildResult:
    records: int
    files: int
    events: int
    duplicates: int
    refused: int
    loaded: dict[str, int]
    problems: list[str]


def _chunks(rows: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


def rebuild(settings: Settings, progress: bool = False, geo: Any = None,
            echo: Callable[[str], None] = lambda _s: None, source: str = "store") -> RebuildResult:
    """Recompute from the archive, empty every derived table, load the facts (sinks.loader) in
    batches under fresh deduplication tokens, then run the store's consistency check."""
    from tqdm import tqdm

    from sinks import migrate
    from sinks.loader import check, load_facts
    from sinks.store import opened

    run_id = uuid.uuid4().hex[:12]
    loaded = {"incident": 0, "handover": 0, "call_111": 0}
    with opened(settings) as store:
        migrate.migrate(store)
        rec = recompute(settings, progress, geo, source, store)
        rep = rec.report
        echo(f"recomputed {len(rep.incidents):,} incidents, {len(rep.handovers):,} handovers and "
             f"{len(rep.calls):,} 111 calls from {rec.records:,} archived events ({rep.duplicates:,} duplicates)")
        for table in derived_tables():
            store.command(f"TRUNCATE TABLE IF EXISTS {table}")
        total = len(rep.incidents) + len(rep.handovers) + len(rep.calls)
        with tqdm(total=total, unit="fact", desc="loading store", disable=not progress) as bar:
            for kind, rows in (("incident", rep.incidents), ("handover", rep.handovers), ("call_111", rep.calls)):
                arg = {"incident": "incidents", "handover": "handovers", "call_111": "calls"}[kind]
                for i, chunk in enumerate(_chunks(rows, BATCH)):
                    args: dict[str, Any] = {arg: chunk}
                    res = load_facts(store, f"rebuild:{run_id}:{kind}:{i}", **args)
                    loaded[kind] += res[kind].applied
                    bar.update(len(chunk))
        problems = check(store)
    return RebuildResult(rec.records, rec.files, rep.events, rep.duplicates, len(rec.refused), loaded, problems)


# --- reconcile -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """One compared table: ``kind`` facts or a query table, with counts of differing rows."""

    table: str
    level: str
    store_rows: int
    archive_rows: int
    missing: int  # in the recompute, not in the store
    extra: int  # in the store, not in the recompute
    changed: int  # same key, different values

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.extra or self.changed)


def _norm(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def _diff_rows(name: str, level: str, store_rows: Sequence[tuple[Any, ...]], archive_rows: Sequence[tuple[Any, ...]],
               key_len: int) -> Difference:
    s = {tuple(_norm(v) for v in r[:key_len]): tuple(_norm(v) for v in r) for r in store_rows}
    a = {tuple(_norm(v) for v in r[:key_len]): tuple(_norm(v) for v in r) for r in archive_rows}
    missing = len(a.keys() - s.keys())
    extra = len(s.keys() - a.keys())
    changed = sum(1 for k in a.keys() & s.keys() if a[k] != s[k])
    return Difference(name, level, len(store_rows), len(archive_rows), missing, extra, changed)


def _in_range(period_ms: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or period_ms >= lo) and (hi is None or period_ms < hi)


def compare_facts(store: Any, report: Report, lo: int | None, hi: int | None) -> list[Difference]:
    """Per fact kind: the store's current rows (FINAL) against the recompute's, by (trust, id),
    restricted to facts whose period (day start) is in [lo, hi)."""
    from sinks.loader import CALLS, HANDOVERS, INCIDENTS, to_arrow

    out = []
    for kind, facts, period in ((INCIDENTS, report.incidents, "day_ms"), (HANDOVERS, report.handovers, "day_ms"),
                                (CALLS, report.calls, "day_ms")):
        cols = ", ".join(f"`{c}`" for c in kind.columns)
        got = store.query_arrow(f"SELECT {cols} FROM {kind.facts_table} FINAL")
        got = got.select(list(kind.columns)).cast(kind.schema) if got.num_rows else kind.schema.empty_table()
        want = to_arrow(kind, [f for f in facts if _in_range(getattr(f, period), lo, hi)])
        srows = [r for r in _rows(got) if _in_range(r[kind.columns.index(period)], lo, hi)]
        key = (kind.columns.index("trust"), kind.columns.index(kind.id_column))
        out.append(_diff_rows(kind.facts_table, "facts", [_keyed(r, key) for r in srows],
                              [_keyed(r, key) for r in _rows(want)], 2))
    return out


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    cols = [t.column(i).to_pylist() for i in range(t.num_columns)]
    return list(zip(*cols, strict=True)) if cols else []


def _keyed(r: tuple[Any, ...], key: tuple[int, int]) -> tuple[Any, ...]:
    return (r[key[0]], r[key[1]], *r)


def compare_tables(store: Any, report: Report, start: date | None, end: date | None,
                   levels: Sequence[str] | None = None) -> list[Difference]:
    """Every `amb query` table (metric x level, by day) from the store against the oracle's;
    ``levels`` limits the levels (default all)."""
    from sinks import queries

    out = []
    for metric in queries.METRICS:
        known = queries.HANDOVER_LEVELS if metric == "handover" else queries.LEVELS
        key_len = 3 if metric == "response" else 2
        for level in known:
            if levels is not None and level not in levels:
                continue
            q = queries.Query(metric, level, "day", None, start, end)
            out.append(_diff_rows(metric, level, queries.run(store, q), queries.oracle_table(report, q), key_len))
    return out


@dataclass
class ReconcileResult:
    records: int
    refused: int
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not any(d.differs for d in self.differences)


def reconcile(settings: Settings, start: date | None = None, end: date | None = None, progress: bool = False,
              geo: Any = None, store: Any = None, levels: Sequence[str] | None = None,
              source: str = "store") -> ReconcileResult:
    """Compare the store (facts and query tables, clock-start days ``start``..``end`` in London)
    with the recompute from the archive. ``store``: an open store (default: open the configured one);
    ``levels``: compare the query tables at these levels only (default all)."""
    from sinks.queries import london_midnight_s
    from sinks.store import opened

    lo = None if start is None else london_midnight_s(start) * 1000
    hi = None if end is None else london_midnight_s(end + timedelta(days=1)) * 1000

    def run(s: Any) -> ReconcileResult:
        rec = recompute(settings, progress, geo, source, s)
        diffs = compare_facts(s, rec.report, lo, hi) + compare_tables(s, rec.report, start, end, levels)
        return ReconcileResult(rec.records, len(rec.refused), diffs)

    if store is None:
        with opened(settings) as s:
            return run(s)
    return run(store)


# --- rebuild from a date -------------------------------------------------------------------------

CHUNK_INCIDENTS: Final = 200_000


@dataclass
class PartialRebuild:
    """What `amb rebuild --from` did: incidents in scope, and per fact kind the rows that differed
    (retracted and reloaded), were new, or were removed (the recompute no longer has them)."""

    incidents: int = 0
    events: int = 0
    refused: int = 0
    chunks: int = 0
    changed: dict[str, int] = field(default_factory=lambda: {"incident": 0, "handover": 0, "call_111": 0})
    added: dict[str, int] = field(default_factory=lambda: {"incident": 0, "handover": 0, "call_111": 0})
    removed: dict[str, int] = field(default_factory=lambda: {"incident": 0, "handover": 0, "call_111": 0})
    problems: list[str] = field(default_factory=list)

    @property
    def touched(self) -> int:
        return sum(self.changed.values()) + sum(self.added.values()) + sum(self.removed.values())


def _journal(settings: Settings) -> Any:
    return settings.data_dir / "rebuild.journal"


def _keys(t: pa.Table, id_column: str) -> list[str]:
    return [f"{a}\x00{b}" for a, b in zip(t.column("trust").to_pylist(), t.column(id_column).to_pylist(), strict=True)]


def _digest(t: pa.Table) -> str:
    import hashlib

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:24]


def _replace_kind(store: Any, kind: Any, scope: list[tuple[str, str]], new: pa.Table, token: str,
                  res: PartialRebuild) -> None:
    """Make the stored rows of the ``scope`` keys equal ``new`` (steps in the module docstring)."""
    from sinks.loader import SIGN, load_kind, stored_versions

    if not scope:
        return
    keys_t = pa.table({"trust": [k[0] for k in scope], kind.id_column: [k[1] for k in scope]})
    stored = stored_versions(store, kind, keys_t)
    new_keys, stored_keys = _keys(new, kind.id_column), _keys(stored, kind.id_column)
    want = dict(zip(new_keys, _rows(new), strict=True))
    have = dict(zip(stored_keys, _rows(stored), strict=True))
    scope_keys = set(_keys(keys_t, kind.id_column))
    stale = sorted(k for k in have if k in scope_keys and want.get(k) != have[k])
    fresh = [k for k in want if k not in have or want[k] != have[k]]
    res.changed[kind.name] += sum(1 for k in stale if k in want)
    res.removed[kind.name] += sum(1 for k in stale if k not in want)
    res.added[kind.name] += sum(1 for k in fresh if k not in have)
    if stale:
        gone = set(stale)
        idx = [i for i, k in enumerate(stored_keys) if k in gone]
        old = stored.take(pa.array(idx, pa.int64()))
        minus = old.append_column(SIGN, pa.array(np.full(old.num_rows, -1, np.int8)))
        store.insert_arrow(kind.changes_table, minus, f"{token}:{kind.name}:retract:{_digest(minus)}")
        cond = f"concat(trust, '\\0', {kind.id_column}) IN {{keys:Array(String)}}"
        for table in (kind.changes_table, kind.facts_table):
            store.command(f"ALTER TABLE {table} DELETE WHERE {cond} SETTINGS mutations_sync = 2", {"keys": stale})
    if fresh:
        load = set(fresh)
        idx = [i for i, k in enumerate(new_keys) if k in load]
        load_kind(store, kind, new.take(pa.array(idx, pa.int64())), f"{token}:{kind.name}:load")


def rebuild_from(settings: Settings, since: date, until: date | None = None, progress: bool = False,
                 geo: Any = None, store: Any = None, echo: Callable[[str], None] = lambda _s: None,
                 chunk_incidents: int = CHUNK_INCIDENTS) -> PartialRebuild:
    """Recompute every incident with an archived event on ``since``..``until`` (London days,
    inclusive; ``until`` None: to the end) and make its facts and rollups equal the recompute."""
    import json

    from tqdm import tqdm

    from sinks.loader import CALLS, HANDOVERS, INCIDENTS, check, to_arrow
    from sinks.queries import london_midnight_s
    from sinks.store import opened

    lo = london_midnight_s(since) * 1000
    hi = london_midnight_s(until + timedelta(days=1)) * 1000 if until else 2**62
    geo = _geo(settings, geo)
    journal = _journal(settings)
    run_id = uuid.uuid4().hex[:12]
    if journal.exists():  # a run that did not finish: same tokens, so nothing is applied twice
        run_id = json.loads(journal.read_text()).get("run", run_id)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"run": run_id, "from": str(since), "to": str(until or "")}))
    res = PartialRebuild()

    def run(s: Any) -> None:
        window = "event_time_ms >= {lo:Int64} AND event_time_ms < {hi:Int64}"
        p = {"lo": lo, "hi": hi}
        n = int(s.query(f"SELECT uniqExact(trust, incident_id) FROM raw_events WHERE {window}", p).scalar() or 0)
        res.incidents = n
        if n == 0:
            return
        res.chunks = max(1, -(-n // chunk_incidents))
        for c in tqdm(range(res.chunks), unit="chunk", desc="rebuilding", disable=not progress):
            pc_ = {**p, "n": res.chunks, "c": c}
            scope_sql = (f"(trust, incident_id) IN (SELECT DISTINCT trust, incident_id FROM raw_events "
                         f"WHERE {window} AND cityHash64(trust, incident_id) % {{n:UInt64}} = {{c:UInt64}})")
            refused: list[tuple[ArchivedRecord, str]] = []
            # every row read is of an incident in scope, and each has one: its keys are the scope
            events, _rows_read, scope_keys = store_events(settings, s, scope_sql, pc_, refused)
            res.events += len(events)
            res.refused += len(refused)
            rep = compute(events, geo, geo)
            token = f"rebuild:{run_id}:{c}"
            # Calls are keyed by call id; their events carry it as the incident id of the raw row.
            _replace_kind(s, INCIDENTS, scope_keys, to_arrow(INCIDENTS, rep.incidents), token, res)
            _replace_kind(s, HANDOVERS, scope_keys, to_arrow(HANDOVERS, rep.handovers), token, res)
            _replace_kind(s, CALLS, scope_keys, to_arrow(CALLS, rep.calls), token, res)
        res.problems = check(s)

    if store is None:
        with opened(settings) as s:
            from sinks import migrate

            migrate.migrate(s)
            run(s)
    else:
        run(store)
    journal.unlink(missing_ok=True)
    echo(f"rebuilt {res.incidents:,} incidents with events from {since} in {res.chunks} chunk(s)")
    return res


def format_differences(diffs: Sequence[Difference], only_differing: bool = False) -> str:
    from domain.metrics import format_table

    rows = [(d.table, d.level, d.store_rows, d.archive_rows, d.missing, d.extra, d.changed)
            for d in diffs if d.differs or not only_differing]
    return format_table(("table", "level", "store rows", "archive rows", "missing", "extra", "changed"), rows)
