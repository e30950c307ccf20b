"""Load fact rows into the store so that replays never double count and corrections move counts.

For each batch of facts (any versions, any order, repeats allowed) and each fact kind:

1. keep the highest version of each incident in the batch;
2. look up the version the store holds now (``<kind>_facts FINAL``, sorted by identity);
3. drop what is not newer than the stored version (replays, stale repeats);
4. insert into ``<kind>_changes`` a +1 row per new version and a -1 copy of the stored row it
   replaces, in ONE insert whose materialised views update every rollup (so the pair moves the
   incident between cells atomically per rollup);
5. insert the new versions into ``<kind>_facts`` LAST.

Both inserts carry a deduplication token derived from the caller's (``topic:partition:first-last``
offsets). Retrying a failed batch with the same token is safe: until step 5 succeeds the lookup
returns what it returned before, so step 4 rebuilds the identical block and every table that
already has it drops it; after step 5, step 3 finds nothing left to do.

One loader per store: the lookup assumes no one else writes these tables meanwhile.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from domain.facts import Call111Fact, HandoverFact, IncidentFact
from sinks.store import Store


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


def to_arrow(kind: FactKind, facts: Sequence[Any]) -> pa.Table:
    """Fact dataclasses -> an Arrow table with the store's column names and types."""
    cols = [[getattr(f, name) for f in facts] for name in kind.columns]
    return pa.Table.from_arrays(
        [pa.array(c, type=fld.type) for c, fld in zip(cols, kind.schema, strict=True)], schema=kind.schema
    )


def latest_in_batch(table: pa.Table, id_column: str = "incident_id") -> pa.Table:
    """The highest version of each (trust, id) in ``table`` (ties: the last row given)."""
    if table.num_rows <= 1:
        return table
    n = table.num_rows
    t = table.append_column("_row", pa.array(range(n), pa.int64()))
    t = t.sort_by([("trust", "ascending"), (id_column, "ascending"),
                   ("version", "descending"), ("_row", "descending")])
    trust, iid = t.column("trust"), t.column(id_column)
    first = pc.or_(
        pc.not_equal(trust.slice(1), trust.slice(0, n - 1)),
        pc.not_equal(iid.slice(1), iid.slice(0, n - 1)),
    )
    mask = pa.concat_arrays([pa.array([True]), *pc.fill_null(first, True).chunks])
    return t.filter(mask).drop_columns(["_row"])


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
    """The rows the store holds now for the incidents in ``batch`` (current version each)."""
    # Two single-column sets, not one set of (trust, incident_id) tuples: ClickHouse turns an
    # Array(Tuple) parameter on the right of IN into a per-row search (22 s for 50k keys against
    # 50k rows), while Array(String) becomes a hash set over the primary key. Ids shared by two
    # trusts may fetch a few extra rows; the joins below match exact pairs.
    trusts = sorted(set(batch.column("trust").to_pylist()))
    cols = ", ".join(f"`{c}`" for c in kind.columns)
    sql = (f"SELECT {cols} FROM {kind.facts_table} FINAL "
           f"WHERE trust IN {{trusts:Array(String)}} AND {kind.id_column} IN {{ids:Array(String)}}")
    got = store.query_arrow(sql, {"trusts": trusts, "ids": batch.column(kind.id_column).to_pylist()})
    if got.num_rows == 0:
        return kind.schema.empty_table()
    return got.select(list(kind.columns)).cast(kind.schema)


def load_kind(store: Store, kind: FactKind, table: pa.Table, token: str) -> LoadResult:
    """Apply one batch of one fact kind; see the module docstring for the steps and guarantees."""
    res = LoadResult(received=table.num_rows)
    if table.num_rows == 0:
        return res
    if tuple(table.column_names) != kind.columns:
        table = table.select(list(kind.columns))
    table = table.cast(kind.schema)
    key = ["trust", kind.id_column]
    batch = latest_in_batch(table, kind.id_column)
    stored = stored_versions(store, kind, batch)
    joined = batch.join(
        stored.select([*key, "version"]).rename_columns([*key, "_stored"]), keys=key, join_type="left outer",
    )
    newer = pc.or_kleene(pc.is_null(joined.column("_stored")),
                        pc.greater(joined.column("version"), joined.column("_stored")))
    new = joined.filter(newer).drop_columns(["_stored"]).select(list(kind.columns))
    res.applied = new.num_rows
    res.stale = table.num_rows - new.num_rows
    if new.num_rows == 0:
        return res
    old = stored.join(new.select(key), keys=key, join_type="inner")
    old = old.select(list(kind.columns))
    res.replaced = old.num_rows
    plus = new.append_column(SIGN, pa.array([1] * new.num_rows, pa.int8()))
    minus = old.append_column(SIGN, pa.array([-1] * old.num_rows, pa.int8()))
    # one chunk per column: chDB's Python() reads many small chunks at half speed
    changes = pa.concat_tables([plus, minus]).combine_chunks()
    store.insert_arrow(kind.changes_table, changes, f"{token}:{kind.name}:changes")
    store.insert_arrow(kind.facts_table, new.combine_chunks(), f"{token}:{kind.name}:facts")
    return res


def load_facts(
    store: Store,
    token: str,
    incidents: Sequence[IncidentFact] | pa.Table = (),
    handovers: Sequence[HandoverFact] | pa.Table = (),
    calls: Sequence[Call111Fact] | pa.Table = (),
) -> dict[str, LoadResult]:
    """Load a batch of incident, handover and 111-call facts under one deduplication ``token``
    (e.g. ``amb.incident-facts:3:1200-1299``). Returns what happened per kind."""
    out = {}
    for kind, rows in ((INCIDENTS, incidents), (HANDOVERS, handovers), (CALLS, calls)):
        table = rows if isinstance(rows, pa.Table) else to_arrow(kind, rows)
        out[kind.name] = load_kind(store, kind, table, token)
    return out


def check(store: Store) -> list[str]:
    """Consistency of the store: per kind, the signed changes must net to exactly one row per
    current fact, and every rollup's England total must equal the changes' net count. Returns the
    problems found (empty = consistent). A batch applied twice after a crash shows up here."""
    problems = []
    for kind in KINDS:
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
