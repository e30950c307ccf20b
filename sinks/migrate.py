"""Load, check and apply the numbered migrations in ``sinks/migrations``.

The loader refuses a set with a gap, a duplicate number or a bad name before anything runs, so a
half-merged branch cannot leave the store between versions. Applying is idempotent twice over: a
migration recorded in ``schema_migrations`` is skipped, and every statement is itself idempotent
DDL, so a run interrupted between a statement and its record is simply run again. A recorded
migration whose file changed since is refused (add a new number instead).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from amb.errors import AmbError
from sinks.store import Store, quote

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATIONS_TABLE = "schema_migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9]+(?:_[a-z0-9]+)+)\.sql$")

BOOTSTRAP = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    id UInt32,
    name String,
    checksum String,
    applied_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY id
COMMENT 'Applied store migrations (sinks/migrations), one row per NNNN_verb_object.sql'"""


class MigrationError(AmbError):
    """The migration set or the store's record of it is inconsistent."""


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    path: Path
    up: tuple[str, ...]
    down: tuple[str, ...]
    checksum: str


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside quotes and comments; drop comment-only pieces."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    quote_ch: str | None = None
    while i < n:
        ch = sql[i]
        if quote_ch:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(sql[i + 1])
                i += 2
                continue
            if ch == quote_ch:
                quote_ch = None
        elif ch in ("'", '"', "`"):
            quote_ch = ch
            buf.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            buf.append(sql[i:end])
            i = end
            continue
        elif ch == ";":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    stmts = []
    for s in out:
        body = "\n".join(line for line in s.strip().splitlines() if not line.strip().startswith("--"))
        if body.strip():
            stmts.append(s.strip())
    return stmts


def parse_file(path: Path) -> Migration:
    m = _NAME.match(path.name)
    if not m:
        raise MigrationError(f"{path.name}: migration files are named NNNN_verb_object.sql")
    text = path.read_text()
    parts = re.split(r"^--\s*down\s*$", text, maxsplit=1, flags=re.M | re.I)
    up_text = re.sub(r"^--\s*up\s*$", "", parts[0], count=1, flags=re.M | re.I)
    up = tuple(split_statements(up_text))
    if not up:
        raise MigrationError(f"{path.name}: no statements in its -- up section")
    down = tuple(split_statements(parts[1])) if len(parts) > 1 else ()
    return Migration(
        id=int(m.group(1)), name=path.stem, path=path, up=up, down=down,
        checksum=hashlib.sha256(text.encode()).hexdigest()[:16],
    )


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migrations in order; refuses gaps, duplicates and stray ``.sql`` names."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    migrations = [parse_file(p) for p in files]
    seen: dict[int, str] = {}
    for mig in migrations:
        if mig.id in seen:
            raise MigrationError(f"duplicate migration number {mig.id:04d}: {seen[mig.id]} and {mig.name}")
        seen[mig.id] = mig.name
    for expected, mig in enumerate(sorted(migrations, key=lambda m: m.id), start=1):
        if mig.id != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {mig.name} next): numbers go +1")
    return sorted(migrations, key=lambda m: m.id)


def applied(store: Store, cluster: bool = False) -> dict[int, tuple[str, str]]:
    """{id: (name, checksum)} recorded in the store (bootstraps the record table)."""
    store.command(cluster_statements([BOOTSTRAP], frozenset())[0] if cluster else BOOTSTRAP)
    res = store.query(f"SELECT id, name, checksum FROM {MIGRATIONS_TABLE} FINAL ORDER BY id")
    return {int(r[0]): (str(r[1]), str(r[2])) for r in res.rows}


def pending(store: Store, migrations: Iterable[Migration], cluster: bool = False) -> list[Migration]:
    done = applied(store, cluster)
    todo = []
    for mig in migrations:
        if mig.id in done:
            name, checksum = done[mig.id]
            if checksum != mig.checksum:
                raise MigrationError(
                    f"{mig.name} changed after it was applied (as {name}): add a new migration instead"
                )
        else:
            todo.append(mig)
    return todo


