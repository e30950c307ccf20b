"""`amb serve`: the analyst service over the store, with scoping, disclosure control,
pseudonymisation and an audit row for every query.

Surfaces (all on one port, ``AMB_SERVE_PORT``):

- ``GET /v1/catalogue``: the metrics and views the caller may use, and its scope;
- ``GET /v1/metrics/{metric}``: the ``amb query`` tables (sinks/queries.py) at any level and
  period, scoped and disclosure-controlled, as JSON or CSV;
- ``GET /v1/incidents``: incident-level rows (a trust its own; an ICB its geography's,
  pseudonymised; others only when configured);
- ``GET /v1/audit``: the audit log (admin identities);
- ``/`` (GET ``?query=`` or POST): the subset of ClickHouse's HTTP interface clickhouse-connect
  (and curl) use, running one guarded SELECT over the caller's permitted analyst views;
- ``GET /openapi.json``, ``GET /metrics`` (Prometheus, ``amb_serve_*``), ``GET /ping``.

How the SQL endpoint keeps its promises: the text goes through ``domain.access.check_sql``
(single read-only SELECT over permitted views, nothing else); each view it names is replaced by
a snapshot of that view AFTER disclosure control and scoping (suppressed cells are NULL), which
chDB reads through its ``Python()`` table function; the engine is given the guard's own rendering
of the query, with ``readonly = 2`` and limits, and asked for the caller's output format, whose
bytes are passed through. So the answer is exactly what ClickHouse would send for that query over
those (protected) tables, in Native, RowBinaryWithNamesAndTypes, JSON, TSV...

Process layout. chDB: one process may open a chDB data directory at a time, so ``amb serve``
OWNS the store while it runs (it holds the store's lock, ``<dir>/amb.lock``): ``amb sink``,
``amb query`` and ``amb db`` cannot open it meanwhile. So the one owner does both jobs:
``amb serve --with-sink`` runs the fact sink (sinks.sink.FactSink, :class:`InProcessSink`) on a
thread, writing through :meth:`Service.writer`; ``amb query --url`` and ``amb audit --url`` ask
the service. With a ClickHouse server (``CLICKHOUSE_URL``) nothing is locked: ``amb sink`` runs
as its own process, the service reads the server (parameters bound server-side) and evaluates the
SQL endpoint over an in-memory chDB, and notices others' writes by probing the server's parts.

Speed: a table depends only on the data, so protected tables, view snapshots and rendered
bodies are cached per store version (:class:`Cache`); a load moves the version, and for up to
``max_stale`` seconds the previous answer is served while one thread rebuilds it. A repeated
request costs authentication, a lookup and an audit row (bench/bench_serve.py).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import re
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import pyarrow as pa
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from amb import __version__
from amb.config import SINK_BATCH_MESSAGES
from amb.errors import AmbError
from amb.identities import Geography, Registry, RegistryFile, load_geography
from domain import access
from domain.access import Identity, Scope, SQLRefused, check_sql
from domain.disclosure import SPECS, SUPPRESSED, TableSpec, Value, suppress
from domain.metrics import MONTH, PERIOD_KINDS, UNKNOWN
from domain.pseudonym import pseudonymise
from sinks import queries
from sinks.store import ChdbStore, Result, Store, StoreError, bind_value, chdb_rows_sql, quote

log = logging.getLogger("amb.serve")
R = TypeVar("R")

SURFACES: Final = ("catalogue", "metric", "incidents", "sql", "audit", "cli", "web")
BREAKDOWNS: Final = ("imd_decile",)
IMD_VIEWS: Final = {"dispositions": "dispositions_imd_month", "response": "response_imd_month",
                    "handover": "handover_imd_month"}
INCIDENT_LIMIT: Final = 10_000
MAX_OFFSET: Final = 1_000_000_000
SQL_SETTINGS: Final = ("readonly = 2, max_execution_time = 60, max_result_rows = 1000000, "
                       "result_overflow_mode = 'throw', max_memory_usage = 4000000000")
DISCLOSURE_NOTE: Final = (
    "Counts of 1-7 are shown as '*' (NULL over SQL); rates, means, centiles and hours lost are withheld "
    "when based on fewer than 8 records or on a suppressed count; further cells are suppressed so that no "
    "suppressed cell can be recovered from a row or column total. A trust sees its own trust-level row as is.")
METRIC_HELP: Final = {
    "dispositions": "Incidents (A7) with hear_and_treat, see_and_treat, conveyed_ed, conveyed_elsewhere; open = no disposition yet.",
    "response": "Response times by category: count, mean_s, p90_s (clock start to first arrival, exact 90th centile).",
    "handover": "Hospital handover: handovers, mean_min, p90_min, over_15/30/45/60 (strictly more), hours_lost.",
}
HANDSHAKE: Final = frozenset({
    "SELECT name , value , readonly FROM system.settings LIMIT 10000",
})
"""Statements clickhouse-connect sends while connecting that touch system tables; answered by a
fixed trusted query (server settings are not data)."""


class ServeError(AmbError):
    """A request the service answers with an HTTP error (``status``) and a one-line message."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class Refused(ServeError):
    status = 403


