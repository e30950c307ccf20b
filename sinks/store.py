"""One store interface, two backends: embedded chDB (default) and a ClickHouse server.

Everything above this module (migrations, loader, queries) builds SQL text once and hands it to a
:class:`Store`; the adapters only move bytes. Both send the same statements: the one place they
differ is how Arrow data from this process reaches a statement: an INSERT's rows, and the in-memory
table ``amb_rows`` a SELECT may read (:meth:`Store.query_arrow_with`). chDB reads the table in
place through its ``Python()`` table function; the server receives an ``ArrowStream`` body
(clickhouse-connect's ``raw_insert``, or external data named ``amb_rows``). Table, columns and
settings are the same.

chDB facts that shape this module (chdb-core 26.x, checked by tests/test_store.py):

- A process hosts ONE embedded engine bound to ONE data directory. Any number of connections to
  that directory may coexist in the process; opening another directory needs every connection
  closed first (chDB raises otherwise). So one process opens one store at a time.
- Another process cannot open a directory that is in use (chDB locks ``<dir>/status``). We take
  our own ``fcntl.flock`` on ``<dir>/amb.lock`` first, so the second opener gets a one-line error
  naming the holder instead of an engine stack trace.
- Data persists in the directory across processes; MergeTree insert deduplication works with
  ``non_replicated_deduplication_window`` and an ``insert_deduplication_token``, including for
  materialised-view targets when ``deduplicate_blocks_in_dependent_materialized_views=1``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote, urlparse

import pyarrow as pa

from amb.config import Settings
from amb.errors import AmbError, ConfigError

LOCK_NAME = "amb.lock"


def dedup_settings(token: str) -> dict[str, Any]:
    """Settings of a deduplicated insert: a repeated token is dropped by the table and, with
    ``deduplicate_blocks_in_dependent_materialized_views``, by every materialised-view target it
    feeds (each needs ``non_replicated_deduplication_window`` > 0). ``optimize_on_insert = 0``
    skips collapsing/summing inside each inserted block: merges and queries do it anyway, and it
    cost a quarter of the load time (bench/bench_store.py)."""
    return {
        "insert_deduplication_token": token,
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
        "optimize_on_insert": 0,
    }


class StoreError(AmbError):
    """A statement failed in the store; the message carries the engine's first line."""


class StoreBusyError(AmbError):
    """The chDB directory is held by another process (or another store in this process)."""


@dataclass(frozen=True)
class Result:
    """A query result: column names and rows of plain Python values."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


#: The name a SELECT gives the in-memory table of :meth:`Store.query_arrow_with`.
ROWS: Final = "amb_rows"
_ROWS_RE: Final = re.compile(rf"\b{ROWS}\b")


class Store(Protocol):
    """What the shell needs from ClickHouse. Implementations must not rewrite SQL, except that chDB
    reads the table named ``amb_rows`` through ``Python(amb_rows)``."""

    backend: str
    #: True when statements may be sent from several threads at once (the loader then loads its
    #: fact kinds in parallel); a client that allows one query at a time says False.
    concurrent: bool

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT, OPTIMIZE)."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        """Run a SELECT; ``{name:Type}`` placeholders are bound from ``params`` server-side."""

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a SELECT and return an Arrow table (bulk reads: the loader's version lookup)."""

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        """A SELECT that reads ``rows`` (from this process) as the table ``amb_rows``, e.g.
        ``... WHERE id GLOBAL IN (SELECT id FROM amb_rows)``: a batch's keys as a set the engine
        builds once, where an ``Array`` parameter of 40,000 ids is searched per row in chDB."""

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        """Insert an Arrow table by column name; a repeated ``dedup_token`` is dropped by every
        MergeTree table the insert reaches. Returns the rows sent."""

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


def insert_head(table: str, columns: Sequence[str], dedup_token: str | None) -> str:
    """``INSERT INTO t (a, b) SETTINGS ...``: the statement both backends send for an Arrow insert."""
    cols = ", ".join(f"`{c}`" for c in columns)
    head = f"INSERT INTO {table} ({cols})"
    if dedup_token is not None:
        head += " SETTINGS " + ", ".join(
            f"{k} = {quote(v) if isinstance(v, str) else v}" for k, v in dedup_settings(dedup_token).items()
        )
    return head