def migrate(
    store: Store,
    migrations: list[Migration] | None = None,
    *,
    dry_run: bool = False,
    cluster: bool = False,
    echo: Callable[[str], None] = lambda _s: None,
) -> list[Migration]:
    """Apply what is pending, in order; returns what was (or, dry run, would be) applied.
    ``cluster``: apply the cluster form (:func:`cluster_statements`) on a ClickHouse cluster."""
    migrations = load() if migrations is None else migrations
    todo = pending(store, migrations, cluster)
    tables = all_tables(migrations)
    for mig in todo:
        stmts = cluster_statements(mig.up, tables) if cluster else list(mig.up)
        echo(f"{'would apply' if dry_run else 'applying'} {mig.name} ({len(stmts)} statements)")
        for stmt in stmts:
            if dry_run:
                echo(stmt + ";\n")
            else:
                store.command(stmt)
        if not dry_run:
            store.command(
                f"INSERT INTO {MIGRATIONS_TABLE} (id, name, checksum) "
                f"VALUES ({mig.id}, {quote(mig.name)}, {quote(mig.checksum)})"
            )
    return todo


def rollback(store: Store, to: int, migrations: list[Migration] | None = None) -> list[Migration]:
    """Run the ``-- down`` sections of applied migrations above ``to``, newest first."""
    migrations = load() if migrations is None else migrations
    done = applied(store)
    undone = []
    for mig in sorted(migrations, key=lambda m: -m.id):
        if mig.id <= to or mig.id not in done:
            continue
        for stmt in mig.down:
            store.command(stmt)
        store.command(f"DELETE FROM {MIGRATIONS_TABLE} WHERE id = {mig.id}")
        undone.append(mig)
    return undone


# --- reference data -------------------------------------------------------------------------------

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "geo"
IMD_COLUMNS = {"lsoa21_code": "string", "imd_score": "float64", "imd_rank": "uint32", "imd_decile": "uint8"}


def imd_file(directory: Path = REFERENCE_DIR) -> Path:
    for name in ("imd_lsoa21.csv.gz", "imd_lsoa21.csv"):
        if (directory / name).exists():
            return directory / name
    raise MigrationError(f"no imd_lsoa21.csv(.gz) in {directory}: the geography data is not in place")