class Unauthenticated(ServeError):
    status = 401


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """What a catalogue or incidents query returns: rows with suppressed cells as ``*``."""

    columns: tuple[str, ...]
    rows: list[tuple[Value, ...]]
    suppressed: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def dicts(self) -> list[dict[str, Value]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps({**self.meta, "columns": list(self.columns), "rows": self.dicts(),
                               "suppressed_cells": self.suppressed}, default=str)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(self.columns)
            w.writerows(["" if v is None else v for v in r] for r in self.rows)
            return buf.getvalue()
        if fmt == "table":
            plain = [tuple(v for v in r) for r in self.rows]
            return queries.render(self.columns, plain, "table")
        raise ServeError(f"unknown format {fmt!r}; expected json, csv or table")


# --- audit --------------------------------------------------------------------------------------

AUDIT_COLUMNS: Final = ("at", "identity", "kind", "surface", "query", "params", "rows", "refused", "reason",
                        "status", "duration_ms", "remote", "request_id")


@dataclass(frozen=True)
class AuditRow:
    identity: str
    kind: str
    surface: str
    query: str
    params: Mapping[str, Any]
    rows: int
    refused: bool
    reason: str = ""
    status: int = 200
    duration_ms: int = 0
    remote: str = ""
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def values_sql(self) -> str:
        at = dt.datetime.fromtimestamp(self.at_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        vals = [_lit(at), _lit(self.identity), _lit(self.kind), _lit(self.surface), _lit(self.query[:100_000]),
                _lit(json.dumps(dict(self.params), default=str, sort_keys=True)), str(max(0, self.rows)),
                "1" if self.refused else "0", _lit(self.reason[:2000]), str(self.status),
                str(max(0, min(self.duration_ms, 2**32 - 1))), _lit(self.remote), _lit(self.request_id)]
        return "(" + ", ".join(vals) + ")"


def _lit(text: str) -> str:
    """A string literal for any caller-supplied text: lone surrogates escaped, NUL as \\0 (what
    an analyst sends is audited as sent, and must never break the audit insert)."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return quote(clean).replace("\x00", "\\0")


class AuditLog:
    """Appends audit rows to ``audit_log``: batched (one INSERT per ``interval`` seconds, as the
    store likes) by a background thread, or at once when ``interval`` is 0. Rows that fail to
    insert stay queued and are retried; past ``max_pending`` the service refuses queries rather
    than serve unaudited."""

    def __init__(self, store: Store, interval: float = 1.0, max_pending: int = 10_000,
                 on_flush: Callable[[int, bool], None] | None = None) -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[AuditRow] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._on_flush = on_flush
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, name="amb-audit", daemon=True)
            self._thread.start()

    def healthy(self) -> bool:
        with self._lock:
            return len(self._pending) < self.max_pending

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def write(self, row: AuditRow) -> None:
        with self._lock:
            self._pending.append(row)
        if self.interval <= 0:
            self.flush()

    def flush(self) -> int:
        """Insert what is queued now; returns the rows written (0 on failure: they stay queued)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                self._insert(batch)
            except StoreError as exc:
                if len(batch) > 1 and self._isolate(batch):
                    return len(batch)
                log.error("audit insert failed (%d rows kept for retry): %s", len(batch), exc)
                with self._lock:
                    self._pending[:0] = batch
                if self._on_flush:
                    self._on_flush(0, False)
                return 0
            if self._on_flush:
                self._on_flush(len(batch), True)
            return len(batch)

    def _insert(self, batch: Sequence[AuditRow]) -> None:
        self.store.command(f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) VALUES "
                           + ", ".join(r.values_sql() for r in batch))

    def _isolate(self, batch: Sequence[AuditRow]) -> bool:
        """After a failed batch: insert row by row; a row the store refuses is written with its
        query text replaced by its size and digest (so it is still on record). False if the
        store refuses even that (it is down: keep everything for retry)."""
        import hashlib

        for row in batch:
            try:
                self._insert([row])
            except StoreError:
                digest = hashlib.sha256(row.query.encode("utf-8", "backslashreplace")).hexdigest()
                stand_in = replace(row, query=f"<unwritable query text: {len(row.query)} chars, sha256 {digest}>",
                                   params={}, reason=row.reason.encode("ascii", "backslashreplace").decode())
                try:
                    self._insert([stand_in])
                except StoreError:
                    return False
                log.error("audit row %s stored with a stand-in for its query text", row.request_id)
        if self._on_flush:
            self._on_flush(len(batch), True)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()


# --- Prometheus ---------------------------------------------------------------------------------


class ServeMetrics:
    """Every amb_serve_* metric, declared once."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("amb_serve_requests", "Analyst requests by surface, identity kind and outcome "
                                "(ok, refused, bad_request, unauthenticated, error).",
                                ["surface", "kind", "outcome"], registry=r)
        self.seconds = Histogram("amb_serve_request_seconds", "Time to answer a request, by surface.", ["surface"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.rows = Counter("amb_serve_rows_returned", "Rows returned to analysts, by surface.", ["surface"], registry=r)
        self.suppressed = Counter("amb_serve_cells_suppressed", "Cells suppressed or withheld by disclosure "
                                  "control in answers, by surface.", ["surface"], registry=r)
        self.audit_rows = Counter("amb_serve_audit_rows", "Audit rows written to audit_log.", registry=r)
        self.audit_errors = Counter("amb_serve_audit_errors", "Failed audit_log inserts (rows kept and retried).",
                                    registry=r)
        self.audit_pending = Gauge("amb_serve_audit_pending", "Audit rows queued, not yet in audit_log.", registry=r)
        self.snapshot_seconds = Histogram("amb_serve_view_snapshot_seconds", "Time to read and protect one view "
                                          "snapshot for the SQL endpoint.", registry=r)

    def on_flush(self, n: int, ok: bool) -> None:
        if ok:
            self.audit_rows.inc(n)
        else:
            self.audit_errors.inc()


# --- concurrency ------------------------------------------------------------------------------------


class ThreadLocalChdb:
    """The store for a multi-threaded service: each thread queries on its own chDB connection to
    the store's directory (ChdbStore keeps one per thread; chDB allows several connections to the
    one directory a process has open).

    Why: one chDB connection shared by threads mixes up concurrent queries' parameters (seen as
    "Substitution `level` is not set" and as answers to another thread's parameters under 10
    concurrent clients in bench/bench_serve.py). Closing this only stops the service's use; the
    wrapped store keeps the directory lock and closes the connections."""

    backend = "chdb"
    concurrent = True

    def __init__(self, store: ChdbStore) -> None:
        self.store = store
        self.path = store.path
        self._lock = threading.Lock()
        self._closed = False

    def _conn(self) -> Any:
        if self._closed:
            raise StoreError(f"chDB store {self.path} is closed")
        return self.store._thread_conn()

    def _run(self, sql: str, params: Mapping[str, Any] | None, fmt: str) -> Any:
        bound = {k: bind_value(v) for k, v in (params or {}).items()}
        try:
            return self._conn().query(sql, fmt, params=bound)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{_engine_message(exc)} [in: {sql.strip()[:160]}]") from None

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(sql, params, "CSV")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        table = self._run(sql, params, "ArrowTable")
        if not isinstance(table, pa.Table):
            return Result([], [])
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return Result(list(table.column_names), list(zip(*cols, strict=True)) if cols else [])

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        table = self._run(sql, params, "ArrowTable")
        if not isinstance(table, pa.Table):
            raise StoreError(f"no result set from: {sql.strip()[:160]}")
        return table

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        amb_rows = rows.combine_chunks()  # noqa: F841  (found by name by chDB's Python())
        return self.query_arrow(chdb_rows_sql(sql), params)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        with self._lock:
            return self.store.insert_arrow(table, data, dedup_token)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> ThreadLocalChdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialStore:
    """A store used by one thread at a time (a ClickHouse server client: clickhouse-connect
    refuses concurrent queries in one session)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.backend = store.backend
        self.concurrent = False  # one statement at a time: nothing to gain from threads
        self._lock = threading.Lock()

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self.store.command(sql, params)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        with self._lock:
            return self.store.query(sql, params)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        with self._lock:
            return self.store.query_arrow(sql, params)

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        with self._lock:
            return self.store.query_arrow_with(sql, rows, params)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        with self._lock:
            return self.store.insert_arrow(table, data, dedup_token)

    def close(self) -> None:
        """The caller closes the wrapped store."""

    def __enter__(self) -> SerialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def concurrent_store(store: Store) -> ThreadLocalChdb | SerialStore:
    """The store as many threads may use it."""
    return ThreadLocalChdb(store) if isinstance(store, ChdbStore) else SerialStore(store)


# --- the SQL evaluator --------------------------------------------------------------------------


def _call(conn: Any, sql: str, fmt: str, params: Mapping[str, str]) -> Any:
    return conn.query(sql, fmt, params=dict(params))


def _nullable(ch_type: str) -> str:
    if ch_type.startswith("Nullable("):
        return ch_type
    if ch_type.startswith("LowCardinality("):
        return "LowCardinality(" + _nullable(ch_type[len("LowCardinality("):-1]) + ")"
    return f"Nullable({ch_type})"


class Evaluator:
    """Runs guarded SQL over in-process Arrow snapshots with chDB. On a chDB store it is a second
    connection to the store's directory (chDB binds one directory per process); on a server, an
    in-memory chDB. Each call binds its snapshots under fresh names in a private globals dict, so
    concurrent calls never see each other's tables (chDB's Python() looks names up by frame)."""

    def __init__(self, store: Store) -> None:
        self.target = str(store.path) if isinstance(store, ChdbStore | ThreadLocalChdb) else ":memory:"
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # one connection per thread: a shared one mixes up concurrent parameters
            import chdb

            conn = chdb.connect(self.target)
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def run(self, sql: str, fmt: str, tables: Mapping[str, pa.Table], params: Mapping[str, str]) -> tuple[bytes, int]:
        """(output bytes in ``fmt``, result rows). ``sql`` names each table as Python(<key>)."""
        scope: dict[str, Any] = {"__builtins__": builtins, **tables}
        fn = types.FunctionType(_call.__code__, scope)
        res = fn(self._conn(), sql, fmt, params)
        return bytes(res.bytes()), int(res.rows_read())

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


