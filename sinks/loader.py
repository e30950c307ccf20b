"""Load fact rows into the store so that replays never double count and corrections move counts.

For each batch of facts (any versions, any order, repeats allowed) and each fact kind:

1. once per process and after any failed load, finish what a crash left staged (:func:`recover`);
2. keep the highest version of each incident in the batch; look up the version the store holds
   (``<kind>_facts FINAL``, by primary key); drop what is not newer (replays, stale repeats);
3. stage the signed changes (+1 per new version, -1 copy of the stored row it replaces) in
   ``<kind>_changes_staged`` under a fresh ``load_id``, each row carrying the block's row count;
4. copy the staged block into ``<kind>_changes`` (ONE insert whose materialised views update every
   rollup) and its +1 rows into ``<kind>_facts``, with tokens ``<load_id>:changes|facts``;
5. empty the staging: the commit point.

Why this is exact under any crash and any replay cut: until step 3's insert has returned nothing
was copied, so a staging with fewer rows than its count is dropped and the store is as before any
replay. Once a complete staging exists, the next load (step 1, before it reads anything) re-sends
that identical block, in the same order, with the same tokens, so every table that already has it
(changes, each rollup, facts) drops it and every table that missed it gets it; after that the
lookup sees the new versions and a replay's repeats are stale. The caller's token
(``topic:partition:first-last``) plays no part: identity comes from the load id, so batches cut
differently can never collide on a token nor apply the same change twice. ``amb db check`` shows
a staging left behind.

One loader per store: the lookup and the staging assume no one else writes these tables meanwhile.
"""

from __future__ import annotations

import operator
import threading
import types
import typing
import uuid
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from domain.facts import Call111Fact, HandoverFact, IncidentFact
from sinks.store import ROWS, Store, insert_head, quote


def _arrow_type(name: str, annotation: Any) -> pa.DataType:
    if name == "version":
        return pa.uint32()
    args = set(typing.get_args(annotation)) - {type(None)} if isinstance(annotation, types.UnionType) else {annotation}
    (base,) = args
    return {str: pa.string(), int: pa.int64(), bool: pa.bool_()}[base]


def _schema(cls: type) -> pa.Schema:
    hints = typing.get_type_hints(cls)
    return pa.schema(
        [pa.field(f.name, _arrow_type(f.name, hints[f.name]), nullable=True) for f in fields(cls)]
    )


@dataclass(frozen=True)
class FactKind:
    """One fact type and its two tables."""

    name: str
    cls: type
    facts_table: str
    changes_table: str
    schema: pa.Schema
    id_column: str = "incident_id"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)


INCIDENTS: Final = FactKind("incident", IncidentFact, "incident_facts", "incident_changes", _schema(IncidentFact))
HANDOVERS: Final = FactKind("handover", HandoverFact, "handover_facts", "handover_changes", _schema(HandoverFact))
CALLS: Final = FactKind("call_111", Call111Fact, "call_facts", "call_changes", _schema(Call111Fact), "call_id")
KINDS: Final = (INCIDENTS, HANDOVERS, CALLS)
SIGN: Final = pa.field("sign", pa.int8(), nullable=False)
_recovered: weakref.WeakSet[Any] = weakref.WeakSet()  # stores whose staging this process finished


def to_arrow(kind: FactKind, facts: Sequence[Any]) -> pa.Table:
    """Fact dataclasses -> an Arrow table with the store's column names and types. One C-level
    ``attrgetter`` per fact and a ``zip`` transpose, not a Python loop per column and row (3x)."""
    if not facts:
        return kind.schema.empty_table()
    cols = zip(*map(operator.attrgetter(*kind.columns), facts), strict=True)
    return pa.Table.from_arrays(
        [pa.array(c, type=fld.type) for c, fld in zip(cols, kind.schema, strict=True)], schema=kind.schema
    )