def load_reference(store: Store, path: Path | None = None) -> int:
    """(Re)load IMD by LSOA into ``imd_lsoa21``; idempotent (same file, same token; new rows
    replace old by LSOA). Returns the rows in the file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path = imd_file() if path is None else path
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types={k: getattr(pa, v)() for k, v in IMD_COLUMNS.items()},
            include_columns=list(IMD_COLUMNS)))
    except (pa.ArrowInvalid, KeyError) as exc:
        raise MigrationError(f"{path}: not an IMD table with columns {', '.join(IMD_COLUMNS)}: {exc}") from None
    bad = [d for d in set(table.column("imd_decile").to_pylist()) if d is None or not 1 <= d <= 10]
    if table.num_rows == 0 or bad:
        raise MigrationError(f"{path}: {'no rows' if not table.num_rows else f'deciles outside 1-10: {bad[:5]}'}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    store.insert_arrow("imd_lsoa21", table, f"imd_lsoa21:{digest}")
    return int(table.num_rows)


def reference_loaded(store: Store) -> bool:
    return int(store.query("SELECT count() FROM imd_lsoa21").scalar() or 0) > 0


# --- cluster variant ------------------------------------------------------------------------------

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "deploy" / "clickhouse" / "cluster"
CLUSTER = "'{cluster}'"
#: Tables every shard holds in full (small references, the migration record, and the loader's
#: journal and staging, which the one loader reads back whole), not sharded.
CLUSTER_GLOBAL = frozenset({"imd_lsoa21", MIGRATIONS_TABLE, "load_journal", "incident_changes_staged",
                            "handover_changes_staged", "call_changes_staged"})
#: Fact tables are sharded by ``cityHash64(trust, <id>)``: all versions of an incident (and each
#: -1/+1 pair) on one shard, so FINAL, ReplacingMergeTree and VersionedCollapsingMergeTree work
#: shard-locally. Rollups (only written by materialised views) by ``rand()``.

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\s*\n", re.M)
_ENGINE = re.compile(r"^ENGINE = (\w*MergeTree)(?:\(([^)\n]*)\))?\s*$", re.M)
_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS", re.M)
_VIEW = re.compile(r"^CREATE OR REPLACE VIEW (\w+) AS", re.M)
_DROP = re.compile(r"^DROP (TABLE|VIEW) IF EXISTS (\w+)$")


def _replicated(match: re.Match[str], table: str, global_table: bool) -> str:
    path = "/clickhouse/tables/" + ("all" if global_table else "{shard}") + "/{database}/" + table
    args = [f"'{path}'", "'{replica}'"] + ([match.group(2)] if match.group(2) else [])
    return f"ENGINE = Replicated{match.group(1)}({', '.join(args)})"


def cluster_statements(statements: Iterable[str], tables: frozenset[str]) -> list[str]:
    """The cluster form of single-node statements: every MergeTree table becomes ``<name>_local``
    (Replicated, ON CLUSTER) behind a ``Distributed`` table with the original name, so the sink and
    the queries use the same names; materialised views read and write the local tables (each
    shard rolls up its own changes); plain views and global tables keep their names."""
    local = {t: f"{t}_local" for t in tables if t not in CLUSTER_GLOBAL}

    def localise(sql: str) -> str:
        for name, loc in local.items():
            sql = re.sub(rf"\b{name}\b", loc, sql)
        return sql

    out: list[str] = []
    for stmt in statements:
        if m := _CREATE_TABLE.search(stmt):
            name = m.group(1)
            is_global = name in CLUSTER_GLOBAL
            target = name if is_global else local[name]
            body = stmt.replace(m.group(0), f"CREATE TABLE IF NOT EXISTS {target} ON CLUSTER {CLUSTER}\n", 1)
            body = _ENGINE.sub(functools.partial(_replicated, table=target, global_table=is_global), body, count=1)
            out.append(body)
            if not is_global:
                ident = re.search(r"^\s+(incident_id|call_id) String,$", stmt, re.M)
                key = f"cityHash64(trust, {ident.group(1)})" if ident else "rand()"
                out.append(
                    f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER {CLUSTER} AS {target}\n"
                    f"ENGINE = Distributed({CLUSTER}, currentDatabase(), {target}, {key})"
                )
        elif m := _MV.search(stmt):
            head = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {m.group(1)} ON CLUSTER {CLUSTER} TO {local.get(m.group(2), m.group(2))} AS"
            out.append(head + localise(stmt[m.end():]))
        elif m := _VIEW.search(stmt):
            out.append(stmt.replace(m.group(0), f"CREATE OR REPLACE VIEW {m.group(1)} ON CLUSTER {CLUSTER} AS", 1))
        elif m := _DROP.match(stmt.strip()):
            kind, name = m.groups()
            out.append(f"DROP {kind} IF EXISTS {name} ON CLUSTER {CLUSTER} SYNC")
            if name in local:
                out.append(f"DROP {kind} IF EXISTS {local[name]} ON CLUSTER {CLUSTER} SYNC")
        else:
            raise MigrationError(f"no cluster form for statement: {stmt[:80]}")
    return out


def all_tables(migrations: Iterable[Migration]) -> frozenset[str]:
    names = {m.group(1) for mig in migrations for s in mig.up if (m := _CREATE_TABLE.search(s))}
    return frozenset(names | {MIGRATIONS_TABLE})


def cluster_files(migrations: list[Migration] | None = None) -> dict[str, str]:
    """{file name: text} of the cluster variant of every migration (and the bootstrap)."""
    migrations = load() if migrations is None else migrations
    tables = all_tables(migrations)
    header = ("-- GENERATED by `amb db cluster-sql` from {src}: do not edit.\n"
              "-- Cluster form: Replicated*MergeTree <table>_local + Distributed <table> (sinks/README.md).\n")
    files = {"0000_create_schema_migrations.sql": header.format(src="sinks/migrate.py BOOTSTRAP") + "-- up\n"
             + ";\n\n".join(cluster_statements([BOOTSTRAP], tables)) + ";\n"}
    for mig in migrations:
        text = header.format(src=f"sinks/migrations/{mig.path.name}") + "-- up\n" + ";\n\n".join(cluster_statements(mig.up, tables)) + ";\n"
        if mig.down:
            text += "\n-- down\n" + ";\n".join(cluster_statements(mig.down, tables)) + ";\n"
        files[mig.path.name] = text
    return files


def write_cluster_files(directory: Path = CLUSTER_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in cluster_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