@dataclass(frozen=True)
class ViewSnapshot:
    """A view after disclosure control: its columns, ClickHouse types and protected rows (hidden
    cells are None), for the SQL endpoint."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    schema: pa.Schema
    rows: tuple[tuple[Value, ...], ...]
    suppressed: int
    taken: float
    table: pa.Table | None = None
    """The protected rows as Arrow (nullable columns), what the engine reads."""


@dataclass(frozen=True)
class ProtectedTable:
    """A catalogue table after disclosure control over ALL its codes (what every caller with the
    same exemption sees, before scoping): cached per store version so a request only filters."""

    columns: tuple[str, ...]
    rows: list[tuple[Value, ...]]
    hidden: list[int]
    """Suppressed cells per row."""


class Cache:
    """Results that depend only on the store's contents, kept until the data change.

    ``version`` moves on :meth:`invalidate` (the in-process sink's writes, or a server probe
    that saw new parts). An entry of an older version is still served for up to ``max_stale``
    seconds after the data changed, while ONE background thread rebuilds it (stale while
    revalidate): a sink loading every second would otherwise turn every request into a cold
    query. Past ``max_stale`` (or with ``max_stale=0``) a request builds it itself; concurrent
    misses on one key build it once (striped locks). Bounded by total rows (LRU)."""

    def __init__(self, max_rows: int = 2_000_000, max_entry_rows: int = 500_000, max_stale: float = 2.0) -> None:
        from collections import OrderedDict

        self.max_rows, self.max_entry_rows, self.max_stale = max_rows, max_entry_rows, max_stale
        self.version = 0
        self._changed: dict[int, float] = {}  # version -> when the data moved on to it
        self._entries: OrderedDict[Any, tuple[int, int, Any]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        # a lock stripe per nesting depth: a build (depth d) may take a depth d+1 lock, never the
        # other way round, so builds that read other cached tables cannot deadlock
        self._stripes = [[threading.Lock() for _ in range(64)] for _ in range(4)]
        self._refreshing: set[Any] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self.hits = self.stale_hits = self.misses = 0

    def invalidate(self) -> None:
        with self._lock:
            self.version += 1
            self._changed[self.version] = time.monotonic()
            if len(self._changed) > 4096:
                for v in sorted(self._changed)[:2048]:
                    del self._changed[v]

    def _lookup(self, key: Any, stale_ok: bool) -> tuple[str, Any]:
        """('hit' | 'stale' | 'miss', value)."""
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return "miss", None
            self._entries.move_to_end(key)
            if e[0] == self.version:
                self.hits += 1
                return "hit", e[2]
            changed = self._changed.get(e[0] + 1)
            if stale_ok and changed is not None and time.monotonic() - changed <= self.max_stale:
                self.stale_hits += 1
                return "stale", e[2]
            return "miss", None

    def _store(self, key: Any, version: int, value: Any, n: int) -> None:
        with self._lock:
            old = self._entries.get(key)
            if n > self.max_entry_rows or (old is not None and old[0] > version):
                return
            if old is not None:
                self._rows -= old[1]
            self._entries[key] = (version, n, value)
            self._entries.move_to_end(key)
            self._rows += n
            while self._rows > self.max_rows and self._entries:
                _k, (_v, gone, _x) = self._entries.popitem(last=False)
                self._rows -= gone

    def _build(self, key: Any, build: Callable[[], R], size: Callable[[R], int]) -> R:
        with self._lock:
            version = self.version
            self.misses += 1
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1  # what a build reads through the cache must be current
        try:
            value = build()
        finally:
            self._local.depth = depth
        self._store(key, version, value, size(value))
        return value

    def get(self, key: Any, build: Callable[[], R], size: Callable[[R], int]) -> R:
        stale_ok = self.max_stale > 0 and not getattr(self._local, "depth", 0)
        state, value = self._lookup(key, stale_ok)
        if state == "hit":
            return cast(R, value)
        if state == "stale":
            self._refresh(key, build, size)
            return cast(R, value)
        with self._stripe(key):
            state, value = self._lookup(key, False)
            if state == "hit":
                return cast(R, value)
            return self._build(key, build, size)

    def _stripe(self, key: Any) -> threading.Lock:
        return self._stripes[min(getattr(self._local, "depth", 0), 3)][hash(key) % 64]

    def _refresh(self, key: Any, build: Callable[[], R], size: Callable[[R], int]) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="amb-serve-refresh")
            pool = self._pool

        def run() -> None:
            try:
                with self._stripe(key):
                    if self._lookup(key, False)[0] != "hit":
                        self._build(key, build, size)
            except Exception as exc:  # noqa: BLE001  (the next request builds it and reports the error)
                log.warning("refreshing a cached table failed: %s", exc)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        pool.submit(run)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# --- the service core (blocking; the HTTP layer runs it in a thread pool) ---------------------------


def _date_param(params: Mapping[str, str], name: str) -> date | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = dt.datetime.strptime(str(raw), "%Y-%m-%d").date()
    except ValueError:
        raise ServeError(f"{name}={raw!r} is not a date YYYY-MM-DD") from None
    if not date(1990, 1, 1) <= value <= date(2199, 12, 31):
        raise ServeError(f"{name}={raw} is outside 1990-01-01..2199-12-31")
    return value


@dataclass(frozen=True)
class MetricRequest:
    """A parsed ``/v1/metrics/{metric}`` (or ``amb query``) request."""

    query: queries.Query
    breakdown: str | None = None

    @classmethod
    def parse(cls, metric: str, params: Mapping[str, str]) -> MetricRequest:
        unknown = set(params) - {"level", "code", "from", "to", "by", "breakdown", "format"}
        if unknown:
            raise ServeError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        breakdown = params.get("breakdown") or None
        if breakdown is not None and breakdown not in BREAKDOWNS:
            raise ServeError(f"unknown breakdown {breakdown!r}; expected one of {', '.join(BREAKDOWNS)}")
        try:
            q = queries.Query(metric, params.get("level") or "england", params.get("by") or MONTH,
                              params.get("code") or None, _date_param(params, "from"), _date_param(params, "to"))
        except queries.QueryError as exc:
            raise ServeError(str(exc), 404 if "unknown metric" in str(exc) else 400) from None
        if breakdown and (q.level != "england" or q.by != MONTH or q.code):
            raise ServeError("breakdown=imd_decile is England-wide by month: use level=england, by=month, no code")
        return cls(q, breakdown)

    def params(self) -> dict[str, Any]:
        q = self.query
        return {"level": q.level, "code": q.code, "by": q.by, "from": q.start, "to": q.end,
                "breakdown": self.breakdown}


class Service:
    """Scoping, disclosure control, pseudonymisation and audit around one store.

    ``registry`` may be a live :class:`RegistryFile` (re-read on change) or a fixed Registry.

    Protected tables and view snapshots are cached until the data change (:class:`Cache`). With
    a chDB store this process is the only writer (it holds the store's lock): whatever writes
    through :meth:`writer` (the in-process sink of ``amb serve --with-sink``) invalidates them.
    On a server others write, so every ``probe_interval`` seconds a request asks the server for
    its parts (``STORE_PROBE``) and a change invalidates."""

    def __init__(self, store: Store, registry: RegistryFile | Registry, geography: Geography, key: bytes, *,
                 audit_interval: float = 1.0, probe_interval: float = 1.0,
                 metrics: ServeMetrics | None = None) -> None:
        self.store: Store = concurrent_store(store)
        self._registry = registry
        self.geography = geography
        self.key = key
        self.metrics = metrics or ServeMetrics()
        self.audit = AuditLog(self.store, audit_interval, on_flush=self.metrics.on_flush)
        self.cache = Cache()
        self.probe_interval = probe_interval if store.backend != "chdb" else None
        self._probed: tuple[float, Any] = (-1e18, None)
        self._probe_lock = threading.Lock()
        self._evaluator: Evaluator | None = None
        self._view_meta: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {}

    # freshness ------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """The store's data changed: drop every cached table."""
        self.cache.invalidate()

    def writer(self) -> Store:
        """The store for an in-process writer (the sink): its writes invalidate the caches."""
        return InvalidatingStore(self.store, self.invalidate)

    def _probe(self) -> None:
        """On a server, invalidate when its parts changed (at most once per ``probe_interval``)."""
        if self.probe_interval is None or time.monotonic() - self._probed[0] < self.probe_interval:
            return
        if not self._probe_lock.acquire(blocking=False):
            return  # another request is probing
        try:
            seen = self.store.query(STORE_PROBE).rows
            if self._probed[1] is not None and seen != self._probed[1]:
                self.invalidate()
            self._probed = (time.monotonic(), seen)
        except StoreError as exc:
            log.warning("store probe failed (%s): dropping cached tables", exc)
            self.invalidate()
        finally:
            self._probe_lock.release()

    # identities -----------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self._registry.get() if isinstance(self._registry, RegistryFile) else self._registry

    def authenticate(self, token: str | None, user: str | None = None) -> Identity:
        if not token:
            raise Unauthenticated("authentication required: send Authorization: Bearer <token> "
                                  "(or the ClickHouse user/key of your identity)")
        ident = self.registry.authenticate(token)
        if ident is None or (user not in (None, "", "default", ident.id, ident.login)):
            raise Unauthenticated("unknown, revoked or mismatched token")
        return ident

    def scope(self, ident: Identity) -> Scope:
        try:
            return access.scope(ident, self.geography.area(ident))
        except AmbError as exc:
            raise Refused(str(exc)) from None

    # audit ------------------------------------------------------------------------------------
    def _audited(self, ident: Identity | None, surface: str, query: str, params: Mapping[str, Any],
                 remote: str, run: Callable[[], tuple[R, int, int]], who: str | None = None) -> R:
        """Run ``run`` -> (result, rows, suppressed cells); audit and count it whatever happens."""
        if not self.audit.healthy():
            raise ServeError("the audit log cannot be written: queries are refused until it can", 503)
        t0 = time.perf_counter()
        self._probe()
        who, kind = (ident.id, ident.kind) if ident else (who or "anonymous", "operator" if who else "")
        outcome, status, reason, rows = "ok", 200, "", 0
        try:
            result, rows, suppressed = run()
            self.metrics.rows.labels(surface).inc(rows)
            self.metrics.suppressed.labels(surface).inc(suppressed)
            return result
        except (ServeError, SQLRefused) as exc:
            status = exc.status if isinstance(exc, ServeError) else 403
            outcome = {401: "unauthenticated", 403: "refused"}.get(status, "bad_request")
            reason = str(exc)
            raise
        except Exception as exc:
            outcome, status, reason = "error", 500, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            ms = int((time.perf_counter() - t0) * 1000)
            self.audit.write(AuditRow(who, kind, surface, query, params, rows, outcome != "ok", reason, status,
                                      ms, remote))
            self.metrics.audit_pending.set(self.audit.pending())
            self.metrics.requests.labels(surface, kind or "none", outcome).inc()
            self.metrics.seconds.labels(surface).observe(time.perf_counter() - t0)

    def audit_refusal(self, surface: str, query: str, reason: str, status: int, remote: str = "") -> None:
        """Audit a request refused before it had an identity (authentication failures)."""
        self.audit.write(AuditRow("anonymous", "", surface, query, {}, 0, True, reason, status, 0, remote))
        self.metrics.requests.labels(surface, "none", "unauthenticated" if status == 401 else "refused").inc()

    # catalogue --------------------------------------------------------------------------------
    def views_meta(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]:
        """{view: (columns, ClickHouse types, comment)} read once from the store."""
        if not self._view_meta:
            comments = {str(r[0]): str(r[1]) for r in self.store.query(
                "SELECT name, comment FROM system.tables WHERE database = currentDatabase()").rows}
            meta = {}
            for view in SPECS:
                if view in queries.METRICS:  # tables built by sinks/queries.py, not views
                    continue
                res = self.store.query(f"DESCRIBE TABLE {view}")
                meta[view] = (tuple(str(r[0]) for r in res.rows), tuple(str(r[1]) for r in res.rows),
                              comments.get(view, ""))
            self._view_meta = meta
        return self._view_meta

    def catalogue(self, ident: Identity, remote: str = "") -> dict[str, Any]:
        def run() -> tuple[dict[str, Any], int, int]:
            sc = self.scope(ident)
            views = self.views_meta()
            inc = sc.incidents
            body = {
                "identity": {"id": ident.id, "kind": ident.kind, "name": ident.name or self.geography.names.get(ident.id, "")},
                "scope": {
                    "coarse_levels": list(access.COARSE_LEVELS),
                    "fine_levels": list(access.FINE_LEVELS),
                    "fine_codes": "all" if sc.everywhere else {lvl: len(sc.area.at(lvl)) for lvl in access.FINE_LEVELS},
                    "incidents": None if inc is None else {
                        "filter": inc.column or "all", "pseudonymised": inc.pseudonymised},
                    "disclosure_control": DISCLOSURE_NOTE,
                },
                "metrics": [
                    {"name": m, "path": f"/v1/metrics/{m}", "columns": list(queries.TABLES[m]),
                     "levels": list(queries.HANDOVER_LEVELS if m == "handover" else queries.LEVELS),
                     "periods": list(PERIOD_KINDS), "breakdowns": list(BREAKDOWNS), "description": METRIC_HELP[m]}
                    for m in queries.METRICS
                ],
                "views": [
                    {"name": v, "comment": views[v][2],
                     "columns": [{"name": c, "type": t} for c, t in zip(views[v][0], views[v][1], strict=True)]}
                    for v in sorted(sc.views) if v in views
                ],
                "sql": {"endpoint": "/", "protocol": "ClickHouse HTTP (clickhouse-connect, curl)",
                        "user": ident.login, "formats": sorted(access.ALLOWED_FORMATS)},
            }
            return body, len(queries.METRICS) + len(sc.views), 0
        return self._audited(ident, "catalogue", "catalogue", {}, remote, run)

    # metrics ------------------------------------------------------------------------------------
    def metric(self, ident: Identity, metric: str, params: Mapping[str, str], remote: str = "",
               surface: str = "metric", protect: bool = True) -> Table:
        """A catalogue table as ``ident`` sees it. ``protect=False`` is the local operator's view
        (`amb query` without --identity: whoever can open the store can read it whole), unscoped
        and unsuppressed but audited all the same."""
        def run() -> tuple[Table, int, int]:
            req = MetricRequest.parse(metric, params)
            table = self.metric_table(ident, req, protect)
            return table, len(table.rows), table.suppressed
        return self._audited(ident if protect else None, surface, f"metric:{metric}", dict(params), remote, run,
                             who=None if protect else OPERATOR)

    def metric_body(self, ident: Identity, metric: str, params: Mapping[str, str], fmt: str,
                    remote: str = "") -> bytes:
        """``GET /v1/metrics/{metric}``: :meth:`metric` rendered as ``fmt`` (json, csv), the
        rendering cached with the table (a repeated request is a lookup and an audit row)."""
        def run() -> tuple[bytes, int, int]:
            req = MetricRequest.parse(metric, params)

            def build() -> tuple[bytes, int, int]:
                t = self.metric_table(ident, req)
                return t.render(fmt).encode(), len(t.rows), t.suppressed

            return self.cache.get(("body", req.query, req.breakdown, ident.id, fmt), build, lambda b: b[1])
        return self._audited(ident, "metric", f"metric:{metric}", dict(params), remote, run)

    def metric_table(self, ident: Identity, req: MetricRequest, protect: bool = True) -> Table:
        """The scoped, disclosure-controlled table (no audit: :meth:`metric` wraps it)."""
        sc = self.scope(ident) if protect else access.scope(Identity(access.NATIONAL, "operator"), access.EVERYWHERE)
        q = req.query
        if q.code is not None and not sc.allows(q.level, q.code):
            raise Refused(f"{ident.id} may not see {q.level} {q.code}: fine levels are shown inside your own area")
        meta = {"metric": q.metric, "identity": ident.id, **{k: v for k, v in req.params().items()},
                "disclosure": DISCLOSURE_NOTE}
        if not protect:
            meta["protected"] = False
            if req.breakdown:
                return self._imd_table(sc, q, meta, protect=False)
            return Table(tuple(q.columns), list(queries.run(self.store, q)), 0, meta)
        if req.breakdown:
            return self._imd_table(sc, q, meta)
        full = queries.Query(q.metric, q.level, q.by, None, q.start, q.end)  # the COMPLETE table first
        own = ident.code if ident.kind == access.TRUST and q.level == "trust" else None
        base = self.cache.get(("metric", full, own), lambda: self._protected(full, sc),
                              lambda t: len(t.rows))
        rows = base.rows
        if sc.everywhere or q.level in access.COARSE_LEVELS:
            keep = range(len(rows)) if q.code is None else [i for i, r in enumerate(rows) if r[0] == q.code]
        else:
            mine = sc.area.at(q.level)
            keep = [i for i, r in enumerate(rows) if r[0] in mine and (q.code is None or r[0] == q.code)]
        if isinstance(keep, range):
            return Table(base.columns, rows, sum(base.hidden), meta)
        return Table(base.columns, [rows[i] for i in keep], sum(base.hidden[i] for i in keep), meta)

    def _protected(self, q: queries.Query, sc: Scope) -> ProtectedTable:
        """Disclosure control over the whole table (only ``sc``'s exemption matters here)."""
        rows = queries.run(self.store, q)
        spec = SPECS[q.metric]
        if q.level == "england":
            spec = replace(spec, groups=None)  # its rows are the published totals themselves
        columns = tuple(q.columns)
        exempt = [sc.exempt(q.level, str(r[0])) for r in rows]
        xcols, xrows, xspec = self.with_parents(columns, rows, spec, lambda r: (q.level, str(r[0])))
        out = suppress(xcols, xrows, xspec, exempt)
        width = len(columns)
        hidden = [0] * len(rows)
        for i, _j in out.hidden:
            hidden[i] += 1
        return ProtectedTable(columns, [tuple(r[:width]) for r in out.rows], hidden)

    def with_parents(self, columns: tuple[str, ...], rows: Sequence[Sequence[Value]], spec: TableSpec,
                     where: Callable[[Sequence[Value]], tuple[str, str]],
                     ) -> tuple[tuple[str, ...], list[tuple[Value, ...]], TableSpec]:
        """The table with a ``parent_<level>`` column per coarser area (``where(row)`` gives the
        row's (level, code)), and the spec with a nested relation per parent: the areas of one
        parent add up to its figure in the coarser table."""
        if spec.groups is None:
            return columns, [tuple(r) for r in rows], spec
        ups = ("msoa", "lad", "sicbl", "icb", "region")
        levels = {where(r)[0] for r in rows}
        wanted = [u for u in ups if any(lvl in ups[: ups.index(u)] or lvl == "lsoa" for lvl in levels)]
        if not wanted:
            return columns, [tuple(r) for r in rows], spec
        out_rows = []
        for r in rows:
            level, code = where(r)
            mine = self.geography.parents.get(level, {}).get(code)
            if mine is None and code == UNKNOWN:
                mine = {u: UNKNOWN for u in ups}  # unplaced incidents are 'unknown' at every level
            out_rows.append((*r, *((mine or {}).get(u) for u in wanted)))
        extra = tuple(f"parent_{u}" for u in wanted)
        nested = tuple((*spec.groups, e) for e in extra)
        return (*columns, *extra), out_rows, replace(spec, nested=spec.nested + nested)

    def _imd_table(self, sc: Scope, q: queries.Query, meta: dict[str, Any], protect: bool = True) -> Table:
        view = IMD_VIEWS[q.metric]
        where: list[str] = []
        params: dict[str, Any] = {}
        if q.start:
            where.append("month >= {lo:Date}")
            params["lo"] = q.start.replace(day=1)
        if q.end:
            where.append("month <= {hi:Date}")
            params["hi"] = q.end
        sql = f"SELECT * FROM {view}" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ALL"
        if not protect:
            res = self.store.query(sql, params)
            return Table(tuple(res.columns), list(res.rows), 0, {**meta, "view": view})

        def build() -> Table:
            res = self.store.query(sql, params)
            out = suppress(res.columns, res.rows, SPECS[view])
            return Table(tuple(res.columns), list(out.rows), len(out.hidden))

        t = self.cache.get(("imd", sql, tuple(sorted(params.items()))), build, lambda t: len(t.rows))
        return Table(t.columns, t.rows, t.suppressed, {**meta, "view": view})

    # incidents ----------------------------------------------------------------------------------
    def incidents(self, ident: Identity, params: Mapping[str, str], remote: str = "") -> Table:
        def run() -> tuple[Table, int, int]:
            table = self._incidents(ident, params)
            return table, len(table.rows), 0
        return self._audited(ident, "incidents", "incidents", dict(params), remote, run)

    def _incidents(self, ident: Identity, params: Mapping[str, str]) -> Table:
        unknown = set(params) - {"from", "to", "limit", "offset", "format"}
        if unknown:
            raise ServeError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        sc = self.scope(ident)
        acc = sc.incidents
        if acc is None:
            raise Refused(f"{ident.id} may not read incident-level rows (only the producing trust, an ICB for "
                          "its own geography, or identities configured with incidents = true)")
        try:
            limit = int(params.get("limit") or 1000)
            offset = int(params.get("offset") or 0)
        except ValueError:
            raise ServeError("limit and offset must be integers") from None
        if not 1 <= limit <= INCIDENT_LIMIT or not 0 <= offset <= MAX_OFFSET:
            raise ServeError(f"limit must be 1-{INCIDENT_LIMIT} and offset 0-{MAX_OFFSET}")
        start, end = _date_param(params, "from"), _date_param(params, "to")
        where: list[str] = []
        args: dict[str, Any] = {}
        if acc.column is not None:
            where.append(f"{acc.column} IN {{scope:Array(String)}}")
            args["scope"] = sorted(acc.values)
        if start:
            where.append("period_ms >= {lo:Int64}")
            args["lo"] = queries.london_midnight_s(start) * 1000
        if end:
            where.append("period_ms < {hi:Int64}")
            args["hi"] = queries.london_midnight_s(end + dt.timedelta(days=1)) * 1000
        cols = ("trust", "incident_id", "version", "clock_start_ms", "period_ms", "category", "source", "disposition",
                "open", "conveyed", "complete", "response_ms", "destination_site", "site", "handover_duration_ms",
                "lsoa", "msoa", "lad", "sicbl", "icb", "region", "geo_status", "first_event_ms", "last_event_ms")
        sql = (f"SELECT {', '.join(cols)} FROM incident_facts FINAL"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY period_ms, trust, incident_id LIMIT {limit} OFFSET {offset}")
        res = self.store.query(sql, args)
        meta = {"identity": ident.id, "pseudonymised": acc.pseudonymised, "limit": limit, "offset": offset,
                "from": start, "to": end}
        if not acc.pseudonymised:
            return Table(tuple(res.columns), res.rows, 0, meta)
        pcols, prows = pseudonymise(self.key, res.columns, res.rows)
        return Table(pcols, prows, 0, meta)

    # audit log ------------------------------------------------------------------------------------
    def audit_log(self, ident: Identity, params: Mapping[str, str], remote: str = "") -> Table:
        def run() -> tuple[Table, int, int]:
            if ident.kind != access.ADMIN:
                raise Refused("only admin identities may read the audit log")
            unknown = set(params) - {"identity", "limit", "format"}
            if unknown:
                raise ServeError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
            try:
                limit = int(params.get("limit") or 100)
            except ValueError:
                raise ServeError("limit must be an integer") from None
            table = read_audit(self.store, params.get("identity") or None, max(1, min(limit, 100_000)))
            return table, len(table.rows), 0
        self.audit.flush()
        return self._audited(ident, "audit", "audit", dict(params), remote, run)

    # SQL --------------------------------------------------------------------------------------------
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.store)
        return self._evaluator

    def snapshot(self, view: str) -> ViewSnapshot:
        """The whole view after disclosure control (cached until the data change)."""
        return self.cache.get(("view", view), lambda: self._snapshot(view), lambda v: len(v.rows))

    def _snapshot(self, view: str) -> ViewSnapshot:
        t0 = time.perf_counter()
        columns, ch_types, _comment = self.views_meta()[view]
        table = self.store.query_arrow(f"SELECT * FROM {view}")
        rows = [tuple(r) for r in zip(*(table.column(i).to_pylist() for i in range(table.num_columns)),
                                      strict=True)] if table.num_columns else []
        spec = SPECS[view]
        cols = tuple(table.column_names)
        if spec.geo is not None:
            level_col, code_col = spec.geo
            ci = cols.index(code_col)
            li = cols.index(level_col) if level_col else None
            fixed = str(spec.level)

            def where(r: Sequence[Value]) -> tuple[str, str]:
                return (str(r[li]) if li is not None else fixed, str(r[ci]))

            xcols, xrows, xspec = self.with_parents(cols, rows, spec, where)
        else:
            xcols, xrows, xspec = cols, rows, spec
        out = suppress(xcols, xrows, xspec)
        protected = tuple(tuple(r[: len(cols)]) for r in out.masked(None))
        schema = pa.schema([f.with_nullable(True) for f in table.schema])
        arrays = [pa.array([r[j] for r in protected], type=schema.field(j).type) for j in range(len(cols))]
        snap = ViewSnapshot(view, cols, ch_types, table.schema, protected, len(out.hidden), time.monotonic(),
                            pa.Table.from_arrays(arrays, schema=schema))
        self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)
        return snap

    def _scoped_arrow(self, snap: ViewSnapshot, sc: Scope) -> pa.Table:
        """The protected view cut to what ``sc`` may see (cached per view and identity)."""
        whole = snap.table
        assert whole is not None
        spec: TableSpec = SPECS[snap.name]
        if spec.geo is None or sc.everywhere:
            return whole
        level_col, code_col = spec.geo

        def build() -> pa.Table:
            ci = snap.columns.index(code_col)
            li = snap.columns.index(level_col) if level_col else None
            fixed = str(spec.level)
            mask = [sc.allows(str(r[li]) if li is not None else fixed, str(r[ci])) for r in snap.rows]
            return whole.filter(pa.array(mask, type=pa.bool_()))

        return self.cache.get(("scoped", snap.name, snap.taken, sc.identity.id), build, lambda t: t.num_rows)

    def sql(self, ident: Identity, text: str, default_format: str | None, params: Mapping[str, str],
            remote: str = "") -> tuple[bytes, str, int]:
        """Run one guarded SELECT; returns (body, format, rows)."""
        def run() -> tuple[tuple[bytes, str, int], int, int]:
            sc = self.scope(ident)
            fmt_default = default_format or "TabSeparated"
            hs = _handshake(text)
            if hs is not None:
                fmt = hs or fmt_default
                body, n = self.evaluator().run(
                    "SELECT name, value, toUInt8(readonly) AS readonly FROM system.settings LIMIT 10000", fmt, {}, {})
                return (body, fmt, n), n, 0
            checked = check_sql(text, sc.views)
            fmt = checked.format or fmt_default
            if fmt not in access.ALLOWED_FORMATS:
                raise SQLRefused(f"format {fmt} is not allowed", access.UNKNOWN_FORMAT)
            missing = checked.params - set(params)
            if missing:
                raise EngineError(f"Code: 456. DB::Exception: Substitution `{sorted(missing)[0]}` is not set "
                                  "(send it as param_<name>). (UNKNOWN_QUERY_PARAMETER)")
            tables: dict[str, pa.Table] = {}
            subs: dict[str, str] = {}
            hidden = 0
            for view in sorted(checked.views):
                snap = self.snapshot(view)
                name = f"amb_view_{uuid.uuid4().hex}"
                tables[name] = self._scoped_arrow(snap, sc)
                spec = SPECS[view]
                protected = set(spec.counts) | set(spec.derived)
                casts = ", ".join(
                    f"CAST(`{c}` AS {_nullable(t) if c in protected else t}) AS `{c}`"
                    for c, t in zip(snap.columns, snap.types, strict=True))
                subs[view] = f"SELECT {casts} FROM Python({name})"
                hidden += snap.suppressed
            sql = checked.render(subs) + " SETTINGS " + SQL_SETTINGS
            try:
                body, n = self.evaluator().run(sql, fmt, tables, {k: params[k] for k in checked.params})
            except Exception as exc:  # the engine's own error on the caller's SQL
                raise EngineError(_engine_message(exc)) from None
            return (body, fmt, n), n, hidden
        return self._audited(ident, "sql", text, {k: v for k, v in params.items()}, remote, run)

    def close(self) -> None:
        """Flush the audit log and close the service's connections (not the store it was given)."""
        self.audit.close()
        self.cache.close()
        if self._evaluator is not None:
            self._evaluator.close()
        self.store.close()


