"""Migrations: the numbered set loads, applies on an empty chDB store, is idempotent, is recorded,
reverses, and its cluster form is generated from it and kept in step."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sinks import migrate as mig
from sinks.loader import KINDS
from sinks.store import ChdbStore

MIGRATIONS = mig.load()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path / "chdb")
    yield s
    s.close()


def tables(store: ChdbStore) -> dict[str, str]:
    rows = store.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").rows
    return {str(n): str(e) for n, e in rows}


def columns(store: ChdbStore, table: str) -> list[str]:
    rows = store.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
        "AND default_kind != 'ALIAS' ORDER BY position", {"t": table}).rows
    return [str(r[0]) for r in rows]


def test_the_shipped_set_is_numbered_one_up_without_gaps() -> None:
    assert [m.id for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.up for m in MIGRATIONS) and all(m.down for m in MIGRATIONS)


def _copy(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    for n in names:
        shutil.copy(mig.MIGRATIONS_DIR / n, d / n)
    return d


def test_the_loader_refuses_a_gap(tmp_path: Path) -> None:
    names = [m.path.name for m in MIGRATIONS]
    d = _copy(tmp_path, [names[0], names[2]])
    with pytest.raises(mig.MigrationError, match="0002 is missing"):
        mig.load(d)


def test_the_loader_refuses_a_duplicate_number(tmp_path: Path) -> None:
    d = _copy(tmp_path, [MIGRATIONS[0].path.name, MIGRATIONS[1].path.name])
    (d / "0002_create_other_thing.sql").write_text("-- up\nSELECT 1;\n")
    with pytest.raises(mig.MigrationError, match="duplicate migration number 0002"):
        mig.load(d)


def test_the_loader_refuses_a_badly_named_file(tmp_path: Path) -> None:
    d = _copy(tmp_path, [MIGRATIONS[0].path.name])
    (d / "2_things.sql").write_text("-- up\nSELECT 1;\n")
    with pytest.raises(mig.MigrationError, match="NNNN_verb_object"):
        mig.load(d)


def test_statements_split_on_semicolons_outside_quotes_and_comments() -> None:
    sql = "-- up\nCREATE VIEW v AS SELECT 'a;b' AS x COMMENT 'c; d';\n-- a comment; with a semicolon\nSELECT 2;\n"
    assert mig.split_statements(sql) == ["-- up\nCREATE VIEW v AS SELECT 'a;b' AS x COMMENT 'c; d'",
                                         "-- a comment; with a semicolon\nSELECT 2"]


def test_migrations_apply_on_an_empty_store_and_are_recorded(store: ChdbStore) -> None:
    applied = mig.migrate(store)
    assert [m.id for m in applied] == [m.id for m in MIGRATIONS]
    recorded = mig.applied(store)
    assert {i: name for i, (name, _c) in recorded.items()} == {m.id: m.name for m in MIGRATIONS}
    have = tables(store)
    for name in ("incident_facts", "incident_changes", "handover_facts", "handover_changes", "call_facts",
                 "call_changes", "imd_lsoa21"):
        assert name in have
    for family in ("incident", "handover"):
        for grain in ("hourly", "daily", "monthly"):
            assert have[f"{family}_rollup_{grain}"] == "SummingMergeTree"
            assert have[f"{family}_rollup_{grain}_mv"] == "MaterializedView"
    assert have["incident_changes"] == "VersionedCollapsingMergeTree"
    assert have["incident_facts"] == "ReplacingMergeTree"
    views = store.query("SELECT name, comment FROM system.tables WHERE database = currentDatabase() "
                        "AND engine = 'View'").rows
    assert {str(n) for n, _ in views} == {
        "non_conveyance_icb_month", "handover_site_day", "response_category_month",
        "dispositions_imd_month", "response_imd_month", "handover_imd_month"}
    assert all(len(str(c)) > 20 for _, c in views)  # every analyst view says what it is


def test_the_fact_tables_have_exactly_the_loaders_columns(store: ChdbStore) -> None:
    mig.migrate(store)
    for kind in KINDS:
        assert columns(store, kind.facts_table) == list(kind.columns)
        assert columns(store, kind.changes_table) == [*kind.columns[:3], "sign", *kind.columns[3:]]


def test_applying_twice_changes_nothing_and_every_statement_is_idempotent(store: ChdbStore) -> None:
    mig.migrate(store)
    before = tables(store)
    assert mig.migrate(store) == []
    for m in MIGRATIONS:  # as if a run died between a statement and its record
        for stmt in m.up:
            store.command(stmt)
    assert tables(store) == before
    assert len(store.query("SELECT * FROM schema_migrations FINAL").rows) == len(MIGRATIONS)


def test_dry_run_prints_and_changes_nothing(store: ChdbStore) -> None:
    lines: list[str] = []
    pending = mig.migrate(store, dry_run=True, echo=lines.append)
    assert len(pending) == len(MIGRATIONS)
    assert any("CREATE TABLE IF NOT EXISTS incident_changes" in line for line in lines)
    assert set(tables(store)) == {"schema_migrations"}


def test_a_changed_applied_migration_is_refused(store: ChdbStore, tmp_path: Path) -> None:
    d = _copy(tmp_path, [MIGRATIONS[0].path.name])
    mig.migrate(store, mig.load(d))
    f = d / MIGRATIONS[0].path.name
    f.write_text(f.read_text() + "\n-- edited\n")
    with pytest.raises(mig.MigrationError, match="changed after it was applied"):
        mig.migrate(store, mig.load(d))


def test_rollback_reverses_and_migrate_reapplies(store: ChdbStore) -> None:
    mig.migrate(store)
    undone = mig.rollback(store, 0)
    assert [m.id for m in undone] == [m.id for m in reversed(MIGRATIONS)]
    assert set(tables(store)) == {"schema_migrations"}
    assert mig.applied(store) == {}
    assert len(mig.migrate(store)) == len(MIGRATIONS)


def test_the_imd_reference_loads_idempotently(store: ChdbStore) -> None:
    mig.migrate(store)
    n = mig.load_reference(store)
    assert n > 30_000
    mig.load_reference(store)
    assert store.query("SELECT count() FROM imd_lsoa21").scalar() == n
    assert store.query("SELECT min(imd_decile), max(imd_decile) FROM imd_lsoa21").rows == [(1, 10)]


def test_the_imd_loader_refuses_a_bad_file(store: ChdbStore, tmp_path: Path) -> None:
    mig.migrate(store)
    bad = tmp_path / "imd.csv"
    bad.write_text("lsoa21_code,imd_score,imd_rank,imd_decile\nE01000001,1.0,5,11\n")
    with pytest.raises(mig.MigrationError, match="deciles outside 1-10"):
        mig.load_reference(store, bad)


# --- cluster form ---------------------------------------------------------------------------------


def test_the_cluster_files_are_generated_from_the_migrations_and_up_to_date() -> None:
    from amb.commands import db

    result = CliRunner().invoke(db.command, ["cluster-sql", "--check"])
    assert result.exit_code == 0, result.output


def test_the_cluster_form_keeps_every_table_column_and_view() -> None:
    """Parity: each single-node table has a Replicated local twin with the same body and a
    Distributed table under its own name; views and MVs keep their SELECTs."""
    tables_all = mig.all_tables(MIGRATIONS)
    for m in MIGRATIONS:
        out = mig.cluster_statements(m.up, tables_all)
        for stmt in m.up:
            if stmt.lstrip("-").find("CREATE TABLE IF NOT EXISTS") < 0:
                continue
            name = mig._CREATE_TABLE.search(stmt).group(1)  # type: ignore[union-attr]
            local = name if name in mig.CLUSTER_GLOBAL else f"{name}_local"
            twin = next(s for s in out if f"CREATE TABLE IF NOT EXISTS {local} ON CLUSTER" in s)
            body = stmt[stmt.index("\n(\n") : stmt.index("\nENGINE")]
            assert body in twin
            assert "ENGINE = Replicated" in twin
            if name not in mig.CLUSTER_GLOBAL:
                dist = next(s for s in out if s.startswith(f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER"))
                assert f"Distributed('{{cluster}}', currentDatabase(), {local}," in dist
        mvs = [s for s in out if "MATERIALIZED VIEW" in s]
        for s in mvs:
            assert s.split(" AS\n", 1)[0].endswith("_local")  # writes the shard's local rollup
            assert re.search(r"\nFROM \w+_changes_local\n", s)  # from the shard's local changes
    # facts and changes are sharded by incident so that FINAL and collapsing stay shard-local
    text = mig.cluster_files()["0001_create_incident_facts.sql"]
    assert "incident_changes_local, cityHash64(trust, incident_id))" in text
    assert "incident_facts_local, cityHash64(trust, incident_id))" in text