_MESSAGE_SCHEMA: Final = pa.schema([
    ("f", pa.int64()), ("kind", pa.string()), ("incident", pa.struct(list(INCIDENTS.schema))),
    ("handover", pa.struct(list(HANDOVERS.schema))), ("call", pa.struct(list(CALLS.schema))),
])
_REQUIRED: Final = {
    k.name: [n for n, hint in typing.get_type_hints(k.cls).items() if not isinstance(hint, types.UnionType)]
    for k in KINDS
}


def _native_spec(kind: FactKind) -> list[tuple[str, str, bool]]:
    kinds = {pa.string(): "str", pa.int64(): "int", pa.uint32(): "int", pa.bool_(): "bool"}
    required = set(_REQUIRED[kind.name])
    return [(f.name, kinds[f.type], f.name not in required) for f in kind.schema]


_SPECS: Final = [_native_spec(k) for k in KINDS]


def _native_columns(values: Sequence[bytes]) -> dict[str, pa.Table] | None:
    """The canonical messages (exactly as the worker writes them) decoded by amb_native in one
    pass; None when the extension is absent or any message is not canonical."""
    from streams.native import load

    module = load()
    if module is None or not hasattr(module, "decode_facts"):
        return None
    got = module.decode_facts(values if isinstance(values, list) else list(values), *_SPECS)
    if got is None:
        return None
    out: dict[str, pa.Table] = {}
    for kind, (rows, cols) in zip(KINDS, got, strict=True):
        arrays = []
        for f, (nulls, valid, values_buf, data) in zip(kind.schema, cols, strict=True):
            typ = pa.int64() if f.type == pa.uint32() else f.type
            validity = pa.py_buffer(valid) if nulls else None
            bufs = [validity, pa.py_buffer(values_buf)] + ([pa.py_buffer(data)] if data is not None else [])
            arrays.append(pa.Array.from_buffers(typ, rows, bufs, null_count=nulls))
        try:
            out[kind.name] = pa.Table.from_arrays(arrays, names=list(kind.schema.names)).cast(kind.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None  # e.g. a version out of UInt32's range: the slow path says so
    return out


def decode_columns(values: Sequence[bytes]) -> dict[str, pa.Table] | None:
    """A batch of ``<prefix>.incident-facts`` JSON messages (streams.fact_codec) -> one Arrow table
    per fact kind, with no Python per message: in Rust (amb_native) when every message is in the
    worker's canonical form (about 10x faster), else parsed in C++ by pyarrow.json. None unless
    EVERY message is a well-formed fact message of the current format: the caller then decodes one
    by one with ``fact_codec.decode``, which names each bad message's reason for the DLQ."""
    import io

    if not values:
        return None
    native = _native_columns(values)
    if native is not None:
        return native

    import pyarrow.json as pajson

    if any(b"\n" in v or not v.strip() for v in values):
        return None
    try:
        t = pajson.read_json(io.BytesIO(b"\n".join(values)), parse_options=pajson.ParseOptions(
            explicit_schema=_MESSAGE_SCHEMA, unexpected_field_behavior="error"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if t.num_rows != len(values) or pc.any(pc.not_equal(t.column("f"), 1)).as_py() is not False:
        return None
    kind = t.column("kind")
    is_inc, is_call = pc.equal(kind, "incident"), pc.equal(kind, "call_111")
    if not pc.all(pc.or_(is_inc, is_call)).as_py():
        return None
    out: dict[str, pa.Table] = {}
    for k, rows in ((INCIDENTS, is_inc), (HANDOVERS, is_inc), (CALLS, is_call)):
        col = t.column(k.name if k is not CALLS else "call").filter(rows)
        if k is HANDOVERS:
            col = col.filter(pc.is_valid(col))
        elif col.null_count:
            return None  # an incident message without its incident, or a call without its call
        flat = pa.Table.from_struct_array(col.combine_chunks()) if len(col) else k.schema.empty_table()
        if any(flat.column(n).null_count for n in _REQUIRED[k.name]):
            return None  # a field the dataclass requires is missing
        out[k.name] = flat.cast(k.schema)
    return out


def _key_codes(table: pa.Table, id_column: str) -> np.ndarray:
    """One int64 per row, equal exactly when (trust, id) are: each column dictionary-encoded in
    C++, then combined, so grouping is a numpy sort of integers, not of string pairs (3x)."""
    trust = pc.dictionary_encode(table.column("trust").combine_chunks())
    ids = pc.dictionary_encode(table.column(id_column).combine_chunks())
    codes = trust.indices.to_numpy().astype(np.int64) * len(ids.dictionary)
    return np.asarray(codes + ids.indices.to_numpy().astype(np.int64))


def latest_in_batch(table: pa.Table, id_column: str = "incident_id") -> pa.Table:
    """The highest version of each (trust, id) in ``table`` (ties: the last row given), in the
    order the rows were given."""
    if table.num_rows <= 1:
        return table
    n = table.num_rows
    codes = _key_codes(table, id_column)
    order = np.lexsort((np.arange(n), table.column("version").to_numpy(), codes))  # last key sorts first
    grouped = codes[order]
    last = np.ones(n, bool)
    last[:-1] = grouped[1:] != grouped[:-1]
    return table.take(pa.array(np.sort(order[last])))


@dataclass
class LoadResult:
    """What one batch did: ``received`` rows, ``applied`` new versions (of which ``replaced`` moved an
    incident already stored), ``stale`` rows ignored as not newer than the store or the batch."""

    received: int = 0
    applied: int = 0
    replaced: int = 0
    stale: int = 0

    def __iadd__(self, other: LoadResult) -> LoadResult:
        self.received += other.received
        self.applied += other.applied
        self.replaced += other.replaced
        self.stale += other.stale
        return self


def stored_versions(store: Store, kind: FactKind, batch: pa.Table) -> pa.Table:
    """The rows the store holds now for the (trust, id) pairs in ``batch`` (current version each).

    The batch's ids go to the engine as a table (``amb_rows``), which it turns into one hash set:
    all of a 100,000-message batch in one statement, where an ``Array(String)`` parameter became a
    per-row search from about 40,000 ids (14-44 s). No ``FINAL``: the loader writes only strictly
    newer versions, so the highest version read per pair is what ``FINAL`` would keep, at half the
    cost (bench/bench_sink.py). ``GLOBAL IN`` sends the set to every shard of a cluster."""
    cols = ", ".join(f"`{c}`" for c in kind.columns)
    idc = kind.id_column
    keys = batch.select(["trust", idc]).group_by(["trust", idc]).aggregate([])
    if keys.num_rows == 0:
        return kind.schema.empty_table()
    ids = keys.select([idc]).group_by([idc]).aggregate([])
    got = store.query_arrow_with(
        f"SELECT {cols} FROM {kind.facts_table} WHERE {idc} GLOBAL IN (SELECT {idc} FROM {ROWS})", ids)
    if got.num_rows == 0:
        return kind.schema.empty_table()
    got = got.select(list(kind.columns)).cast(kind.schema)
    # unmerged parts hold older versions, and an id two trusts share brings the other's rows
    return latest_in_batch(got.join(keys, keys=["trust", idc], join_type="inner").select(list(kind.columns)), idc)


def plan_changes(kind: FactKind, table: pa.Table, stored: pa.Table) -> tuple[pa.Table, LoadResult]:
    """Pure: the signed change rows (``sign`` column; +1 per new version, -1 copy of the stored
    version it replaces, new rows first) that take the store from ``stored`` to the newest
    versions in ``table``, and the counts. Rows not newer than the store or the batch are stale."""
    res = LoadResult(received=table.num_rows)
    key = ["trust", kind.id_column]
    batch = latest_in_batch(table, kind.id_column)
    if stored.num_rows:
        joined = batch.join(stored.select([*key, "version"]).rename_columns([*key, "_stored"]),
                            keys=key, join_type="left outer")
        newer = pc.or_kleene(pc.is_null(joined.column("_stored")),
                            pc.greater(joined.column("version"), joined.column("_stored")))
        new = joined.filter(newer).drop_columns(["_stored"]).select(list(kind.columns))
        old = stored.join(new.select(key), keys=key, join_type="inner").select(list(kind.columns))
    else:
        new, old = batch, stored
    res.applied = new.num_rows
    res.stale = table.num_rows - new.num_rows
    res.replaced = old.num_rows
    plus = new.append_column(SIGN, pa.array(np.ones(new.num_rows, np.int8)))
    minus = old.append_column(SIGN, pa.array(np.full(old.num_rows, -1, np.int8)))
    return pa.concat_tables([plus, minus]), res


def _staged(kind: FactKind) -> str:
    return f"{kind.changes_table}_staged"


def _copy_sql(kind: FactKind, target: str, load_id: str, token: str, only_new: bool) -> str:
    """``INSERT INTO target SELECT ... FROM <staged> WHERE load_id = ...`` in staging order, single
    threaded: the same rows in the same blocks every time, so a repeat is deduplicated."""
    cols = [*kind.columns, "sign"] if target == kind.changes_table else list(kind.columns)
    select = ", ".join(f"`{c}`" for c in cols)
    where = f"load_id = {quote(load_id)}" + (" AND sign = 1" if only_new else "")
    return (f"{insert_head(target, cols, token)}, max_threads = 1, max_insert_threads = 1 "
            f"SELECT {select} FROM {_staged(kind)} WHERE {where} ORDER BY seq")


def _apply_staged(store: Store, kind: FactKind, load_id: str) -> None:
    """Copy a staged load into the changes (and through them every rollup), then the facts. Safe to
    repeat after a crash at any point: the same block under the same tokens (from the load id)."""
    store.command(_copy_sql(kind, kind.changes_table, load_id, f"{load_id}:changes", only_new=False))
    store.command(_copy_sql(kind, kind.facts_table, load_id, f"{load_id}:facts", only_new=True))


def _commit(store: Store, kind: FactKind) -> None:
    """Empty the staging: the commit point (rows of incomplete stagings go too). One loader per
    store, so nothing else is in flight."""
    store.command(f"TRUNCATE TABLE {_staged(kind)}")


def recover(store: Store, kinds: Sequence[FactKind] = KINDS) -> int:
    """Finish every load still staged in full (a crash or a store error stopped it after staging),
    exactly as first staged, then commit. Returns the loads finished. A staging with fewer rows
    than its block was never applied (its insert failed): dropped."""
    done = 0
    for kind in kinds:
        staged = store.query(f"SELECT load_id, count() = any(rows) FROM {_staged(kind)} "
                             "GROUP BY load_id ORDER BY min(_part), load_id").rows
        for load_id, complete in staged:
            if complete:
                _apply_staged(store, kind, str(load_id))
                done += 1
        if staged:
            _commit(store, kind)
    _recovered.add(store)
    return done


def _ensure_recovered(store: Store) -> None:
    if store not in _recovered:
        recover(store)


def load_kind(store: Store, kind: FactKind, table: pa.Table, token: str) -> LoadResult:
    """Apply one batch of one fact kind; see the module docstring for the steps and guarantees.
    ``token`` names the batch in errors; identity comes from a fresh load id."""
    _ensure_recovered(store)
    return _load_recovered(store, kind, table)


def _load_recovered(store: Store, kind: FactKind, table: pa.Table) -> LoadResult:
    """:func:`load_kind` once the store's stagings are known to be finished."""
    if table.num_rows == 0:
        return LoadResult()
    if tuple(table.column_names) != kind.columns:
        table = table.select(list(kind.columns))
    table = table.cast(kind.schema)
    changes, res = plan_changes(kind, table, stored_versions(store, kind, table))
    if res.applied == 0:
        return res
    load_id = uuid.uuid4().hex
    n = changes.num_rows
    staged = changes.add_column(0, "seq", pa.array(np.arange(n, dtype=np.uint32)))
    staged = staged.add_column(0, "rows", pa.array(np.full(n, n, dtype=np.uint32)))
    staged = staged.add_column(0, "load_id", pa.array(np.full(n, load_id, dtype=object), pa.string()))
    try:
        # one chunk per column: chDB's Python() reads many small chunks at half speed
        store.insert_arrow(_staged(kind), staged.combine_chunks(), f"{load_id}:staged")
        _apply_staged(store, kind, load_id)
        _commit(store, kind)
    except BaseException:
        _recovered.discard(store)  # the next load finishes this one first
        raise
    return res


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _kinds_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(len(KINDS), thread_name_prefix="amb-load")
        return _pool


def load_facts(
    store: Store,
    token: str,
    incidents: Sequence[IncidentFact] | pa.Table = (),
    handovers: Sequence[HandoverFact] | pa.Table = (),
    calls: Sequence[Call111Fact] | pa.Table = (),
) -> dict[str, LoadResult]:
    """Load a batch of incident, handover and 111-call facts under one deduplication ``token``
    (e.g. ``amb.incident-facts:3:1200-1299``). Returns what happened per kind.

    The kinds share no table, so on a store that takes statements from several threads
    (``store.concurrent``: chDB) they load in parallel, one thread each: chDB releases the GIL
    while a statement runs, so one kind's inserts overlap another's Arrow planning and the two
    cores both work (bench/bench_sink.py: 70k -> 89k messages/s). Each kind is crash-safe on its
    own (its own staging and commit), so a failure in one leaves the others loaded or not, and the
    batch's retry finds their versions stored (stale). Every kind's thread is waited for before
    the first error is raised: no statement is still running when the caller retries."""
    tables = [(kind, rows if isinstance(rows, pa.Table) else to_arrow(kind, rows))
              for kind, rows in ((INCIDENTS, incidents), (HANDOVERS, handovers), (CALLS, calls))]
    _ensure_recovered(store)  # before any thread starts: recovery touches every kind's tables
    busy = [(kind, t) for kind, t in tables if t.num_rows]
    if len(busy) > 1 and getattr(store, "concurrent", False):
        futures = {kind.name: _kinds_pool().submit(_load_recovered, store, kind, t) for kind, t in busy}
        wait(futures.values())  # all finished: result() raises the first kind's error, in kind order
        done = {name: f.result() for name, f in futures.items()}
    else:
        done = {kind.name: _load_recovered(store, kind, t) for kind, t in busy}
    return {kind.name: done.get(kind.name, LoadResult()) for kind, _ in tables}


def check(store: Store) -> list[str]:
    """Consistency of the store: per kind, the signed changes must net to exactly one row per
    current fact, and every rollup's England total must equal the changes' net count. Returns the
    problems found (empty = consistent). A batch applied twice after a crash shows up here."""
    problems = []
    for kind in KINDS:
        pending = int(store.query(f"SELECT uniqExact(load_id) FROM {_staged(kind)}").scalar() or 0)
        if pending:
            problems.append(f"{_staged(kind)} holds {pending} interrupted load(s): the next load finishes them")
        net = int(store.query(f"SELECT sum(sign) FROM {kind.changes_table}").scalar() or 0)
        current = int(store.query(f"SELECT count() FROM {kind.facts_table} FINAL").scalar() or 0)
        if net != current:
            problems.append(f"{kind.changes_table} nets to {net} rows but {kind.facts_table} holds {current}")
    for family, measure in (("incident", "incidents + open"), ("handover", "arrivals")):
        net = int(store.query(f"SELECT sum(sign) FROM {family}_changes").scalar() or 0)
        for grain in ("hourly", "daily", "monthly"):
            table = f"{family}_rollup_{grain}"
            total = int(store.query(f"SELECT sum({measure}) FROM {table} WHERE level = 'england'").scalar() or 0)
            if total != net:
                problems.append(f"{table} counts {total} at England level but {family}_changes nets to {net}")
    return problems