STORE_PROBE: Final = (
    "SELECT table, sum(rows), max(modification_time), count() FROM system.parts "
    "WHERE active AND database = currentDatabase() AND table != 'audit_log' GROUP BY table ORDER BY table")
"""What the service asks a ClickHouse server to tell whether the data changed (new or merged parts)."""


class InvalidatingStore:
    """A store whose writes (insert, command) call ``changed`` afterwards: how the in-process sink
    tells the service its cached tables are stale."""

    def __init__(self, store: Store, changed: Callable[[], None]) -> None:
        self.store, self.changed = store, changed
        self.backend = store.backend
        self.concurrent = getattr(store, "concurrent", False)

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            self.store.command(sql, params)
        finally:
            self.changed()

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        return self.store.query(sql, params)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self.store.query_arrow(sql, params)

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self.store.query_arrow_with(sql, rows, params)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        try:
            return self.store.insert_arrow(table, data, dedup_token)
        finally:
            self.changed()

    def close(self) -> None:
        """The service closes the wrapped store."""

    def __enter__(self) -> InvalidatingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handshake(text: str) -> str | None:
    """If ``text`` is a connection handshake statement, its FORMAT ('' if none); else None."""
    try:
        toks = access.tokenize(text)
    except SQLRefused:
        return None
    while toks and toks[-1].text == ";":
        toks = toks[:-1]
    fmt = ""
    if len(toks) >= 2 and toks[-2].kind == "word" and toks[-2].value == "format":
        fmt = toks[-1].value if toks[-1].kind == "ident" else toks[-1].text
        toks = toks[:-2]
    if fmt and fmt not in access.ALLOWED_FORMATS:
        return None
    return fmt if access.render_tokens(toks) in HANDSHAKE else None