def quote(value: str) -> str:
    """A ClickHouse single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _literal(value: Any) -> str:
    """Python value -> ClickHouse literal, for values nested inside an Array/Tuple parameter."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return quote(value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
    if isinstance(value, dt.date):
        return quote(value.isoformat())
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list | set | frozenset):
        if all(type(v) is str for v in value):  # the loader's id sets: 50k ids, no per-item dispatch
            return "[" + ", ".join(["'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in value]) + "]"
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"cannot bind {type(value).__name__} as a ClickHouse parameter")


def bind_value(value: Any) -> str:
    """Python value -> the text a ``{name:Type}`` parameter is parsed from (escaped TSV form)."""
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return _literal(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for prefix in ("Code: ",):
        # The engine repeats "Code: N. DB::Exception:" twice; keep the meaningful tail.
        idx = text.rfind(prefix)
        if idx > 0:
            text = text[idx:]
    return text.splitlines()[0] if text else type(exc).__name__


def chdb_rows_sql(sql: str) -> str:
    """The SQL of a :meth:`Store.query_arrow_with` as chDB runs it: ``amb_rows`` read through
    ``Python()``, which finds the Arrow table by that name in the calling frames."""
    return _ROWS_RE.sub(f"Python({ROWS})", sql)


def arrow_stream(data: pa.Table) -> bytes:
    """An Arrow table as an ``ArrowStream`` body (the server's inserts and external data)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return bytes(sink.getvalue().to_pybytes())


_CH_TYPES: Final = {pa.string(): "String", pa.int64(): "Int64", pa.uint32(): "UInt32", pa.int8(): "Int8",
                    pa.bool_(): "Bool"}


def _pylist_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*cols, strict=True)) if cols else []


# --- chDB ---------------------------------------------------------------------------------------

_process_lock = threading.Lock()
_open_path: Path | None = None  # the directory this process's chDB engine is bound to


@dataclass
class _DirLock:
    """An exclusive ``flock`` on ``<dir>/amb.lock`` holding the owner's pid and command line."""

    path: Path
    fd: int = field(default=-1)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" by {holder}" if holder else ""
            raise StoreBusyError(
                f"chDB store {self.path.parent} is in use{who}; only one process may open it: "
                "stop that process or ask it (e.g. `amb serve`)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:200]})\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


class ChdbStore:
    """Embedded chDB on a persistent directory; the process that opens it is its only user.

    Safe to use from several threads at once: the opening thread uses the connection opened with
    the store, every other thread gets its own connection to the same directory on first use
    (one connection shared by threads mixed up concurrent queries' parameters: seen by amb serve
    with 10 clients). chDB runs statements of different connections in parallel, with the GIL
    released, which is what the loader's concurrent fact kinds use.
    """

    backend = "chdb"
    concurrent = True

    def __init__(self, path: Path) -> None:
        global _open_path
        import chdb  # imported here: loading the engine costs ~0.3 s and a CLI --help needs none

        self.path = Path(path).resolve()
        self._lock = _DirLock(self.path / LOCK_NAME)
        with _process_lock:
            if _open_path is not None:
                raise StoreBusyError(
                    f"this process already has chDB store {_open_path} open; chDB binds one "
                    f"directory per process, so {self.path} cannot be opened too"
                )
            self._lock.acquire()
            try:
                self._conn = chdb.connect(str(self.path))
            except Exception as exc:
                self._lock.release()
                raise StoreError(f"cannot open chDB store {self.path}: {_first_line(exc)}") from None
            _open_path = self.path
        self._closed = False
        self._opener = threading.get_ident()
        self._local = threading.local()
        self._others: list[Any] = []  # the other threads' connections, closed with the store
        self._others_lock = threading.Lock()

    def _thread_conn(self) -> Any:
        if threading.get_ident() == self._opener:
            return self._conn
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import chdb

            with self._others_lock:
                if self._closed:
                    raise StoreError(f"chDB store {self.path} is closed")
                conn = chdb.connect(str(self.path))
                self._others.append(conn)
            self._local.conn = conn
        return conn

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(sql, params, "CSV")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        table = self._run(sql, params, "ArrowTable")
        if not isinstance(table, pa.Table):  # statements without a result set
            return Result([], [])
        return Result(list(table.column_names), _pylist_rows(table))

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        table = self._run(sql, params, "ArrowTable")
        if not isinstance(table, pa.Table):
            raise StoreError(f"no result set from: {sql.strip()[:160]}")
        return table

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        amb_rows = rows.combine_chunks()  # noqa: F841  (found by name by Python() below)
        return self.query_arrow(chdb_rows_sql(sql), params)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        if data.num_rows == 0:
            return 0
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        # chDB's Python() table function finds `amb_batch` in this frame and reads it zero-copy:
        # ~30% faster than serialising an ArrowStream body (bench/bench_store.py).
        amb_batch = data  # noqa: F841  (read by name from the SQL below)
        sql = f"{insert_head(table, data.column_names, dedup_token)} SELECT {cols} FROM Python(amb_batch)"
        self._run(sql, None, "CSV")
        return int(data.num_rows)

    def _run(self, sql: str, params: Mapping[str, Any] | None, fmt: str) -> Any:
        if self._closed:
            raise StoreError(f"chDB store {self.path} is closed")
        bound = {k: bind_value(v) for k, v in (params or {}).items()}
        try:
            return self._thread_conn().query(sql, fmt, params=bound)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [in: {sql.strip()[:160]}]") from None

    def close(self) -> None:
        global _open_path
        if self._closed:
            return
        with self._others_lock:
            self._closed = True
            others, self._others = self._others, []
        with _process_lock:
            try:
                for conn in others:
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conn.close()
            finally:
                self._lock.release()
                _open_path = None

    def __enter__(self) -> ChdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- ClickHouse server --------------------------------------------------------------------------


class ClickHouseServerStore:
    """A ClickHouse server through clickhouse-connect; sends exactly the SQL it is given.

    ``client`` is anything with clickhouse-connect's ``command``/``query`` signatures: tests pass a
    recording fake, since no server runs on a development machine.
    """

    backend = "clickhouse"
    concurrent = False  # clickhouse-connect refuses concurrent queries in one session

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> ClickHouseServerStore:
        import clickhouse_connect

        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"CLICKHOUSE_URL={url!r} is not http(s)://user:pass@host:port/database")
        try:
            client = clickhouse_connect.get_client(
                host=u.hostname, port=u.port or (8443 if u.scheme == "https" else 8123),
                username=unquote(u.username or "default"), password=unquote(u.password or ""),
                database=u.path.strip("/") or "default", secure=u.scheme == "https",
            )
        except Exception as exc:
            raise StoreError(f"cannot reach ClickHouse at {u.hostname}:{u.port}: {_first_line(exc)}") from None
        return cls(client)

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            self.client.command(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [in: {sql.strip()[:160]}]") from None

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        try:
            res = self.client.query(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [in: {sql.strip()[:160]}]") from None
        return Result(list(res.column_names), [tuple(r) for r in res.result_rows])

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        try:
            table = self.client.query_arrow(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [in: {sql.strip()[:160]}]") from None
        return cast(pa.Table, table)

    def query_arrow_with(self, sql: str, rows: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        from clickhouse_connect.driver.external import ExternalData

        try:
            structure = [f"{f.name} {_CH_TYPES[f.type]}" for f in rows.schema]
        except KeyError as exc:
            raise StoreError(f"cannot send a column of type {exc} as external data") from None
        external = ExternalData(file_name=ROWS, data=arrow_stream(rows), fmt="ArrowStream", structure=structure)
        try:
            table = self.client.query_arrow(sql, parameters=dict(params) if params else None, external_data=external)
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [in: {sql.strip()[:160]}]") from None
        return cast(pa.Table, table)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        if data.num_rows == 0:
            return 0
        # Over HTTP: `INSERT INTO table (cols) FORMAT ArrowStream` with the settings as URL
        # parameters: the same table, columns and settings as insert_head() gives chDB.
        try:
            self.client.raw_insert(
                table, list(data.column_names), arrow_stream(data),
                settings=dedup_settings(dedup_token) if dedup_token is not None else None, fmt="ArrowStream",
            )
        except Exception as exc:
            raise StoreError(f"{_first_line(exc)} [inserting into {table}]") from None
        return int(data.num_rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> ClickHouseServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(settings: Settings) -> Store:
    """The configured store: the server at ``CLICKHOUSE_URL`` if set, else chDB in ``chdb_dir``."""
    if settings.clickhouse_url:
        return ClickHouseServerStore.from_url(settings.clickhouse_url)
    return ChdbStore(settings.chdb_dir)


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[Store]:
    """``with opened(settings) as store:`` open, yield, always close (and release the chDB lock)."""
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()
