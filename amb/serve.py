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

chDB: one process may open a chDB data directory at a time, so ``amb serve`` OWNS the store
while it runs (it holds the store's lock, ``<dir>/amb.lock``): the sink, ``amb query`` and
``amb db`` cannot open it meanwhile; ask the service instead (``amb audit --url``, the SQL
endpoint). With a ClickHouse server (``CLICKHOUSE_URL``) nothing is locked and the SQL endpoint
evaluates over an in-memory chDB.
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
from typing import Any, Final, TypeVar

import pyarrow as pa
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from amb import __version__
from amb.errors import AmbError
from amb.identities import Geography, Registry, RegistryFile, load_geography
from domain import access
from domain.access import Identity, Scope, SQLRefused, check_sql
from domain.disclosure import SPECS, SUPPRESSED, TableSpec, Value, suppress
from domain.metrics import MONTH, PERIOD_KINDS, UNKNOWN
from domain.pseudonym import pseudonymise
from sinks import queries
from sinks.store import ChdbStore, Result, Store, StoreError, bind_value, quote

log = logging.getLogger("amb.serve")
R = TypeVar("R")

SURFACES: Final = ("catalogue", "metric", "incidents", "sql", "audit", "cli")
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
    """The store for a multi-threaded service: each thread gets its own chDB connection to the
    store's directory (chDB allows several connections to the one directory a process has open).

    Why: one chDB connection shared by threads mixes up concurrent queries' parameters (seen as
    "Substitution `level` is not set" and as answers to another thread's parameters under 10
    concurrent clients in bench/bench_serve.py), so a ChdbStore is safe for one thread at a time.
    The wrapped store keeps the directory lock; close this before it."""

    backend = "chdb"

    def __init__(self, store: ChdbStore) -> None:
        self.store = store
        self.path = store.path
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import chdb

            with self._lock:
                if self._closed:
                    raise StoreError(f"chDB store {self.path} is closed")
                conn = chdb.connect(str(self.path))
                self._all.append(conn)
            self._local.conn = conn
        return conn

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

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        with self._lock:
            return self.store.insert_arrow(table, data, dedup_token)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

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
    ``snapshot_ttl``: seconds a protected view snapshot is reused by the SQL endpoint (with a
    chDB store nothing else writes while the service owns it, so this only bounds staleness on a
    server)."""

    def __init__(self, store: Store, registry: RegistryFile | Registry, geography: Geography, key: bytes, *,
                 audit_interval: float = 1.0, snapshot_ttl: float = 30.0,
                 metrics: ServeMetrics | None = None) -> None:
        self.store: Store = concurrent_store(store)
        self._registry = registry
        self.geography = geography
        self.key = key
        self.metrics = metrics or ServeMetrics()
        self.audit = AuditLog(store, audit_interval, on_flush=self.metrics.on_flush)
        self.snapshot_ttl = snapshot_ttl
        self._evaluator: Evaluator | None = None
        self._snapshots: dict[str, ViewSnapshot] = {}
        self._snap_lock = threading.Lock()
        self._view_meta: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {}

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
        rows = queries.run(self.store, full)
        spec = SPECS[q.metric]
        if q.level == "england":
            spec = replace(spec, groups=None)  # its rows are the published totals themselves
        columns = tuple(q.columns)
        exempt = [sc.exempt(q.level, str(r[0])) for r in rows]
        xcols, xrows, xspec = self.with_parents(columns, rows, spec, lambda r: (q.level, str(r[0])))
        out = suppress(xcols, xrows, xspec, exempt)
        keep = [i for i, r in enumerate(rows) if sc.allows(q.level, str(r[0])) and (q.code is None or r[0] == q.code)]
        width = len(columns)
        shown = [out.rows[i][:width] for i in keep]
        kept = set(keep)
        hidden = sum(1 for i, _j in out.hidden if i in kept)
        return Table(columns, shown, hidden, meta)

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
        res = self.store.query(sql, params)
        if not protect:
            return Table(tuple(res.columns), list(res.rows), 0, {**meta, "view": view})
        out = suppress(res.columns, res.rows, SPECS[view])
        return Table(tuple(res.columns), list(out.rows), len(out.hidden), {**meta, "view": view})

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
        """The whole view after disclosure control (cached ``snapshot_ttl`` seconds)."""
        with self._snap_lock:
            snap = self._snapshots.get(view)
            if snap is not None and time.monotonic() - snap.taken < self.snapshot_ttl:
                return snap
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
            snap = ViewSnapshot(view, tuple(table.column_names), ch_types, table.schema, protected,
                                len(out.hidden), time.monotonic())
            self._snapshots[view] = snap
            self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)
            return snap

    def _scoped_arrow(self, snap: ViewSnapshot, sc: Scope) -> pa.Table:
        spec: TableSpec = SPECS[snap.name]
        rows: Sequence[tuple[Value, ...]] = snap.rows
        if spec.geo is not None and not sc.everywhere:
            level_col, code_col = spec.geo
            ci = snap.columns.index(code_col)
            li = snap.columns.index(level_col) if level_col else None
            rows = [r for r in rows if sc.allows(str(r[li]) if li is not None else str(spec.level), str(r[ci]))]
        arrays = [pa.array([r[j] for r in rows], type=snap.schema.field(j).type) for j in range(len(snap.columns))]
        return pa.Table.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in snap.schema]))

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
        if self._evaluator is not None:
            self._evaluator.close()
        self.store.close()


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
            web.get("/", self.clickhouse),
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
        return await self._table(request, "metric", lambda ident: self.service.metric(
            ident, metric, params, _remote(request)))

    async def incidents(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        return await self._table(request, "incidents", lambda ident: self.service.incidents(
            ident, params, _remote(request)))

    async def audit(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        return await self._table(request, "audit", lambda ident: self.service.audit_log(
            ident, params, _remote(request)))

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
                        "parameters": [{"name": "query", "in": "query", "required": False, "schema": {"type": "string"}},
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
