"""`amb query` tables from the store equal the batch oracle to the unit, whatever the arrival
order, batching and redelivery of fact versions; corrections move counts between cells."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import FAKE_ATTRIBUTOR, FAKE_HIERARCHY, Case, cases
from test_oracle import EXAMPLE, ICB1, T0
from test_store import stream_facts

from domain.metrics import LONDON, PERIOD_KINDS, TABLES, periods
from domain.oracle import Report, compute
from sinks import migrate as mig
from sinks import queries
from sinks.loader import check, load_facts
from sinks.store import ChdbStore

DATA_TABLES = ("incident_facts", "incident_changes", "handover_facts", "handover_changes", "call_facts", "call_changes",
               *(f"{f}_rollup_{g}" for f in ("incident", "handover") for g in ("hourly", "daily", "monthly")))


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    """One migrated chDB store per module: chDB binds one directory per process, and a module's
    tests run one after another, so the module opens it once and closes it at the end."""
    s = ChdbStore(tmp_path_factory.mktemp("chdb") / "store")
    mig.migrate(s)
    mig.load_reference(s)
    yield s
    s.close()


def truncate(store: ChdbStore) -> None:
    for t in DATA_TABLES:
        store.command(f"TRUNCATE TABLE {t}")


@pytest.fixture
def store(module_store: ChdbStore) -> ChdbStore:
    truncate(module_store)
    return module_store


def oracle(events: list[Any]) -> Report:
    return compute(events, FAKE_ATTRIBUTOR, FAKE_HIERARCHY)


def load_stream(store: ChdbStore, inc: list[Any], hand: list[Any], rnd: random.Random, batch: int) -> None:
    """Load fact versions as a sink would: shuffled, a third redelivered, in batches, unique tokens."""
    run = uuid.uuid4().hex[:8]
    inc = inc + rnd.sample(inc, len(inc) // 3)
    hand = hand + rnd.sample(hand, len(hand) // 3)
    rnd.shuffle(inc)
    rnd.shuffle(hand)
    for n, i in enumerate(range(0, max(len(inc), len(hand)), batch)):
        load_facts(store, f"{run}:{n}", inc[i : i + batch], hand[i : i + batch])


def all_tables(store: ChdbStore, report: Report, kinds: tuple[str, ...] = PERIOD_KINDS, direct: bool = False) -> list[str]:
    """Every (metric, level, period) table that differs from the oracle."""
    bad = []
    for metric in queries.METRICS:
        levels = queries.HANDOVER_LEVELS if metric == "handover" else queries.LEVELS
        for level in levels:
            for by in kinds:
                q = queries.Query(metric, level, by)
                got = queries.run(store, q)
                if got != report.table(metric, level, by):
                    bad.append(f"{metric}/{level}/{by}: {got} != {report.table(metric, level, by)}")
                if direct and queries.run(store, q, direct=True) != got:  # rollups = summed changes
                    bad.append(f"{metric}/{level}/{by}: rollup and changes differ")
    return bad


@pytest.mark.parametrize("batch", [1, 4, 100])
def test_the_worked_example_equals_the_oracle_at_every_level_and_period(store: ChdbStore, batch: int) -> None:
    inc, hand = stream_facts(EXAMPLE)
    load_stream(store, inc, hand, random.Random(batch), batch)
    assert all_tables(store, oracle(EXAMPLE), direct=batch == 4) == []


def test_the_worked_example_by_hand(store: ChdbStore) -> None:
    inc, hand = stream_facts(EXAMPLE)
    load_facts(store, "hand", inc, hand)
    q = queries.Query("response", "icb", "day", ICB1)
    assert queries.run(store, q) == [
        (ICB1, "2026-05-01", "C1", 2, 450.0, 540.0),
        (ICB1, "2026-05-01", "C2", 2, 1650.0, 1800.0),
        (ICB1, "2026-05-01", "C3", 1, 3600.0, 3600.0),
    ]
    assert queries.run(store, queries.Query("handover", "icb", "day", ICB1)) == [
        (ICB1, "2026-05-01", 2, 35.0, 50.0, 2, 1, 1, 0, (5 + 35) / 60)]
    assert queries.run(store, queries.Query("dispositions", "icb", "day")) == [
        (ICB1, "2026-05-01", 5, 1, 2, 1, 1, 1), ("unknown", "2026-05-01", 1, 1, 0, 0, 0, 0)]


def test_a_correction_moves_the_incident_between_cells_and_never_adds(store: ChdbStore) -> None:
    """INC-6 is conveyed to ED (version 3) then corrected to see and treat (version 4); a late
    location moves another incident from ICB 1 to ICB 3."""
    inc, _ = stream_facts(EXAMPLE)
    inc6 = sorted((f for f in inc if f.incident_id == "INC-6"), key=lambda f: f.version)
    conveyed = next(f for f in inc6 if f.disposition == "conveyed_ed")
    corrected = inc6[-1]
    assert corrected.disposition == "see_and_treat" and corrected.version > conveyed.version

    def england() -> tuple[Any, ...]:
        (row,) = queries.run(store, queries.Query("dispositions", "england", "day"))
        return row[2:]

    load_facts(store, "a", [conveyed])
    assert england() == (1, 0, 0, 1, 0, 0)
    load_facts(store, "b", [corrected])
    assert england() == (1, 0, 1, 0, 0, 0)  # moved from conveyed_ed to see_and_treat
    load_facts(store, "b2", [conveyed])  # a stale redelivery changes nothing
    assert england() == (1, 0, 1, 0, 0, 0)
    assert check(store) == []

    moved = replace(corrected, version=corrected.version + 1, lsoa="E01000005", msoa="E02000004",
                    lad="E06000003", sicbl="E38000003", icb="E54000003", region="E40000002")
    load_facts(store, "c", [moved])
    by_icb = queries.run(store, queries.Query("dispositions", "icb", "day"))
    assert [r[0] for r in by_icb] == ["E54000003"]  # the ICB 1 cell is gone, not left at zero
    assert england() == (1, 0, 1, 0, 0, 0)
    # the facts table keeps only the current version; the changes net to one row
    assert store.query("SELECT count() FROM incident_facts FINAL").scalar() == 1
    assert store.query("SELECT sum(sign) FROM incident_changes").scalar() == 1
    # merges collapse the cancelled pairs and drop the zero rollup rows: the answers stay
    for t in ("incident_changes", "incident_rollup_daily"):
        store.command(f"OPTIMIZE TABLE {t} FINAL")
    assert store.query("SELECT count() FROM incident_changes").scalar() == 1
    assert england() == (1, 0, 1, 0, 0, 0)
    assert [r[0] for r in queries.run(store, queries.Query("dispositions", "icb", "day"))] == ["E54000003"]


def test_dates_are_inclusive_london_days(store: ChdbStore) -> None:
    inc, hand = stream_facts(EXAMPLE)
    load_facts(store, "d", inc, hand)
    day = date(2026, 5, 1)
    for by in ("day", "month", "fy"):
        full = queries.run(store, queries.Query("dispositions", "england", by))
        assert queries.run(store, queries.Query("dispositions", "england", by, start=day, end=day)) == full
        assert queries.run(store, queries.Query("dispositions", "england", by, start=date(2026, 5, 2))) == []
        assert queries.run(store, queries.Query("response", "england", by, end=date(2026, 4, 30))) == []
    # whole months read the monthly rollup, partial ones the daily: same answer
    whole = queries.Query("handover", "site", "month", start=date(2026, 5, 1), end=date(2026, 5, 31))
    part = queries.Query("handover", "site", "month", start=date(2026, 4, 20), end=date(2026, 5, 3))
    assert queries.rollup_sql(whole)[0] != queries.rollup_sql(part)[0]
    assert queries.run(store, whole) == queries.run(store, part) != []


def test_an_hour_after_midnight_bst_is_the_same_london_day(store: ChdbStore) -> None:
    inc, _ = stream_facts(EXAMPLE)
    f = inc[-1]
    t = 1_777_590_000_000  # 2026-04-30T23:00Z = 2026-05-01 00:00 BST
    p = periods(t)
    late = replace(f, clock_start_ms=t, period_ms=t, hour_ms=p.hour, day_ms=p.day, week_ms=p.week,
                   month_ms=p.month, fy_ms=p.fy)
    load_facts(store, "bst", [late])
    rows = queries.run(store, queries.Query("dispositions", "england", "day", start=date(2026, 5, 1), end=date(2026, 5, 1)))
    assert [r[1] for r in rows] == ["2026-05-01"]


def test_the_analyst_views_agree_with_the_query_tables(store: ChdbStore) -> None:
    inc, hand = stream_facts(EXAMPLE)
    load_facts(store, "v", inc, hand)
    view = store.query("SELECT icb, incidents, hear_and_treat, see_and_treat, conveyed_ed, conveyed_elsewhere, "
                       "open FROM non_conveyance_icb_month ORDER BY icb").rows
    q = queries.run(store, queries.Query("dispositions", "icb", "month"))
    assert [(r[0], *r[2:]) for r in q] == [tuple(v) for v in view]
    site = store.query("SELECT site, handovers, mean_min, p90_min, over_15, over_30, over_45, over_60, hours_lost "
                       "FROM handover_site_day ORDER BY site").rows
    q = queries.run(store, queries.Query("handover", "site", "day"))
    assert [(r[0], *r[2:]) for r in q] == [tuple(v) for v in site]
    resp = store.query("SELECT category, responses, mean_s, p90_s FROM response_category_month "
                       "WHERE level = 'icb' AND code = {c:String} ORDER BY category", {"c": ICB1}).rows
    q = queries.run(store, queries.Query("response", "icb", "month", ICB1))
    assert [r[2:] for r in q] == [tuple(v) for v in resp]
    # IMD: the fake LSOAs are real codes E01000001.. with real deciles; unknown geography is NULL
    imd = store.query("SELECT imd_decile, incidents + open FROM dispositions_imd_month ORDER BY imd_decile").rows
    assert sum(n for _, n in imd) == 7 and (None, 1) in imd
    assert store.query("SELECT sum(responses) FROM response_imd_month").scalar() == 5
    assert store.query("SELECT sum(handovers) FROM handover_imd_month").scalar() == 2


def test_render_formats() -> None:
    cols = TABLES["response"]
    rows = [("E54000001", "2026-05", "C1", 2, 450.0, None)]
    assert queries.render(cols, rows, "csv").splitlines() == [",".join(cols), "E54000001,2026-05,C1,2,450.0,"]
    assert json.loads(queries.render(cols, rows, "json"))[0]["p90_s"] is None
    assert queries.render(cols, rows, "table").splitlines()[0].split() == list(cols)


def test_bad_queries_are_refused_with_the_choices() -> None:
    with pytest.raises(queries.QueryError, match="expected one of england"):
        queries.Query("dispositions", "site")
    with pytest.raises(queries.QueryError, match="after"):
        queries.Query("handover", "icb", start=date(2026, 5, 2), end=date(2026, 5, 1))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases(max_incidents=6), st.integers(1, 7), st.randoms(use_true_random=False))
def test_generated_streams_equal_the_oracle(module_store: ChdbStore, case: Case, batch: int, rnd: random.Random) -> None:
    truncate(module_store)
    inc, hand = stream_facts(case.arrived)
    load_stream(module_store, inc, hand, rnd, batch)
    assert all_tables(module_store, oracle(case.events), kinds=("hour", "week", "fy")) == []
    assert check(module_store) == []


def windowed_tables(store: ChdbStore, report: Report) -> list[str]:
    """Response and handover for one area and a date window (the centile's PREWHERE and its date
    column, which depends on the window) against the oracle: every ICB and site, by hour and day for
    each London day that has data, by month for each whole month that has data."""
    bad = []
    days = sorted({datetime.fromtimestamp(k[4] / 1000, LONDON).date() for k in report.rows if k[3] == "day"})
    months = sorted({d.replace(day=1) for d in days})
    windows = [(by, d, d) for d in days for by in ("hour", "day")]
    windows += [("month", m, (m + timedelta(days=32)).replace(day=1) - timedelta(days=1)) for m in months]
    for metric, level in (("response", "icb"), ("handover", "icb"), ("handover", "site")):
        codes = sorted({k[2] for k in report.rows if k[1] == level})
        for code in codes:
            for by, lo, hi in windows:
                q = queries.Query(metric, level, by, code, lo, hi)
                got, want = queries.run(store, q), queries.oracle_table(report, q)
                if got != want:
                    bad.append(f"{metric}/{level}={code}/{by} {lo}..{hi}: {got} != {want}")
    return bad


def test_one_area_over_a_date_window_equals_the_oracle(store: ChdbStore) -> None:
    inc, hand = stream_facts(EXAMPLE)
    load_stream(store, inc, hand, random.Random(5), 3)
    report = oracle(EXAMPLE)
    assert any(k[0].startswith("response") for k in report.rows)
    assert windowed_tables(store, report) == []


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases(max_incidents=6), st.randoms(use_true_random=False))
def test_generated_streams_over_date_windows_equal_the_oracle(module_store: ChdbStore, case: Case, rnd: random.Random) -> None:
    truncate(module_store)
    inc, hand = stream_facts(case.arrived)
    load_stream(module_store, inc, hand, rnd, 3)
    assert windowed_tables(module_store, oracle(case.events)) == []


def test_the_cli_prints_the_table(tmp_path: Path, module_store: ChdbStore) -> None:
    """`amb query` end to end in a subprocess (this process holds the module's store)."""
    import subprocess
    import sys

    code = ("import sys, click\nfrom amb.commands import db, query\n"
            "@click.group()\ndef cli(): pass\ncli.add_command(query.command); cli.add_command(db.command)\n"
            "cli.main(sys.argv[1:])\n")
    env = {"AMB_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    root = Path(__file__).resolve().parents[1]

    def amb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              cwd=root, env=env, timeout=300)

    none = amb("query", "dispositions")
    assert none.returncode != 0 and "amb db migrate" in none.stderr + none.stdout
    m = amb("db", "migrate")
    assert m.returncode == 0, m.stderr
    assert f"{len(mig.load())} migration(s) applied" in m.stdout and "IMD rows" in m.stdout
    seed = ("import sys\nsys.path.insert(0, 'tests')\nfrom sinks.store import ChdbStore\nfrom sinks.loader import load_facts\n"
            "from test_store import stream_facts\nfrom test_oracle import EXAMPLE\n"
            "s = ChdbStore(sys.argv[1]); load_facts(s, 'cli', *stream_facts(EXAMPLE)); s.close()\n")
    r = subprocess.run([sys.executable, "-c", seed, str(tmp_path / "chdb")], capture_output=True, text=True, cwd=root,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = amb("query", "handover", "--level", "icb", "--code", ICB1, "--from", "2026-05-01", "--to", "2026-05-01",
              "--by", "day")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split() == [ICB1, "2026-05-01", "2", "35.0", "50.0", "2", "1", "1", "0", "0.67"]
    assert T0  # the worked example's clock start is 2026-05-01


def test_check_finds_a_batch_applied_twice(store: ChdbStore) -> None:
    """What a crash between the changes and the facts insert, replayed in other batches, would do."""
    inc, hand = stream_facts(EXAMPLE)
    load_facts(store, "x", inc, hand)
    assert check(store) == []
    store.command("INSERT INTO incident_changes SELECT * FROM incident_changes WHERE sign = 1 AND incident_id = 'INC-1'")
    problems = check(store)
    assert any("incident_changes nets to 8 rows but incident_facts holds 7" in p for p in problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.lists(st.integers(-5, 40), max_size=30), replaced=st.lists(st.integers(-5, 40), max_size=30),
       seed=st.integers(0, 2**16))
def test_the_p90_of_signed_rows_is_quantile_exact_of_what_they_net_to(
        module_store: ChdbStore, kept: list[int], replaced: list[int], seed: int) -> None:
    """P90_SQL reads signed rows packed as value * 2 + (sign > 0) and sorted, with no grouping by
    value: each replaced value appears as +1 and as its -1 copy (small values, negative ones too,
    so ties are common), and the answer must be ClickHouse's quantileExact(0.9) of the values kept."""
    from domain.metrics import centile

    rows = [(v, 1) for v in kept] + [(v, 1) for v in replaced] + [(v, -1) for v in replaced]
    random.Random(seed).shuffle(rows)
    literal = "[" + ", ".join(str(v * 2 + (s > 0)) for v, s in rows) + "]"
    got = module_store.query(f"SELECT {queries.P90_SQL} FROM (SELECT arraySort(CAST({literal}, 'Array(Int64)')) AS h, "
                             f"toInt64({len(kept)}) AS t)").scalar()
    assert got == centile(kept)
    if kept:
        direct = module_store.query(f"SELECT quantileExact(0.9)(v) FROM (SELECT arrayJoin([{', '.join(map(str, kept))}]) AS v)")
        assert got == direct.scalar()