class EngineError(ServeError):
    """The engine refused the caller's (guarded) SQL: a mistake in the query, not in the service."""

    status = 400

    @property
    def code(self) -> int:
        m = re.match(r"Code: (\d+)\.", str(self))
        return int(m.group(1)) if m else 0


def _engine_message(exc: BaseException) -> str:
    text = str(exc).strip()
    idx = text.rfind("Code: ")
    text = text[idx:] if idx >= 0 else text
    text = re.sub(r"Python\(amb_view_[0-9a-f]+\)", "<view>", text)
    return text.splitlines()[0] if text else type(exc).__name__


def read_audit(store: Store, identity: str | None, limit: int) -> Table:
    """The newest ``limit`` audit rows (optionally one identity's), newest first."""
    where, params = "", {}
    if identity:
        where, params = "WHERE identity = {who:String}", {"who": identity}
    cols = ("at", "identity", "surface", "query", "params", "rows", "refused", "reason", "status", "duration_ms")
    res = store.query(f"SELECT {', '.join(cols)} FROM audit_log {where} ORDER BY at DESC, request_id LIMIT {int(limit)}",
                      params)
    return Table(tuple(res.columns), res.rows, 0, {"identity": identity, "limit": limit})


# --- the shared entry point for `amb query` -------------------------------------------------------


