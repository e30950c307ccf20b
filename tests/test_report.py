"""The ICB report (`amb report icb`): every figure from a chDB store loaded with simulated fact
versions (duplicates, late events and corrections included) equals the batch oracle on the same
events; the published HTML is self-contained and disclosure-controlled; the command's errors are
one line."""

from __future__ import annotations

import csv
import gzip
import os
import random
import re
from collections.abc import Iterator, Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from amb import config
from amb.commands import report as report_cmd
from amb.errors import AmbError
from amb.insight import report as rep
from amb.insight.render import fmt
from amb.simulate_io import load_pool
from domain.disclosure import SUPPRESSED
from domain.facts import build_facts
from domain.icb_report import Figures, compose, disclose, oracle_inputs
from domain.incident import apply_any, state_key
from domain.oracle import compute
from domain.simulate import SimConfig, clean_events
from sinks import migrate as mig
from sinks.loader import load_facts
from sinks.store import ChdbStore
from streams.geo import IndexGeo

START = date(2026, 10, 1)
DAYS = 3
TRUSTS = ("R1F", "RYE", "RYD")  # the South East's trusts: Hampshire and Isle of Wight has two
ICB = "E54000042"  # Hampshire and Isle of Wight, ODS QRL
DAY_MS = 86_400_000
PERIOD = rep.Period(date(2026, 10, 1), date(2026, 10, 2))  # part of the data: the filter matters


