"""The store adapters on a real embedded engine: chDB persistence and single-opener locking,
parameter binding, insert deduplication into the facts and every materialised-view target, and
the server adapter (clickhouse-connect) sending the same SQL as the chDB one.

chDB facts these tests pin down: one process hosts one engine bound to one directory (open a
different directory only after closing every connection); another process cannot open a directory
in use; data persists across processes.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from strategies import FAKE_ATTRIBUTOR, FAKE_HIERARCHY
from test_oracle import EXAMPLE

from domain.facts import build_facts
from domain.incident import apply_any, state_key
from domain.metrics import PERIOD_KINDS
from domain.oracle import compute
from sinks import migrate as mig
from sinks import queries
from sinks.loader import INCIDENTS, KINDS, load_facts, to_arrow
from sinks.store import (
    ROWS,
    ChdbStore,
    ClickHouseServerStore,
    Store,
    StoreBusyError,
    StoreError,
    chdb_rows_sql,
)

ROOT = Path(__file__).resolve().parents[1]
LEVELS_PER_ROLLUP = {"incident_rollup_hourly": 6, "incident_rollup_daily": 7, "incident_rollup_monthly": 8}
ROLLUPS = list(LEVELS_PER_ROLLUP)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path / "chdb")
    mig.migrate(s)
    yield s
    s.close()


def stream_facts(events: list[Any]) -> tuple[list[Any], list[Any]]:
    """Every fact version a stream worker emits while the events arrive in this order."""
    states: dict[Any, Any] = {}
    inc: list[Any] = []
    hand: list[Any] = []
    for e in events:
        k = state_key(e)
        old = states.get(k)
        new = apply_any(old, e)
        if new is old:
            continue
        states[k] = new
        f = build_facts([new], FAKE_ATTRIBUTOR, FAKE_HIERARCHY)
        inc += f.incidents
        hand += f.handovers
    return inc, hand


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


# --- chDB: persistence and the single opener ----------------------------------------------------


def test_data_persists_across_processes_and_a_held_store_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    with ChdbStore(path) as s:
        s.command("CREATE TABLE t (a Int64) ENGINE = MergeTree ORDER BY a")
        s.insert_arrow("t", pa.table({"a": [1, 2, 3]}))
        # while this process holds it, another process is refused with a clear message
        code = ("import sys\nfrom sinks.store import ChdbStore, StoreBusyError\n"
                "try:\n    ChdbStore(sys.argv[1])\nexcept StoreBusyError as e:\n    print(e); sys.exit(3)\n")
        busy = _python(code, str(path))
        assert busy.returncode == 3, busy.stderr
        assert f"chDB store {path} is in use by pid" in busy.stdout
        assert len(busy.stdout.strip().splitlines()) == 1
    # closed: another process opens it and sees the data
    read = _python("import sys\nfrom sinks.store import ChdbStore\n"
                   "print(ChdbStore(sys.argv[1]).query('SELECT sum(a) FROM t').scalar())", str(path))
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "6"


def test_one_process_opens_one_store_at_a_time(tmp_path: Path) -> None:
    a = ChdbStore(tmp_path / "a")
    try:
        with pytest.raises(StoreBusyError, match="already has chDB store"):
            ChdbStore(tmp_path / "b")
        with pytest.raises(StoreBusyError):
            ChdbStore(tmp_path / "a")
    finally:
        a.close()
    with ChdbStore(tmp_path / "b") as b:  # after closing, another directory opens
        assert b.query("SELECT 1 AS one").rows == [(1,)]


def test_errors_are_one_line_store_errors(store: ChdbStore) -> None:
    with pytest.raises(StoreError) as err:
        store.query("SELECT nope FROM incident_facts")
    assert "\n" not in str(err.value) and "nope" in str(err.value)


# --- parameters -----------------------------------------------------------------------------------

PARAMS: dict[str, Any] = {
    "s": "it's a \\ back\tslash\nand newline",
    "d": dt.date(2026, 3, 29),
    "i": -42,
    "keys": [("RX6", "INC'1"), ("RRU", "b\\c")],
}
PARAM_SQL = ("SELECT {s:String} AS s, {d:Date} AS d, {i:Int64} AS i, "
             "{keys:Array(Tuple(String, String))} AS keys")


def check_params(store: Store) -> None:
    row = store.query(PARAM_SQL, PARAMS).dicts()[0]
    assert row["s"] == PARAMS["s"] and row["d"] == PARAMS["d"] and row["i"] == -42
    # Arrow renders a tuple as a struct {"1": .., "2": ..}; clickhouse-connect as a tuple
    assert [tuple(k.values()) if isinstance(k, dict) else tuple(k) for k in row["keys"]] == PARAMS["keys"]


def test_parameters_bind_exactly_on_chdb(store: ChdbStore) -> None:
    check_params(store)


# --- deduplication --------------------------------------------------------------------------------


def _changes(n: int) -> pa.Table:
    inc, _ = stream_facts(EXAMPLE)
    t = to_arrow(INCIDENTS, inc[:n])
    return t.append_column("sign", pa.array([1] * t.num_rows, pa.int8()))


def _counts(store: ChdbStore) -> dict[str, int]:
    out = {"incident_changes": int(store.query("SELECT count() FROM incident_changes").scalar())}
    for t in ROLLUPS:
        out[t] = int(store.query(f"SELECT sum(incidents + open) FROM {t}").scalar())
    return out


def test_the_same_batch_twice_with_the_same_token_counts_once_in_the_table_and_every_mv_target(
    store: ChdbStore,
) -> None:
    batch = _changes(10)
    store.insert_arrow("incident_changes", batch, "facts:0:0-9")
    once = _counts(store)
    assert once["incident_changes"] == 10 and all(once[t] == 10 * LEVELS_PER_ROLLUP[t] for t in ROLLUPS)
    store.insert_arrow("incident_changes", batch, "facts:0:0-9")
    assert _counts(store) == once
    store.insert_arrow("incident_changes", batch, "facts:0:10-19")  # another token is another insert
    assert _counts(store)["incident_changes"] == 20


def test_a_retry_after_a_partial_insert_fills_only_the_targets_that_missed_it(store: ChdbStore) -> None:
    """A failure between the table and one materialised view: replaying the batch with its token
    is dropped where it landed and applied where it did not."""
    batch = _changes(10)
    store.command("DETACH TABLE incident_rollup_daily_mv")
    store.insert_arrow("incident_changes", batch, "facts:1:0-9")
    store.command("ATTACH TABLE incident_rollup_daily_mv")
    assert _counts(store)["incident_rollup_daily"] == 0
    store.insert_arrow("incident_changes", batch, "facts:1:0-9")
    assert _counts(store) == {"incident_changes": 10, **{t: 10 * n for t, n in LEVELS_PER_ROLLUP.items()}}


def test_every_mergetree_table_keeps_a_dedup_window(store: ChdbStore) -> None:
    """Every table a fact insert reaches, materialised-view targets included."""
    reached = [t for k in KINDS for t in (k.facts_table, k.changes_table)]
    reached += [f"{f}_rollup_{g}" for f in ("incident", "handover") for g in ("hourly", "daily", "monthly")]
    rows = store.query("SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() "
                       "AND name IN {names:Array(String)}", {"names": [*reached, "imd_lsoa21"]}).rows
    assert len(rows) == len(reached) + 1
    for name, ddl in rows:
        assert "non_replicated_deduplication_window = 1000" in str(ddl), name


# --- the server adapter sends the same SQL ---------------------------------------------------------


class Recorder:
    """Wraps a client or connection and records every statement sent through it."""

    def __init__(self, inner: Any, log: list[tuple[str, Any]]) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("query", "command", "query_arrow", "raw_insert"):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if name == "raw_insert":
                table, cols = args[0], args[1]
                self._log.append(("insert", (table, tuple(cols), kw["settings"]["insert_deduplication_token"])))
            else:
                self._log.append(("sql", args[0]))
            external = kw.pop("external_data", None)
            if external is not None:
                # what the server does with external data, which the in-process client cannot
                # send: the ArrowStream body becomes the table named in the query
                (file,) = external.files
                assert (file.name, file.fmt) == (ROWS, "ArrowStream")
                amb_rows = pa.ipc.open_stream(file.data).read_all()  # noqa: F841  (read by Python())
                assert [f"{f.name} {str(f.type).replace('string', 'String')}" for f in amb_rows.schema] == \
                    file.structure.split(",")
                args = (chdb_rows_sql(args[0]), *args[1:])
            return attr(*args, **kw)

        return call


def _normalise_chdb(log: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """chDB inserts are `INSERT INTO t (cols) SETTINGS ... SELECT cols FROM Python(amb_batch)`."""
    out = []
    for kind, sql in log:
        if isinstance(sql, str) and f"Python({ROWS})" in sql:
            out.append((kind, sql.replace(f"Python({ROWS})", ROWS)))
        elif isinstance(sql, str) and sql.startswith("INSERT INTO") and "FROM Python(amb_batch)" in sql:
            table = sql.split()[2]
            cols = tuple(c.strip("` ") for c in sql[sql.index("(") + 1 : sql.index(")")].split(","))
            token = sql.split("insert_deduplication_token = '", 1)[1].split("'", 1)[0]
            out.append(("insert", (table, cols, token)))
        else:
            out.append((kind, sql))
    return out


def _ids_numbered(log: list[tuple[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    return [re.sub(r"\b[0-9a-f]{32}\b", lambda m: seen.setdefault(m.group(0), f"<load {len(seen)}>"), repr(e))
            for e in log]


def workload(store: Store) -> dict[str, list[Any]]:
    """Migrate, load the worked example in batches, and read every table at a few levels."""
    mig.migrate(store)
    check_params(store)
    inc, hand = stream_facts(EXAMPLE)
    for i in range(0, len(inc), 6):
        load_facts(store, f"t:{i}", inc[i : i + 6], hand[i // 6 : i // 6 + 1])
    load_facts(store, "t:end", inc, hand)
    out = {}
    for metric in queries.METRICS:
        for level in ("england", "icb", "lsoa"):
            for by in ("day", "week", "fy"):
                out[f"{metric}/{level}/{by}"] = queries.run(store, queries.Query(metric, level, by))
    return out


def test_the_server_adapter_sends_the_same_statements_and_gets_the_same_answers(tmp_path: Path) -> None:
    """No ClickHouse server runs here, so the server adapter drives clickhouse-connect's own
    in-process chDB client: the same client API, parameter formatting and result decoding."""
    from clickhouse_connect.driver._chdbclient import ChdbClient

    chdb_log: list[tuple[str, Any]] = []
    local = ChdbStore(tmp_path / "local")
    local._conn = Recorder(local._conn, chdb_log)
    local.concurrent = False  # one thread, so every statement goes through the recorded connection
    try:
        got_local = workload(local)
    finally:
        local.close()

    server_log: list[tuple[str, Any]] = []
    client = ChdbClient(path=str(tmp_path / "server"))
    try:
        got_server = workload(ClickHouseServerStore(Recorder(client, server_log)))
    finally:
        client.close()

    assert got_server == got_local
    report = compute(EXAMPLE, FAKE_ATTRIBUTOR, FAKE_HIERARCHY)
    for key, rows in got_local.items():
        metric, level, by = key.split("/")
        assert rows == report.table(metric, level, by), key
    assert len(server_log) > 50
    # load ids are fresh UUIDs per load: compare them by position
    assert _ids_numbered(_normalise_chdb(chdb_log)) == _ids_numbered(server_log)


def test_open_store_picks_the_backend_from_settings(tmp_path: Path) -> None:
    from amb import config
    from amb.errors import ConfigError
    from sinks.store import open_store

    s = open_store(config.load({}, data_dir=tmp_path))
    try:
        assert isinstance(s, ChdbStore) and s.path == (tmp_path / "chdb").resolve()
    finally:
        s.close()
    with pytest.raises(ConfigError, match="CLICKHOUSE_URL"):
        open_store(config.load({}, clickhouse_url=f"ftp://{uuid.uuid4().hex}"))


def test_the_cli_query_refuses_a_held_store_with_one_line(tmp_path: Path) -> None:
    env_code = (
        "import sys\nfrom click.testing import CliRunner\nfrom amb.commands import query\nfrom amb.cli import main\n"
        "import click\n@click.group()\ndef cli(): pass\ncli.add_command(query.command)\n"
        "from amb.errors import AmbError\n"
        "try:\n    cli.main(['query', 'dispositions'], standalone_mode=False)\n"
        "except AmbError as e:\n    print(e); sys.exit(3)\n"
    )
    with ChdbStore(tmp_path / "chdb") as s:
        mig.migrate(s)
        r = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={"AMB_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 3, r.stderr
    assert "is in use by pid" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert PERIOD_KINDS  # the CLI's --by choices come from domain.metrics