OPERATOR: Final = "operator:local"
"""How the audit log names `amb query` run without --identity (the local operator)."""


def run_catalogue_query(store: Store, identity: Identity | None, query: queries.Query, *, geo_dir: Path,
                        breakdown: str | None = None, surface: str = "cli") -> Table:
    """One catalogue query as ``identity``, through the same scoping, disclosure control and audit
    as ``GET /v1/metrics/{metric}`` (``amb query`` uses this; the audit row is written before
    returning). ``store`` is the caller's open store. ``identity=None`` is the local operator:
    exact figures, unscoped, audited as ``operator:local``."""
    ident = identity or Identity(access.ADMIN, "local")
    geography = _geography(geo_dir) if identity is not None else Geography()
    service = Service(store, Registry((ident,)), geography, b"\0" * 32, audit_interval=0)
    try:
        params = {k: str(v) for k, v in MetricRequest(query, breakdown).params().items() if v is not None}
        return service.metric(ident, query.metric, params, surface=surface, protect=identity is not None)
    finally:
        service.close()


_GEO_CACHE: dict[Path, Geography] = {}


def _geography(geo_dir: Path) -> Geography:
    if geo_dir not in _GEO_CACHE:
        _GEO_CACHE[geo_dir] = load_geography(geo_dir)
    return _GEO_CACHE[geo_dir]


# --- the fact sink in the service's process ------------------------------------------------------------


