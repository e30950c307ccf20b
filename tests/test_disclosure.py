"""Disclosure control: no count of 1-7 is ever shown, no derived figure rests on fewer than 8
records or on a hidden count, and no suppressed cell can be worked out from the totals the table
publishes (checked here independently, by matrix rank, on random tables)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.disclosure import (
    MIN_COUNT,
    SPECS,
    SUPPRESSED,
    Cell,
    TableSpec,
    Value,
    is_small,
    relations,
    suppress,
)

relaxed = settings(deadline=None, max_examples=150)
DISP = SPECS["dispositions"]
PARTS = ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere")
COLS = ("code", "period", "incidents", *PARTS, "open")


def disp_row(code: str, period: str, parts: Sequence[int], open_: int = 0) -> tuple[Value, ...]:
    return (code, period, sum(parts), *parts, open_)


def recoverable(columns: Sequence[str], rows: Sequence[Sequence[Value]], spec: TableSpec,
                hidden: set[Cell], known_rows: frozenset[int] = frozenset()) -> set[Cell]:
    """Hidden cells fixed by the published relations (an independent rank test: x_j is fixed iff
    removing column j lowers the rank of the relations restricted to the hidden cells)."""
    eqs = relations(columns, rows, spec)
    unknown = sorted(c for c in hidden if c[0] not in known_rows and columns[c[1]] in spec.counts)
    if not unknown:
        return set()
    pos = {c: k for k, c in enumerate(unknown)}
    a = np.zeros((len(eqs), len(unknown)))
    for r, eq in enumerate(eqs):
        for c, coef in eq:
            if c in pos:
                a[r, pos[c]] = coef
    full = np.linalg.matrix_rank(a)
    return {c for c, k in pos.items() if np.linalg.matrix_rank(np.delete(a, k, axis=1)) < full}


# --- by hand -----------------------------------------------------------------------------------

def test_small_counts_are_starred_zeros_and_large_counts_shown() -> None:
    rows = [disp_row("A", "2026-05", (3, 10, 20, 0)), disp_row("B", "2026-05", (9, 12, 30, 8))]
    out = suppress(COLS, rows, DISP)
    a, b = out.rows
    assert out.primary == {(0, COLS.index("hear_and_treat"))}
    assert a[3] == SUPPRESSED and a[7] == b[7] == 0  # 3 is starred; the zero open counts are shown
    assert a[2] == 33 and b[2] == 59 and a[5] == 20  # large counts stay
    # A's row total and the hear-and-treat column each had one unknown: complements were taken
    assert out.secondary and all(v == SUPPRESSED for i, j in out.secondary for v in [out.rows[i][j]])
    assert not recoverable(COLS, rows, DISP, set(out.hidden))


def test_a_single_suppressed_cell_in_a_column_takes_a_complement_from_another_row() -> None:
    rows = [disp_row(c, "2026-05", (n, 40, 40, 40)) for c, n in (("A", 5), ("B", 50), ("C", 60))]
    out = suppress(COLS, rows, DISP)
    hidden_ht = {i for i, _ in out.hidden if _ == COLS.index("hear_and_treat")}
    assert hidden_ht == {0, 1}  # A's 5 and the smallest other (B's 50)
    assert not recoverable(COLS, rows, DISP, set(out.hidden))


def test_derived_figures_need_eight_records_and_shown_inputs() -> None:
    cols = ("code", "period", "category", "count", "mean_s", "p90_s")
    rows = [("A", "2026-05", "C1", 7, 400.0, 500.0), ("B", "2026-05", "C1", 8, 410.0, 520.0),
            ("C", "2026-05", "C1", 100, 420.0, 530.0)]
    out = suppress(cols, rows, SPECS["response"])
    assert out.rows[0][3:] == (SUPPRESSED,) * 3
    # B (8) is the complement of A (7) in the category's column, so its mean and centile go too
    assert out.rows[1][3:] == (SUPPRESSED,) * 3
    assert out.rows[2] == rows[2]


def test_a_rate_is_withheld_when_its_numerator_is_suppressed() -> None:
    spec = SPECS["non_conveyance_icb_month"]
    cols = ("icb", "month", "incidents", *PARTS, "not_conveyed_ed", "non_conveyance_rate",
            "hear_and_treat_rate", "see_and_treat_rate", "conveyed_elsewhere_rate", "open")
    row = ("E54000057", "2026-05-01", 100, 5, 30, 60, 5, 40, 0.4, 0.05, 0.3, 0.05, 0)
    out = suppress(cols, [row], spec)
    shown = dict(zip(cols, out.rows[0], strict=True))
    assert shown["hear_and_treat"] == shown["hear_and_treat_rate"] == SUPPRESSED
    assert shown["conveyed_elsewhere_rate"] == SUPPRESSED
    assert shown["incidents"] == 100


def test_the_callers_own_row_is_exempt_and_counts_as_known() -> None:
    cols = ("code", "period", "count", "mean_s", "p90_s")
    spec = TableSpec(counts=("count",), derived={"mean_s": ("count",), "p90_s": ("count",)},
                     groups=("period",))
    rows = [("RX7", "2026-05", 3, 100.0, 120.0), ("RX8", "2026-05", 4, 90.0, 95.0),
            ("RX9", "2026-05", 30, 80.0, 99.0), ("RYA", "2026-05", 40, 70.0, 75.0)]
    everyone = suppress(cols, rows, spec)
    rx7 = suppress(cols, rows, spec, exempt=[True, False, False, False])
    assert rx7.rows[0] == rows[0]  # its own figures, unsuppressed
    assert everyone.rows[0][2] == SUPPRESSED
    # knowing its own 3, RX7 could subtract: RX8's 4 must have another unknown beside it
    assert not recoverable(cols, rows, spec, set(rx7.hidden), known_rows=frozenset({0}))
    assert rx7.rows[2][2] == SUPPRESSED


def test_a_chain_of_relations_cannot_pin_a_cell() -> None:
    """Pairwise protection alone leaves a cell fixed when two relations share it; the exact check
    suppresses more. Three codes, two periods, every relation with two unknowns after pass one."""
    rows = [disp_row("A", "p1", (2, 0, 40, 0)), disp_row("B", "p1", (0, 0, 40, 3)),
            disp_row("C", "p1", (50, 60, 70, 80)), disp_row("A", "p2", (0, 5, 40, 0)),
            disp_row("B", "p2", (6, 0, 41, 0)), disp_row("C", "p2", (50, 60, 70, 80))]
    out = suppress(COLS, rows, DISP)
    assert not recoverable(COLS, rows, DISP, set(out.hidden))


def test_a_spec_naming_a_missing_column_is_refused() -> None:
    with pytest.raises(ValueError, match="no column"):
        suppress(("code", "period"), [("A", "p")], DISP)


# --- properties -------------------------------------------------------------------------------

small_or_not = st.one_of(st.integers(0, 9), st.integers(0, 200))


@st.composite
def disposition_tables(draw: st.DrawFn) -> list[tuple[Value, ...]]:
    codes = draw(st.lists(st.sampled_from("ABCDEFGH"), min_size=1, max_size=6, unique=True))
    periods = draw(st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=1, max_size=3, unique=True))
    return [disp_row(c, p, draw(st.tuples(*[small_or_not] * 4)), draw(small_or_not)) for p in periods for c in codes]


@relaxed
@given(disposition_tables(), st.data())
def test_properties_of_every_suppressed_table(rows: list[tuple[Value, ...]], data: st.DataObject) -> None:
    exempt_code = data.draw(st.sampled_from([None, "A", "B"]))
    exempt = [r[0] == exempt_code for r in rows]
    out = suppress(COLS, rows, DISP, exempt=exempt)
    counts = [COLS.index(c) for c in DISP.counts]
    for i, (orig, shown) in enumerate(zip(rows, out.rows, strict=True)):
        if exempt[i]:
            assert shown == orig
            continue
        for j in counts:
            assert not is_small(shown[j]), (i, j, shown)
        for j, (a, b) in enumerate(zip(orig, shown, strict=True)):
            assert b == a or ((i, j) in out.hidden and b == SUPPRESSED)
    assert out.primary == {(i, j) for i, r in enumerate(rows) if not exempt[i] for j in counts if is_small(r[j])}
    # every relation has no unknown or at least two (unless only known or pinned cells remain)
    own = frozenset(i for i, e in enumerate(exempt) if e)
    eqs = [[c for c, _ in eq] for eq in relations(COLS, rows, DISP)]
    pinned = {c for eq in eqs for c in eq if all(d == c or d[0] in own for d in eq)}
    for eq in relations(COLS, rows, DISP):
        unknown = [c for c, _ in eq if c in out.hidden]
        others = [c for c, _ in eq if c not in out.hidden and c[0] not in own and c not in pinned]
        assert len(unknown) != 1 or not others
    # and no suppressed cell is fixed by the relations taken together, even knowing one's own
    # rows; except a cell that would be fixed even if every cell that can be hidden were: one
    # pinned by a published total less figures the caller knows (nothing in this table hides it)
    most = {(i, j) for i in range(len(rows)) if i not in own for j in counts if (i, j) not in pinned}
    inherent = recoverable(COLS, rows, DISP, most | set(out.hidden), known_rows=own)
    assert recoverable(COLS, rows, DISP, set(out.hidden), known_rows=own) <= inherent
    # deterministic
    assert suppress(COLS, rows, DISP, exempt=exempt) == out


@relaxed
@given(st.lists(st.tuples(st.sampled_from(["p1", "p2"]), st.sampled_from(["C1", "C2"]),
                          st.integers(0, 30), st.floats(0, 1e4, allow_nan=False)), min_size=1, max_size=20))
def test_derived_figures_are_only_shown_on_eight_or_more_shown_records(
        raw: list[tuple[str, str, int, float]]) -> None:
    cols = ("code", "period", "category", "count", "mean_s", "p90_s")
    rows: list[tuple[Value, ...]] = [(f"X{k}", p, c, n, m if n else None, m if n else None)
                                     for k, (p, c, n, m) in enumerate(raw)]
    out = suppress(cols, rows, SPECS["response"])
    for shown in out.rows:
        if shown[4] not in (None, SUPPRESSED):
            assert shown[3] != SUPPRESSED and isinstance(shown[3], int) and shown[3] >= MIN_COUNT


def test_nested_relations_protect_a_small_area_against_its_parent_total() -> None:
    """Two ICBs in one region, one in another: the small one must not be alone in its region."""
    spec = TableSpec(counts=("n",), groups=("period",), nested=(("period", "parent"),))
    cols = ("code", "period", "parent", "n")
    rows: list[tuple[Value, ...]] = [("A", "p", "R1", 5), ("B", "p", "R1", 50), ("C", "p", "R2", 9),
                                     ("D", "p", None, 40)]
    out = suppress(cols, rows, spec)
    assert out.rows[0][3] == SUPPRESSED and out.rows[1][3] == SUPPRESSED  # B goes with A (region R1)
    assert out.rows[2][3] == 9 and out.rows[3][3] == 40  # a row without a parent is in no nested relation
    assert not recoverable(cols, rows, spec, set(out.hidden))