class CachedGeo:
    """The geography index with answers cached by (location or LSOA, UTC day): the test's period is
    inside one boundary vintage, and the index's per-call cost dominated the test's time."""

    def __init__(self, inner: IndexGeo) -> None:
        self.inner = inner
        self.placed: dict[Any, tuple[str | None, str]] = {}
        self.up: dict[tuple[str, int], Any] = {}

    def attribute(self, locations: Sequence[Any], times_ms: Sequence[int]) -> list[tuple[str | None, str]]:
        keys = [(loc, t // DAY_MS) for loc, t in zip(locations, times_ms, strict=True)]
        todo = sorted({i for i, k in enumerate(keys) if k not in self.placed}, key=lambda i: i)
        first = {keys[i]: i for i in reversed(todo)}
        if first:
            idx = sorted(first.values())
            got = self.inner.attribute([locations[i] for i in idx], [times_ms[i] for i in idx])
            for i, g in zip(idx, got, strict=True):
                self.placed[keys[i]] = (g[0], g[1])
        return [self.placed[k] for k in keys]

    def areas(self, lsoa21: str, at_ms: int) -> Any:
        k = (lsoa21, at_ms // DAY_MS)
        if k not in self.up:
            self.up[k] = self.inner.areas(lsoa21, at_ms)
        return self.up[k]


@lru_cache(maxsize=1)
def simulated() -> tuple[Any, list[Any], list[Any], list[Any]]:
    """The oracle's report and every fact version a stream worker emits, in delivery order."""
    settings = config.load()
    cfg = SimConfig(start=START, days=DAYS, trusts=TRUSTS, seed=5, scale=0.15)
    events = list(clean_events(cfg, load_pool(settings, "index")))
    geo = CachedGeo(IndexGeo.load(settings.geo_index_dir))
    states: dict[Any, Any] = {}
    versions: list[Any] = []
    for e in events:
        k = state_key(e)
        old = states.get(k)
        new = apply_any(old, e)
        if new is not old:
            states[k] = new
            versions.append(new)
    facts = build_facts(versions, geo, geo)
    return compute(events, geo, geo), facts.incidents, facts.handovers, facts.calls


@lru_cache(maxsize=1)
def imd() -> dict[str, int]:
    path = config.load().geo_data_dir / "imd_lsoa21.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        return {r["lsoa21_code"]: int(r["imd_decile"]) for r in csv.DictReader(f)}


def build_store(path: Path) -> None:
    """A migrated chDB store holding the simulated fact versions, shuffled, a fifth redelivered."""
    _, inc, hand, calls = simulated()
    rnd = random.Random(7)
    inc = inc + rnd.sample(inc, len(inc) // 5)
    rnd.shuffle(inc)
    with ChdbStore(path) as store:
        mig.migrate(store)
        mig.load_reference(store)
        step = 4000
        for i in range(0, max(len(inc), len(hand), len(calls)), step):
            load_facts(store, f"sim:{i}", inc[i:i + step], hand[i:i + step], calls[i:i + step])


_BUILT: dict[str, Path] = {}


def built_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated store, built once per session (the browser test serves it too)."""
    if "sim" not in _BUILT:
        path = tmp_path_factory.mktemp("report") / "chdb"
        build_store(path)
        _BUILT["sim"] = path
    return _BUILT["sim"]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_store(tmp_path_factory)


@pytest.fixture
def store(store_dir: Path) -> Iterator[ChdbStore]:
    with ChdbStore(store_dir) as s:
        yield s


def context(icb: str = ICB) -> Any:
    return rep.load_reference(config.load().geo_data_dir).context(icb, PERIOD)


def oracle_figures(icb: str = ICB) -> Figures:
    report, *_ = simulated()
    ctx = context(icb)
    return compose(oracle_inputs(report.incidents, report.handovers, report.calls, ctx, imd()), ctx)


def test_every_figure_equals_the_batch_oracle(store: ChdbStore) -> None:
    got = rep.figures(store, context())
    want = oracle_figures()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name
    # the data exercise what the report is for
    std = {r[0]: r for r in got["standards"].rows}
    cols = got["standards"].columns
    assert int(std["icb"][cols.index("incidents")] or 0) > 50
    assert len(got["trusts"].rows) == 2  # R1F and RYE serve Hampshire and Isle of Wight
    assert any(r[3] for r in got["destinations"].rows)  # a cross-border site
    assert len(got["host_split"].rows) > 1
    assert len(got["imd"].rows) >= 5
    assert int(got["calls_111"].rows[0][3] or 0) > 0
    assert len(got["daily"].rows) == 2


def test_another_icb_and_a_peer_equal_the_oracle_too(store: ChdbStore) -> None:
    icb = "E54000064"  # Sussex, served by one trust
    assert rep.figures(store, context(icb)) == oracle_figures(icb)


def test_disclosure_hides_small_counts_and_figures_on_few_records() -> None:
    pub = disclose(oracle_figures())
    for name, t in pub.items():
        for r in t.rows:
            for c, v in zip(t.columns, r, strict=True):
                if isinstance(v, int) and not isinstance(v, bool) and c != "day_ms" and c != "imd_decile":
                    assert v == 0 or v >= 8, (name, c, v)
    assert any(v == SUPPRESSED for t in pub.values() for r in t.rows for v in r)


@click.group()
def cli() -> None:
    pass


cli.add_command(report_cmd.command)  # until amb/cli.py registers it


def amb(*args: str, chdb: Path, cwd: Path) -> Result:
    """`amb ...` in this process (the store is closed between tests), output and one-line errors
    as `amb` prints them (amb.cli.main turns an AmbError into one line)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args), env={"AMB_CHDB_PATH": str(chdb)})
    finally:
        os.chdir(old)


def test_the_command_writes_one_self_contained_page_and_prints_the_summary(store_dir: Path, tmp_path: Path) -> None:
    r = amb("report", "icb", "QRL", "--from", "2026-10-01", "--to", "2026-10-02", chdb=store_dir, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    (page,) = tmp_path.glob("report-QRL-*.html")
    text = page.read_text()
    pub = disclose(oracle_figures())
    row = next(x for x in pub["standards"].rows if x[0] == "icb")
    cols = pub["standards"].columns
    summary = next(line for line in r.output.splitlines() if line.startswith("ICB: "))
    for col in ("incidents", "non_conveyance_rate", "C1_mean_s", "C2_p90_s", "hours_lost"):
        assert row[cols.index(col)] != SUPPRESSED, col
        assert fmt(col, row[cols.index(col)]) in summary.split(), col
        assert f">{fmt(col, row[cols.index(col)])}<" in text, col
    assert text.count("<svg") >= 8
    # self-contained: no scripts, no external stylesheets, images, fonts or links to fetch
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "url(http" not in text and "@import" not in text


@pytest.mark.parametrize(("args", "message"), [
    (("QZZ", "--period", "2026-10"), "unknown ICB 'QZZ'"),
    (("QRL", "--period", "2026-13"), "is not a month like 2026-10"),
    (("QRL",), "give --period YYYY-MM or both --from and --to"),
    (("QRL", "--period", "2026-10", "--from", "2026-10-01"), "not both"),
    (("QRL", "--from", "2026-10-05", "--to", "2026-10-01"), "is after"),
])
def test_bad_requests_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    from amb.insight import build_report

    class Unused:
        def query(self, sql: str, params: Any = None) -> Any:
            raise AssertionError("a bad request reached the store")

    with pytest.raises(rep.ReportError, match=re.escape(message)):
        build_report(Unused(), args[0], *_period_args(args[1:]), config.load().geo_data_dir)


def _period_args(args: tuple[str, ...]) -> tuple[str | None, date | None, date | None]:
    opts = dict(zip(args[::2], args[1::2], strict=True))
    d = {k: date.fromisoformat(v) for k, v in opts.items() if k in ("--from", "--to")}
    return opts.get("--period"), d.get("--from"), d.get("--to")


def test_a_missing_store_is_a_one_line_error(tmp_path: Path) -> None:
    r = amb("report", "icb", "QRL", "--period", "2026-10", chdb=tmp_path / "none", cwd=tmp_path)
    assert isinstance(r.exception, AmbError) and "\n" not in str(r.exception)
    assert "no chDB store" in str(r.exception)


# --- the pure parts, by hand ------------------------------------------------------------------------------
def _ctx() -> Any:
    from domain.icb_report import Context

    return Context("E54000001", "E40000001", ("E54000002",), "RX1", 0, 10**13, "test",
                   {"E54000001": "ICB one", "E54000002": "ICB two"})


def _inputs(**over: Any) -> Any:
    from domain.icb_report import Inputs, disposition_numbers

    base: dict[str, Any] = dict(standards={}, trusts={}, sites={}, site_icbs={}, host_split={}, imd={}, quality={},
                                quality_geo={}, calls={}, outcomes=disposition_numbers(0, 0, 0, 0, 0), daily={})
    return Inputs(**{**base, **over})


def test_a_sites_catchment_is_the_icb_with_most_arrivals_ties_to_the_lower_code() -> None:
    from domain.icb_report import handover_numbers

    h = handover_numbers(10, 10, 6_000_000, (1, 0, 0, 0), 0, 900_000)
    inp = _inputs(sites={"S1": h, "S2": h},
                  site_icbs={"S1": {"E54000001": 3, "E54000002": 5}, "S2": {"E54000002": 4, "E54000001": 4}})
    rows = compose(inp, _ctx())["destinations"].rows
    assert [(r[0], r[1], r[3]) for r in rows] == [("S1", "E54000002", True), ("S2", "E54000001", False)]


def test_handover_numbers_match_the_oracle_accumulator() -> None:
    from domain.icb_report import handover_numbers
    from domain.metrics import MINUTE_MS, Handovers, centile

    values = [5 * MINUTE_MS, 16 * MINUTE_MS, 31 * MINUTE_MS, 46 * MINUTE_MS, 61 * MINUTE_MS + 1]
    acc = Handovers()
    for v in values:
        acc.add(v, None)
    acc.add(None, None)  # an arrival with no handover yet
    want = acc.numbers()
    lost = sum(max(0, v - 15 * MINUTE_MS) for v in values)
    got = handover_numbers(6, 5, sum(values), (4, 3, 2, 1), lost, centile(values))
    assert {k: want[k] for k in got} == got


def test_disclosure_suppresses_a_complement_so_a_small_count_cannot_be_subtracted() -> None:
    from domain.icb_report import Table

    table = Table(("trust", "geo_status", "incidents"),
                  (("RX1", "unknown_postcode", 3), ("RX1", "outside_england", 40), ("RX2", "no_location", 0)),
                  ("g", "g", "g"))
    pub = disclose({"quality_geo": table})["quality_geo"]
    assert [r[2] for r in pub.rows] == [SUPPRESSED, SUPPRESSED, 0]  # 3 hidden, and 40 with it (the total is known)


def test_a_correction_that_moves_an_incident_out_of_the_period_or_icb_leaves_the_report(tmp_path: Path) -> None:
    """The store's FINAL rows are filtered after the newest version wins: an old version inside
    the period and ICB does not linger when a newer one moved the incident elsewhere."""
    from dataclasses import replace

    report, *_ = simulated()
    mine = [f for f in report.incidents if f.icb == ICB and PERIOD.lo_ms <= f.day_ms < PERIOD.hi_ms]
    hand = {(h.trust, h.incident_id): h for h in report.handovers}
    moved_out = replace(mine[0], version=mine[0].version + 1, day_ms=PERIOD.hi_ms)
    moved_away = replace(mine[1], version=mine[1].version + 1, icb="E54000064", region="E40000005")
    newer = [moved_out, moved_away, *mine[2:10]]
    handovers = [h for f in mine[:10] if (h := hand.get((f.trust, f.incident_id))) is not None]
    with ChdbStore(tmp_path / "chdb") as store:
        mig.migrate(store)
        mig.load_reference(store)
        load_facts(store, "old", mine[:10], handovers)
        load_facts(store, "new", newer)
        got = rep.figures(store, context())
    ctx = context()
    want = compose(oracle_inputs(newer, handovers, [], ctx, imd()), ctx)
    assert got == want
    std = got["standards"]
    assert std.rows[0][std.columns.index("incidents")] == 8  # 10 loaded: one left the period, one the ICB
