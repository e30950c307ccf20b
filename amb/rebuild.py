"""Rebuild the store from the raw archive, and reconcile the store against it.

Both start from the same recomputation: every archived event (amb.archive, checksums verified,
re-validated with the clock it was accepted with) through the batch oracle (domain.oracle: dedupe
by event id, fold, attribute, facts, latest version of each incident). No new logic: the rebuild
loads the oracle's facts with the sink's own loader (sinks.loader) into emptied tables, so the
rollups are filled by the same materialised views as in production; the reconcile compares the
store's facts and its query tables (sinks.queries, the `amb query` code path) with the oracle's.

The recomputation holds the archive's events in memory (about 150 MB for a simulated day of
England); a multi-month rebuild wants a ClickHouse-side recompute instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

import pyarrow as pa

from amb.archive import ArchivedRecord, archive_dir, list_files, replay_events
from amb.config import Settings
from amb.errors import AmbError
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


def recompute(settings: Settings, progress: bool = False, geo: Any = None) -> Recomputed:
    """The oracle over the whole archive (``geo``: an attributor+hierarchy; default the index)."""
    from tqdm import tqdm

    root = archive_dir(settings)
    files = list_files(root)
    if not files:
        raise AmbError(f"the raw archive {root} is empty: run `amb archive` first")
    if geo is None:
        from streams.geo import IndexGeo

        geo = IndexGeo.load(settings.geo_index_dir)
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
            echo: Callable[[str], None] = lambda _s: None) -> RebuildResult:
    """Recompute from the archive, empty every derived table, load the facts (sinks.loader) in
    batches under fresh deduplication tokens, then run the store's consistency check."""
    from tqdm import tqdm

    from sinks import migrate
    from sinks.loader import check, load_facts
    from sinks.store import opened

    rec = recompute(settings, progress, geo)
    rep = rec.report
    echo(f"recomputed {len(rep.incidents):,} incidents, {len(rep.handovers):,} handovers and {len(rep.calls):,} "
         f"111 calls from {rec.records:,} archived events ({rep.duplicates:,} duplicates) in {rec.files} files")
    run_id = uuid.uuid4().hex[:12]
    loaded = {"incident": 0, "handover": 0, "call_111": 0}
    with opened(settings) as store:
        migrate.migrate(store)
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
              geo: Any = None, store: Any = None, levels: Sequence[str] | None = None) -> ReconcileResult:
    """Compare the store (facts and query tables, clock-start days ``start``..``end`` in London)
    with the recompute from the archive. ``store``: an open store (default: open the configured one);
    ``levels``: compare the query tables at these levels only (default all)."""
    from sinks.queries import london_midnight_s
    from sinks.store import opened

    rec = recompute(settings, progress, geo)
    lo = None if start is None else london_midnight_s(start) * 1000
    hi = None if end is None else london_midnight_s(end + timedelta(days=1)) * 1000
    if store is None:
        with opened(settings) as s:
            diffs = compare_facts(s, rec.report, lo, hi) + compare_tables(s, rec.report, start, end, levels)
    else:
        diffs = compare_facts(store, rec.report, lo, hi) + compare_tables(store, rec.report, start, end, levels)
    return ReconcileResult(rec.records, len(rec.refused), diffs)


def format_differences(diffs: Sequence[Difference], only_differing: bool = False) -> str:
    from domain.metrics import format_table

    rows = [(d.table, d.level, d.store_rows, d.archive_rows, d.missing, d.extra, d.changed)
            for d in diffs if d.differs or not only_differing]
    return format_table(("table", "level", "store rows", "archive rows", "missing", "extra", "changed"), rows)