class InProcessSink:
    """``amb serve --with-sink``: the fact sink (sinks.sink.FactSink) on a thread of the process
    that owns the chDB store, writing through :meth:`Service.writer`, so every load invalidates
    the service's cached tables and new facts reach /v1/metrics without a second opener.

    ``error`` holds what stopped the sink thread if it failed (the owner then stops serving)."""

    def __init__(self, service: Service, bootstrap: str, topic: str, group: str, dlq_topic: str, *,
                 batch_size: int = SINK_BATCH_MESSAGES, batch_seconds: float = 1.0,
                 echo: Callable[[str], None] = lambda _s: None, on_exit: Callable[[], None] | None = None) -> None:
        from confluent_kafka import Consumer, Producer

        from sinks.sink import FactSink, consumer_config

        self.topic = topic
        self.consumer = Consumer(consumer_config(bootstrap, group))
        self.producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
        self.consumer.subscribe([topic])
        self.sink = FactSink(service.writer(), self.consumer, self.producer, dlq_topic, batch_size, batch_seconds,
                             echo=echo)
        self.error: BaseException | None = None
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name="amb-serve-sink", daemon=True)

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:  # noqa: BLE001  (reported by the owner)
            self.error = exc
            log.error("in-process sink stopped: %s", exc)
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def start(self) -> InProcessSink:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the current batch (load, commit), then close the consumer and flush the DLQ producer."""
        self.sink.stop()
        self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self.consumer.close()
        self.producer.flush(30)


# --- HTTP ------------------------------------------------------------------------------------------

_CONTENT_TYPES: Final = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8", "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8", "CSVWithNames": "text/csv; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8", "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}
_CH_ERROR_STATUS: Final = {access.ACCESS_DENIED: 403, access.READONLY: 403, access.UNKNOWN_FORMAT: 403,
                           access.SYNTAX_ERROR: 400, 516: 401}


def _credentials(request: web.Request) -> tuple[str | None, str | None]:
    """(user, token) from Bearer, Basic, X-ClickHouse-User/Key headers or user/password parameters."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return None, auth[7:].strip()
    if auth.lower().startswith("basic "):
        import base64
        import binascii

        try:
            user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, pw
    if "X-ClickHouse-Key" in request.headers:
        return request.headers.get("X-ClickHouse-User"), request.headers["X-ClickHouse-Key"]
    q = request.query
    if "password" in q:
        return q.get("user"), q["password"]
    return None, None


def _remote(request: web.Request) -> str:
    return request.remote or ""


