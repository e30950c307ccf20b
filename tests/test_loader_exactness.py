"""Exactly-once loading (sinks/loader.py) under crashes at any point and replays cut into any batches.

Pure part: the change planner, applied batch after batch with any cut, nets to the latest facts.
Real store (chDB): a load interrupted at any write (before it, after it, or after the changes table
and only some materialised views got the block), then a replay of everything from the first
message cut into different batches, leaves every table exactly equal to a clean load of the same
facts. Examples run side by side in one store: each gets its own trust codes (so its own rows in
the facts, the changes and the trust-level rollups), and the store-wide check ties the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_oracle import EXAMPLE
from test_store import stream_facts

from sinks import migrate as mig
from sinks.loader import (
    CALLS,
    HANDOVERS,
    INCIDENTS,
    check,
    decode_columns,
    latest_in_batch,
    load_facts,
    plan_changes,
    to_arrow,
)
from sinks.store import ChdbStore, Result

INC, HAND = stream_facts(EXAMPLE)
# the worker re-sends current versions (a restart, a replay): repeats and stale copies in the stream
STREAM: list[tuple[str, Any]] = [("i", f) for f in INC] + [("h", f) for f in HAND]
STREAM += [("i", INC[i]) for i in (3, 0, 11, 7)] + [("h", HAND[0])]
MVS = {"incident_changes": [f"incident_rollup_{g}_mv" for g in ("hourly", "daily", "monthly")],
       "handover_changes": [f"handover_rollup_{g}_mv" for g in ("hourly", "daily", "monthly")]}


def cuts(n: int) -> st.SearchStrategy[list[int]]:
    """Batch boundaries: sorted distinct cut points inside 1..n-1 (at most three batches)."""
    return st.lists(st.integers(1, n - 1), max_size=2, unique=True).map(sorted)


def batches(items: Sequence[Any], cut: list[int]) -> Iterator[Sequence[Any]]:
    bounds = [0, *cut, len(items)]
    for a, b in itertools.pairwise(bounds):
        yield items[a:b]


# --- pure: the planner ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(cut=cuts(len(INC)), order=st.permutations(range(len(INC))))
def test_planned_changes_net_to_the_latest_facts_under_any_cut_and_order(cut: list[int], order: list[int]) -> None:
    table = to_arrow(INCIDENTS, [INC[i] for i in order])
    stored = INCIDENTS.schema.empty_table()
    net: dict[tuple[Any, ...], int] = {}
    for part in batches(range(table.num_rows), cut):
        changes, res = plan_changes(INCIDENTS, table.take(list(part)), stored)
        for row in changes.to_pylist():
            sign = row.pop("sign")
            net[tuple(row.values())] = net.get(tuple(row.values()), 0) + sign
        assert res.applied + res.stale == len(part) and res.replaced <= res.applied
        new = changes.filter(pc.equal(changes.column("sign"), 1)).drop_columns(["sign"])
        stored = latest_in_batch(pa.concat_tables([stored, new]))
    latest = latest_in_batch(table)
    assert {k: v for k, v in net.items() if v} == {tuple(r.values()): 1 for r in latest.to_pylist()}
    assert sorted(map(str, stored.to_pylist())) == sorted(map(str, latest.to_pylist()))


# --- columnar decoding of the sink's messages ----------------------------------------------------------


def test_columnar_decoding_equals_decoding_one_message_at_a_time() -> None:
    from streams import fact_codec

    values = [fact_codec.encode_incident(f, h) for f, h in itertools.zip_longest(INC, HAND)]
    values += [fact_codec.encode_call(c) for c in stream_facts_calls()]
    got = decode_columns(values)
    assert got is not None
    one = [fact_codec.decode(v) for v in values]
    assert got[INCIDENTS.name] == to_arrow(INCIDENTS, [m.incident for m in one if m.incident])
    assert got[HANDOVERS.name] == to_arrow(HANDOVERS, [m.handover for m in one if m.handover])
    assert got[CALLS.name] == to_arrow(CALLS, [m.call for m in one if m.call])
    assert got[CALLS.name].num_rows > 0


@pytest.mark.parametrize("bad", [
    b"not json", b"", b'{"f": 2, "kind": "incident"}', b'{"f": 1, "kind": "nope"}',
    b'{"f": 1, "kind": "incident", "incident": null}', b'{"f": 1, "kind": "incident", "incident": {"trust": "RX6"}}',
    b'{"f": 1, "kind": "call_111", "call": {"trust": "RX6", "call_id": 3}}', b'{"f": 1, "kind": "incident", "x": 1}',
    b'{"f": 1,\n"kind": "incident"}',
])
def test_any_bad_message_sends_the_batch_to_the_one_by_one_decoder(bad: bytes) -> None:
    """The one-by-one decoder gives each bad message its reason (DLQ); the columnar path never guesses."""
    from streams import fact_codec

    good = [fact_codec.encode_incident(INC[0], None)]
    assert decode_columns(good) is not None
    assert decode_columns([*good, bad, *good]) is None


def stream_facts_calls() -> list[Any]:
    """The 111 call facts of the worked example."""
    from strategies import FAKE_ATTRIBUTOR, FAKE_HIERARCHY

    from domain.facts import build_facts
    from domain.incident import apply_any, state_key

    states: dict[Any, Any] = {}
    calls: list[Any] = []
    for e in EXAMPLE:
        new = apply_any(states.get(state_key(e)), e)
        states[state_key(e)] = new
        calls += build_facts([new], FAKE_ATTRIBUTOR, FAKE_HIERARCHY).calls
    return calls


# --- real store: crashes and replays ----------------------------------------------------------------


class Crash(Exception):
    """The process died here."""


class CrashingStore:
    """The real store, dying at its ``at``-th write: ``before`` it runs, ``after`` it ran, or
    ``partial``: a changes insert reached the table and only some materialised views (one is
    detached for it), as when the process dies while the views are being fed."""

    backend = "chdb"

    def __init__(self, inner: ChdbStore, at: int | None = None, mode: str = "after", skip_mv: int = 0) -> None:
        self.inner, self.at, self.mode, self.skip_mv, self.writes = inner, at, mode, skip_mv, 0

    def query(self, sql: str, params: Any = None) -> Result:
        return self.inner.query(sql, params)

    def query_arrow(self, sql: str, params: Any = None) -> pa.Table:
        return self.inner.query_arrow(sql, params)

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Any = None) -> pa.Table:
        return self.inner.query_arrow_with(sql, rows, params)

    def command(self, sql: str, params: Any = None) -> None:
        self._write(sql, lambda: self.inner.command(sql, params))

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        self._write(f"INSERT INTO {table} ", lambda: self.inner.insert_arrow(table, data, dedup_token))
        return int(data.num_rows)

    def _write(self, sql: str, run: Any) -> None:
        self.writes += 1
        if self.writes != self.at:
            run()
            return
        if self.mode == "before":
            raise Crash(sql[:60])
        table = sql.split()[2] if sql.startswith("INSERT INTO") else ""
        if self.mode == "partial" and table in MVS:
            mv = MVS[table][self.skip_mv % 3]
            self.inner.command(f"DETACH TABLE {mv}")
            try:
                run()
            finally:
                self.inner.command(f"ATTACH TABLE {mv}")
        else:
            run()
        raise Crash(sql[:60])

    def close(self) -> None: ...

    def __enter__(self) -> CrashingStore:
        return self

    def __exit__(self, *exc: object) -> None: ...


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(Path(tmp_path_factory.mktemp("exact")) / "chdb")
    mig.migrate(s)
    load_facts(s, "reference", *facts_for("ref"))  # a clean load: what every example must equal
    yield s
    s.close()


def facts_for(tag: str, stream: Sequence[tuple[str, Any]] = STREAM) -> tuple[list[Any], list[Any]]:
    inc = [dataclasses.replace(f, trust=f"{tag}{f.trust}") for k, f in stream if k == "i"]
    hand = [dataclasses.replace(f, trust=f"{tag}{f.trust}") for k, f in stream if k == "h"]
    return inc, hand


def load_stream(store: Any, tag: str, cut: list[int]) -> None:
    for i, part in enumerate(batches(STREAM, cut)):
        load_facts(store, f"{tag}:{i}", *facts_for(tag, part))


def snapshot(store: ChdbStore, tag: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's content for one example's trusts (trust codes without the tag), netted."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    p = {"p": tag}
    for kind in (INCIDENTS, HANDOVERS):
        cols = ", ".join(f"`{c}`" for c in kind.columns)
        plain = f"substring(trust, {len(tag) + 1}) AS t, " + cols.replace("`trust`, ", "")
        out[kind.facts_table] = store.query(
            f"SELECT {plain} FROM {kind.facts_table} FINAL WHERE startsWith(trust, {{p:String}}) "
            f"ORDER BY ALL", p).rows
        out[kind.changes_table] = store.query(
            f"SELECT {plain}, sum(sign) AS n FROM {kind.changes_table} WHERE startsWith(trust, {{p:String}}) "
            f"GROUP BY ALL HAVING n != 0 ORDER BY ALL", p).rows
        family = kind.name
        for grain in ("hourly", "daily", "monthly"):
            table = f"{family}_rollup_{grain}"
            names = [str(r[0]) for r in store.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
                "ORDER BY position", {"t": table}).rows]
            keys = [c for c in names if c in ("level", "code", "period", "category", "site")]
            sums = [c for c in names if c not in keys]
            out[table] = store.query(
                f"SELECT substring(code, {len(tag) + 1}), {', '.join(k for k in keys if k != 'code')}, "
                f"{', '.join(f'sum({c})' for c in sums)} FROM {table} "
                f"WHERE level = 'trust' AND startsWith(code, {{p:String}}) GROUP BY ALL "
                f"HAVING {' OR '.join(f'sum({c}) != 0' for c in sums)} ORDER BY ALL", p).rows
    return out


@pytest.fixture(scope="module")
def reference(store: ChdbStore) -> dict[str, list[tuple[Any, ...]]]:
    ref = snapshot(store, "ref")
    assert len(ref["incident_facts"]) == len({(f.trust, f.incident_id) for f in INC}) and ref["handover_facts"]
    assert all(ref[t] for t in ("incident_rollup_daily", "handover_rollup_monthly"))
    return ref


_examples = itertools.count()


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=cuts(len(STREAM)), replay=cuts(len(STREAM)), at=st.integers(1, 12),
       mode=st.sampled_from(["before", "after", "partial"]), skip_mv=st.integers(0, 2))
@example(first=[], replay=[5, 20], at=2, mode="partial", skip_mv=1)  # staged; changes + 2 of 3 views
@example(first=[10], replay=[3], at=3, mode="after", skip_mv=0)  # changes in, facts not
@example(first=[12, 20], replay=[], at=1, mode="after", skip_mv=0)  # staged only
def test_a_crash_anywhere_then_a_replay_cut_differently_equals_a_clean_load(
    store: ChdbStore, reference: dict[str, Any], first: list[int], replay: list[int], at: int, mode: str,
    skip_mv: int,
) -> None:
    tag = f"x{next(_examples)}"
    dying = CrashingStore(store, at, mode, skip_mv)
    with contextlib.suppress(Crash):
        load_stream(dying, tag, first)
    load_stream(CrashingStore(store), tag, replay)  # a new process: replays from the first message
    assert snapshot(store, tag) == reference
    assert check(store) == []


def test_a_store_error_mid_load_is_finished_by_the_next_load_in_the_same_process(store: ChdbStore) -> None:
    """The sink retries a failed batch in-process: the retry first finishes what was staged."""
    tag = "err"
    dying = CrashingStore(store, 2, "partial", 2)  # staged, then the changes copy fails half-way
    with pytest.raises(Crash):
        load_stream(dying, tag, [])
    assert any("interrupted" in p for p in check(store))
    load_stream(dying, tag, [7])  # the same store object, cut differently
    assert snapshot(store, tag) == snapshot(store, "ref")
    assert check(store) == []


def test_the_lookup_returns_the_current_row_of_each_pair_asked_and_nothing_else(store: ChdbStore) -> None:
    """stored_versions reads without FINAL and by id alone: unmerged older versions and another
    trust's row under the same id come back from the engine and must not reach the plan."""
    import sinks.loader as loader

    def moved(f: Any, trust: str, version: int) -> Any:
        return dataclasses.replace(f, trust=trust, version=version)

    load_facts(store, "pairs:1", [moved(f, t, f.version) for f in INC for t in ("SLA", "SLB")])
    load_facts(store, "pairs:2", [moved(f, "SLA", f.version + 1) for f in INC])  # SLA: two versions stored
    rows = store.query("SELECT count(), (SELECT count() FROM incident_facts FINAL) FROM incident_facts").rows[0]
    assert rows[0] > rows[1]  # older versions still unmerged
    asked = [moved(f, "SLA" if i % 2 else "SLB", 99) for i, f in enumerate(INC)]
    got = loader.stored_versions(store, INCIDENTS, to_arrow(INCIDENTS, asked))
    final = store.query_arrow("SELECT * FROM incident_facts FINAL").select(list(INCIDENTS.columns))
    pairs = {(f.trust, f.incident_id) for f in asked}
    want = [r for r in final.cast(INCIDENTS.schema).to_pylist() if (r["trust"], r["incident_id"]) in pairs]
    key = [("trust", "ascending"), ("incident_id", "ascending")]
    assert got.sort_by(key).to_pylist() == sorted(want, key=lambda r: (r["trust"], r["incident_id"]))
    assert len(want) == len(pairs) == got.num_rows
    latest = {f.incident_id: max(g.version for g in INC if g.incident_id == f.incident_id) for f in INC}
    assert all(r["version"] == latest[r["incident_id"]] + (r["trust"] == "SLA") for r in got.to_pylist())
    load_facts(store, "pairs:3", asked)  # each -1 copies the current row, once
    assert check(store) == []
