"""`amb db`: create and inspect the ClickHouse store (embedded chDB, or a server at CLICKHOUSE_URL)."""

from __future__ import annotations

from pathlib import Path

import click

from amb import config
from sinks import migrate as mig
from sinks.store import opened


@click.group("db", help="""Create and inspect the ClickHouse store.

The store is embedded chDB in AMB_CHDB_PATH (default AMB_DATA_DIR/chdb), or the ClickHouse server
at CLICKHOUSE_URL when that is set: the same migrations and SQL run on both. A chDB store can be
open in one process at a time (the sink, or `amb serve`).

\b
Example:
  amb db migrate --dry-run && amb db migrate && amb db status
""")
def command() -> None:
    pass


@command.command("migrate", help="""Apply pending migrations (sinks/migrations/NNNN_verb_object.sql) in order,
record each in schema_migrations, then load the IMD reference table if it is empty. Idempotent.

\b
Example:
  amb db migrate --dry-run     # print the statements that would run
  amb db migrate
""")
@click.option("--dry-run", is_flag=True, help="Print what would run; change nothing.")
@click.option("--cluster", is_flag=True,
              help="Apply the cluster form (Replicated + Distributed, ON CLUSTER '{cluster}') on a server.")
def migrate_cmd(dry_run: bool, cluster: bool) -> None:
    settings = config.load()
    migrations = mig.load()
    with opened(settings) as store:
        done = mig.migrate(store, migrations, dry_run=dry_run, cluster=cluster, echo=click.echo)
        where = settings.clickhouse_url.split("@")[-1] if settings.clickhouse_url else str(settings.chdb_dir)
        if dry_run:
            click.echo(f"{len(done)} migration(s) pending in {where}")
            return
        click.echo(f"{len(done)} migration(s) applied; {where} is at {migrations[-1].name}")
        if not mig.reference_loaded(store):
            try:
                n = mig.load_reference(store)
                click.echo(f"loaded {n} IMD rows into imd_lsoa21")
            except mig.MigrationError as exc:
                click.echo(f"warning: IMD reference not loaded ({exc}); run `amb db load-reference --file PATH`", err=True)


@command.command("status", help="""Show the backend, applied and pending migrations, and fact row counts.

\b
Example:
  amb db status
""")
def status() -> None:
    settings = config.load()
    migrations = mig.load()
    with opened(settings) as store:
        done = mig.applied(store)
        click.echo(f"backend: {store.backend} ({settings.clickhouse_url.split('@')[-1] if settings.clickhouse_url else settings.chdb_dir})")
        for m in migrations:
            click.echo(f"  {'applied' if m.id in done else 'PENDING'}  {m.name}")
        if all(m.id in done for m in migrations):
            rows = store.query(
                "SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts "
                "WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table").rows
            for table, n, size in rows:
                click.echo(f"  {table:<28} {int(n):>12,} rows {int(size) / 1e6:>10.1f} MB")


@command.command("check", help="""Check the store is consistent: the signed changes net to one row per current
fact, and every rollup's England total equals them. Exit 1 with the differences otherwise.

\b
Example:
  amb db check
""")
def check() -> None:
    from sinks.loader import check as check_store

    with opened(config.load()) as store:
        problems = check_store(store)
    if problems:
        raise click.ClickException("store inconsistent: " + "; ".join(problems))
    click.echo("store consistent: changes, facts and rollups agree")


@command.command("load-reference", help="""(Re)load IMD 2025 by LSOA 2021 into imd_lsoa21 (idempotent).

\b
Example:
  amb db load-reference --file data/geo/imd_lsoa21.csv.gz
""")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV (optionally .gz) with lsoa21_code, imd_score, imd_rank, imd_decile. Default: data/geo.")
def load_reference(path: Path | None) -> None:
    with opened(config.load()) as store:
        click.echo(f"loaded {mig.load_reference(store, path)} IMD rows into imd_lsoa21")


@command.command("rollback", help="""Undo applied migrations above number TO (their -- down sections), newest first.
Destroys data in the dropped tables.

\b
Example:
  amb db rollback --to 5 --yes
""")
@click.option("--to", "to", type=int, required=True, help="Keep migrations up to this number (0 = none).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rollback(to: int, yes: bool) -> None:
    if not yes:
        click.confirm(f"drop everything created by migrations above {to:04d}?", abort=True)
    with opened(config.load()) as store:
        for m in mig.rollback(store, to):
            click.echo(f"rolled back {m.name}")


@command.command("cluster-sql", help="""Write the cluster form of every migration (ReplicatedMergeTree tables
<name>_local behind Distributed <name>) to deploy/clickhouse/cluster, or check it is up to date.

\b
Example:
  amb db cluster-sql --check
""")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=mig.CLUSTER_DIR, show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the files differ from what the migrations generate.")
def cluster_sql(out: Path, check: bool) -> None:
    files = mig.cluster_files()
    if check:
        stale = [n for n, text in files.items() if not (out / n).exists() or (out / n).read_text() != text]
        extra = sorted(p.name for p in out.glob("*.sql") if p.name not in files) if out.exists() else []
        if stale or extra:
            raise click.ClickException(f"cluster SQL out of date: {', '.join(stale + extra)}; run `amb db cluster-sql`")
        click.echo(f"{len(files)} cluster files up to date in {out}")
        return
    for path in mig.write_cluster_files(out):
        click.echo(f"wrote {path}")