def _json_error(exc: ServeError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="amb"'} if exc.status == 401 else None
    return web.json_response({"error": str(exc), "status": exc.status}, status=exc.status, headers=headers)


def _ch_error(code: int, name: str, message: str, status: int) -> web.Response:
    body = f"Code: {code}. DB::Exception: {message.rstrip('.')}. ({name}) (version amb-serve {__version__})\n"
    return web.Response(text=body, status=status, content_type="text/plain",
                        headers={"X-ClickHouse-Exception-Code": str(code)})


CH_PARAMS: Final = frozenset({"query", "default_format", "database", "query_id", "session_id", "user", "password",
                              "compress", "decompress", "enable_http_compression", "wait_end_of_query"})
"""URL parameters of ClickHouse's HTTP interface: a GET / with any of them is SQL, not the web page."""
AUTH_COOKIE: Final = "amb_token"
"""The browser sign-in cookie (HttpOnly, SameSite=Strict) holding the caller's token."""


class App:
    """The aiohttp application around a :class:`Service`; blocking work runs in a thread pool."""

    def __init__(self, service: Service, workers: int = 8) -> None:
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="amb-serve")
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.add_routes([
            web.get("/ping", self.ping),
            web.get("/openapi.json", self.openapi),
            web.get("/metrics", self.prometheus),
            web.get("/v1/catalogue", self.catalogue),
            web.get("/v1/metrics/{metric}", self.metric),
            web.get("/v1/incidents", self.incidents),
            web.get("/v1/audit", self.audit),
            web.get("/", self.root),
            web.get("/report/{tail:.*}", self.page),
            web.post("/", self.clickhouse),
        ])
        self.app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _app: web.Application) -> None:
        self.pool.shutdown(wait=True)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args))

    async def _identity(self, request: web.Request, surface: str) -> Identity:
        user, token = _credentials(request)
        try:
            return self.service.authenticate(token, user)
        except Unauthenticated as exc:
            await self._blocking(self.service.audit_refusal, surface, request.path_qs[:2000], str(exc), 401,
                                 _remote(request))
            raise

    async def ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi_spec())

    async def prometheus(self, _request: web.Request) -> web.Response:
        self.service.metrics.audit_pending.set(self.service.audit.pending())
        return web.Response(body=generate_latest(self.service.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _table(self, request: web.Request, surface: str, call: Callable[[Identity], Table]) -> web.Response:
        try:
            fmt = request.query.get("format") or "json"
            if fmt not in ("json", "csv"):
                raise ServeError(f"format must be json or csv, not {fmt!r}")
            ident = await self._identity(request, surface)
            table: Table = await self._blocking(call, ident)
        except ServeError as exc:
            return _json_error(exc)
        if fmt == "csv":
            return web.Response(text=table.render("csv"), content_type="text/csv")
        return web.Response(text=table.render("json"), content_type="application/json")

    async def catalogue(self, request: web.Request) -> web.Response:
        try:
            ident = await self._identity(request, "catalogue")
            body = await self._blocking(self.service.catalogue, ident, _remote(request))
        except ServeError as exc:
            return _json_error(exc)
        return web.json_response(body)

    async def metric(self, request: web.Request) -> web.Response:
        metric = request.match_info["metric"]
        params = dict(request.query)
        try:
            fmt = params.get("format") or "json"
            if fmt not in ("json", "csv"):
                raise ServeError(f"format must be json or csv, not {fmt!r}")
            ident = await self._identity(request, "metric")
            body = await self._blocking(self.service.metric_body, ident, metric, params, fmt, _remote(request))
        except ServeError as exc:
            return _json_error(exc)
        return web.Response(body=body, content_type="text/csv" if fmt == "csv" else "application/json")

    async def incidents(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        return await self._table(request, "incidents", lambda ident: self.service.incidents(
            ident, params, _remote(request)))

    async def audit(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        return await self._table(request, "audit", lambda ident: self.service.audit_log(
            ident, params, _remote(request)))

    async def root(self, request: web.Request) -> web.Response:
        """``GET /``: the ClickHouse interface when there is a ``query`` parameter (or another of
        that interface's parameters: ``CH_PARAMS``), else the commissioner web page."""
        if any(k in CH_PARAMS or k.startswith("param_") for k in request.query):
            return await self.clickhouse(request)
        return await self.page(request)

    async def page(self, request: web.Request) -> web.Response:
        """The commissioner web page (``amb.insight.web.handle``), imported on first use.

        Browsers sign in with ``?token=...`` once: the token is checked and kept in an HttpOnly,
        SameSite=Strict cookie (``AUTH_COOKIE``), which later requests send; the Authorization
        header works too. An absent or unknown token gives the page ``None`` (it shows a sign-in
        form); ``?token=`` (empty) signs out."""
        import importlib

        try:
            insight_web = importlib.import_module("amb.insight.web")
        except ModuleNotFoundError as exc:
            if exc.name not in ("amb.insight", "amb.insight.web"):
                raise
            return web.Response(status=503, text="the commissioner web page (amb.insight.web) is not installed "
                                "in this build; the API is at /v1/catalogue and /openapi.json\n")
        params = {k: v for k, v in request.query.items() if k != "token"}
        ident, cookie = await self._browser_identity(request)
        status, ctype, body = await self._blocking(insight_web.handle, self.service, ident, request.path, params)
        resp = web.Response(status=status, body=body, headers={"Content-Type": ctype,
                                                               "Cache-Control": "no-store"})
        if cookie == "":
            resp.del_cookie(AUTH_COOKIE, path="/")
        elif cookie is not None:
            resp.set_cookie(AUTH_COOKIE, cookie, path="/", httponly=True, samesite="Strict",
                            secure=request.secure, max_age=12 * 3600)
        return resp

    async def _browser_identity(self, request: web.Request) -> tuple[Identity | None, str | None]:
        """(identity or None, cookie to set: the token, '' to clear, None to leave as is)."""
        given = request.query.get("token")
        if given is not None:
            if not given:
                return None, ""
            ident = await self._try_token(request, given)
            return ident, given if ident is not None else ""
        _user, token = _credentials(request)
        if token is None:
            token = request.cookies.get(AUTH_COOKIE) or None
        if token is None:
            return None, None
        ident = await self._try_token(request, token)
        return ident, None if ident is not None else ""

    async def _try_token(self, request: web.Request, token: str) -> Identity | None:
        try:
            return self.service.authenticate(token)
        except Unauthenticated as exc:
            await self._blocking(self.service.audit_refusal, "web", request.path[:2000], str(exc), 401,
                                 _remote(request))
            return None

    async def clickhouse(self, request: web.Request) -> web.Response:
        """ClickHouse's HTTP interface, the subset clickhouse-connect and curl use."""
        q = request.query
        text = q.get("query", "")
        if request.method == "POST":
            if request.content_type.startswith("multipart/"):
                return _ch_error(access.SYNTAX_ERROR, "SYNTAX_ERROR", "multipart (form-encoded) queries are not "
                                 "supported: send the query as the POST body", 400)
            body = await request.read()
            enc = request.headers.get("Content-Encoding", "").lower()
            if enc == "gzip":
                import gzip

                body = gzip.decompress(body)
            elif enc not in ("", "identity"):
                return _ch_error(access.SYNTAX_ERROR, "SYNTAX_ERROR", f"request Content-Encoding {enc} is not "
                                 "supported", 400)
            if body:
                text = (text + "\n" if text else "") + body.decode("utf-8", errors="replace")
        if not text.strip():
            return web.Response(text="Ok.\n")
        try:
            ident = await self._identity(request, "sql")
        except Unauthenticated as exc:
            return _ch_error(516, "AUTHENTICATION_FAILED", str(exc), 401)
        params = {k[len("param_"):]: v for k, v in q.items() if k.startswith("param_")}
        default_format = q.get("default_format") or None
        if default_format is not None and default_format not in access.ALLOWED_FORMATS:
            return _ch_error(access.UNKNOWN_FORMAT, "UNKNOWN_FORMAT", f"format {default_format} is not allowed", 403)
        query_id = q.get("query_id") or str(uuid.uuid4())
        t0 = time.perf_counter()
        try:
            body_bytes, fmt, rows = await self._blocking(self.service.sql, ident, text, default_format, params,
                                                         _remote(request))
        except SQLRefused as exc:
            return _ch_error(exc.code, exc.name, str(exc), _CH_ERROR_STATUS.get(exc.code, 403))
        except EngineError as exc:
            m = re.match(r"Code: (\d+)\. DB::Exception: (.*?)(?: \((\w+)\))?(?: \(version [^)]*\))?\.?$", str(exc))
            code, msg, name = (int(m.group(1)), m.group(2), m.group(3) or "EXCEPTION") if m else (0, str(exc), "EXCEPTION")
            return _ch_error(code, name, msg, 400)
        except ServeError as exc:
            status = exc.status
            code = {403: access.ACCESS_DENIED, 401: 516}.get(status, 0)
            return _ch_error(code, "ACCESS_DENIED" if status == 403 else "BAD_REQUEST", str(exc), status)
        elapsed = int((time.perf_counter() - t0) * 1e9)
        summary = {"read_rows": str(rows), "read_bytes": str(len(body_bytes)), "written_rows": "0",
                   "written_bytes": "0", "total_rows_to_read": str(rows), "result_rows": str(rows),
                   "result_bytes": str(len(body_bytes)), "elapsed_ns": str(elapsed)}
        headers = {
            "X-ClickHouse-Format": fmt, "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "amb-serve", "X-ClickHouse-Summary": json.dumps(summary),
            "Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
        }
        return web.Response(body=body_bytes, headers=headers)


class Running:
    """The service's HTTP server on its own event loop in a background thread (tests, bench, and
    ``amb serve``'s main thread waits on it). ``url`` is the base URL once started."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, workers: int = 8) -> None:
        self.service = service
        self.host, self.port, self.workers = host, port, workers
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amb-serve-http", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> Running:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=30)
        return self

    async def _start(self) -> None:
        app = App(self.service, self.workers)
        self._runner = web.AppRunner(app.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server: Any = site._server
        sockets = server.sockets if server is not None else []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.url = f"http://{self.host}:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(service: Service, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """``with running(service) as url:`` serve until the block ends."""
    server = Running(service, host, port).start()
    try:
        yield server.url
    finally:
        server.stop()


# --- OpenAPI ----------------------------------------------------------------------------------------


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the service (served at /openapi.json)."""
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    table_resp = {
        "description": "rows after scoping and disclosure control ('*' = suppressed)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}},
                    "text/csv": {"schema": {"type": "string"}}},
    }
    date_param = {"schema": {"type": "string", "format": "date"}, "required": False}
    fmt_param = {"name": "format", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}}
    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "amb serve: NHS ambulance analyst service", "version": __version__,
                 "description": "Scoped, disclosure-controlled ambulance figures for ICB, region, trust and "
                                "national analysts; every query is audited. " + DISCLOSURE_NOTE},
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "a token from `amb token issue`"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Table": {"type": "object", "required": ["columns", "rows", "suppressed_cells"],
                          "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                                         "rows": {"type": "array", "items": {"type": "object"}},
                                         "suppressed_cells": {"type": "integer", "minimum": 0}}},
            },
        },
        "security": secured,
        "paths": {
            "/v1/catalogue": {"get": {
                "summary": "Metrics, views and scope of the caller", "operationId": "catalogue",
                "responses": {"200": {"description": "catalogue", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["identity", "metrics", "views", "scope"]}}}},
                    "401": err}}},
            "/v1/metrics/{metric}": {"get": {
                "summary": "A standard table (amb query) at a level and period", "operationId": "metric",
                "parameters": [
                    {"name": "metric", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": list(queries.METRICS)}},
                    {"name": "level", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(queries.HANDOVER_LEVELS), "default": "england"}},
                    {"name": "code", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "from", "in": "query", **date_param},
                    {"name": "to", "in": "query", **date_param},
                    {"name": "by", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(PERIOD_KINDS), "default": MONTH}},
                    {"name": "breakdown", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(BREAKDOWNS)}},
                    fmt_param,
                ],
                "responses": {"200": table_resp, "400": err, "401": err, "403": err, "404": err}}},
            "/v1/incidents": {"get": {
                "summary": "Incident-level rows in scope (pseudonymised for ICBs)", "operationId": "incidents",
                "parameters": [
                    {"name": "from", "in": "query", **date_param}, {"name": "to", "in": "query", **date_param},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": INCIDENT_LIMIT, "default": 1000}},
                    {"name": "offset", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
                    fmt_param,
                ],
                "responses": {"200": table_resp, "400": err, "401": err, "403": err}}},
            "/v1/audit": {"get": {
                "summary": "The audit log, newest first (admin identities)", "operationId": "audit",
                "parameters": [{"name": "identity", "in": "query", "required": False, "schema": {"type": "string"}},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 100}},
                               fmt_param],
                "responses": {"200": table_resp, "400": err, "401": err, "403": err}}},
            "/": {
                "get": {"summary": "ClickHouse HTTP interface: one SELECT over your permitted views",
                        "operationId": "sqlGet",
                        "description": "Without a query parameter, GET / is the commissioner web page (HTML).",
                        "parameters": [{"name": "query", "in": "query", "required": True, "schema": {"type": "string"}},
                                       {"name": "default_format", "in": "query", "required": False,
                                        "schema": {"type": "string", "enum": sorted(access.ALLOWED_FORMATS)}}],
                        "responses": {"200": {"description": "the result in the requested format",
                                              "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
                                      "400": {"description": "ClickHouse-style error (Code: N. DB::Exception: ...)"},
                                      "401": {"description": "authentication failed (Code: 516)"},
                                      "403": {"description": "refused (Code: 497 ACCESS_DENIED)"}}},
                "post": {"summary": "ClickHouse HTTP interface (query in the body)", "operationId": "sqlPost",
                         "requestBody": {"required": False, "content": {"text/plain": {"schema": {"type": "string"}}}},
                         "responses": {"200": {"description": "the result",
                                               "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
                                       "400": {"description": "ClickHouse-style error"},
                                       "401": {"description": "authentication failed"},
                                       "403": {"description": "refused"}}},
            },
            "/ping": {"get": {"summary": "liveness", "security": [], "operationId": "ping",
                              "responses": {"200": {"description": "Ok.",
                                                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (amb_serve_*)", "security": [], "operationId": "metrics",
                                 "responses": {"200": {"description": "exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [], "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3.0",
                                                            "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
    }


SUPPRESSED_MARK = SUPPRESSED
"""Re-exported for callers rendering tables: how a suppressed cell is shown."""
