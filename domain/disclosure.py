"""Statistical disclosure control for what analysts see (domain.md "Disclosure control").

- **Primary suppression**: a count of 1 to 7 is not shown (rendered ``*``); 0 and 8+ are shown.
- **Derived figures** (rates, means, centiles, hours lost) are withheld when the count they rest on
  is under 8, or when any count they are computed from is suppressed (a rate times a shown
  denominator would give the suppressed numerator back).
- **Secondary suppression**: a table publishes additive relations, within a row (``incidents`` =
  the four dispositions) and down a column (the cells of one period at one level partition
  England, whose figure is published elsewhere). A suppressed cell that is the only unknown in a
  relation is recovered by subtraction, so complementary cells are suppressed (the smallest
  non-zero first) until every relation has no unknown or at least two. On top of that rule, an
  exact check finds cells still determined by several relations together (a chain of relations,
  each with two unknowns, that pins one cell) and suppresses more until none is.

Suppression is computed on the COMPLETE table (every code of a level) before it is cut down to
what a caller may see, so the pattern does not depend on the filter. Rows of the caller's own
data (a trust's own row at trust level) are ``exempt``: never suppressed, and counted as known
when deciding whether a relation gives another cell away, so a trust cannot subtract its own
figures to recover a neighbour's.

Across levels: the areas of one parent (the ICBs of a region, the LSOAs of an MSOA) add up to
the parent's figure in the coarser table, so a table at one level also takes a ``nested``
relation per parent (the shell adds the parent codes as columns), and a sibling's small count
cannot be had as parent minus the rest.

Pure: values in, values and masks out. Limits, stated: the coarser table's own complementary
suppression is not coordinated with the finer one (a parent cell hidden only as a complement
could be re-added from shown children); the exact check covers components of up to
:data:`EXACT_LIMIT` suppressed cells (larger ones keep the pairwise rule only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

Value = str | int | float | bool | None
Cell = tuple[int, int]
"""(row index, column index)."""

SUPPRESSED: Final = "*"
"""What a suppressed count or withheld figure is shown as in text, CSV and JSON."""
MIN_COUNT: Final = 8
"""Counts below this (and above 0) are suppressed; derived figures need a base at least this."""
EXACT_LIMIT: Final = 400
"""Largest component (suppressed cells linked by relations) given the exact null-space check."""


@dataclass(frozen=True)
class TableSpec:
    """What the columns of a table mean for disclosure control.

    ``counts``: columns of record counts (primary and secondary suppression).
    ``derived``: figure column -> the counts it is computed from, the base (denominator) first.
    ``totals``: (total column, part columns) with total = sum(parts) in every row.
    ``groups``: key columns whose rows, for each count column, sum to a published total (e.g.
    ``("period",)``: every code of one period adds up to England); ``None`` = no column relation.
    ``nested``: further sets of key columns with the same meaning, e.g. ``("period",
    "parent_region")``: the ICBs of one region add up to the region's published figure.
    ``geo``: how a row's geography is found, for scoping: ``(level column, code column)`` or
    ``(None, code column)`` with ``level`` fixed, or ``None`` when the table is not by area.
    """

    counts: tuple[str, ...]
    derived: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    totals: tuple[tuple[str, tuple[str, ...]], ...] = ()
    groups: tuple[str, ...] | None = ()
    geo: tuple[str | None, str] | None = None
    level: str | None = None
    nested: tuple[tuple[str, ...], ...] = ()

    def columns(self) -> set[str]:
        cols = set(self.counts) | set(self.derived) | set(self.groups or ())
        for keys in self.nested:
            cols |= set(keys)
        for deps in self.derived.values():
            cols |= set(deps)
        for total, parts in self.totals:
            cols |= {total, *parts}
        return cols


@dataclass(frozen=True)
class Disclosed:
    """A table after disclosure control. ``rows`` show suppressed cells as :data:`SUPPRESSED`."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    primary: frozenset[Cell]
    secondary: frozenset[Cell]
    withheld: frozenset[Cell]

    @property
    def hidden(self) -> frozenset[Cell]:
        return self.primary | self.secondary | self.withheld

    def masked(self, marker: Value) -> list[tuple[Value, ...]]:
        """The rows with every hidden cell as ``marker`` (e.g. ``None`` for typed outputs)."""
        hidden = self.hidden
        if marker == SUPPRESSED:
            return list(self.rows)
        return [tuple(marker if (i, j) in hidden else v for j, v in enumerate(row)) for i, row in enumerate(self.rows)]


def _number(v: Value) -> float | None:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return None
    return float(v)


def is_small(v: Value) -> bool:
    """A count that primary suppression hides: 1 to 7 (bools and non-numbers never are)."""
    n = _number(v)
    return n is not None and 0 < n < MIN_COUNT


Relation = list[tuple[Cell, int]]
"""Cells and their coefficients in one published linear relation (sum of coef * value = known)."""


def relations(
    columns: Sequence[str], rows: Sequence[Sequence[Value]], spec: TableSpec,
) -> list[Relation]:
    """Every additive relation the table publishes, as (cell, coefficient) pairs.

    Row totals always count (the total is a cell of the row). A column relation counts when its
    sum is at least :data:`MIN_COUNT`: a smaller published total is itself suppressed."""
    idx = {c: i for i, c in enumerate(columns)}
    out: list[Relation] = []
    for total, parts in spec.totals:
        t, ps = idx[total], [idx[p] for p in parts]
        for i in range(len(rows)):
            out.append([((i, t), -1), *(((i, p), 1) for p in ps)])
    groupings = ([spec.groups] if spec.groups is not None else []) + list(spec.nested)
    values = {idx[c]: [_number(r[idx[c]]) or 0.0 for r in rows] for c in spec.counts} if groupings else {}
    for keys_ in groupings:
        keys = [idx[g] for g in keys_]
        groups: dict[tuple[Value, ...], list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            key = tuple(row[k] for k in keys)
            if None not in key:  # no parent known: no relation
                groups[key].append(i)
        for members in groups.values():
            for c in spec.counts:
                j = idx[c]
                col = values[j]
                published = sum(col[i] for i in members)
                if published >= MIN_COUNT:
                    out.append([((i, j), 1) for i in members])
    return out


def determined(hidden: Iterable[Cell], eqs: Sequence[Relation]) -> set[Cell]:
    """Hidden cells whose value the relations fix, all else being known: x_j is determined iff
    every vector of the null space of the relations (restricted to the hidden cells) is 0 at j.
    Components larger than :data:`EXACT_LIMIT` are skipped (returned as not determined)."""
    hidden = set(hidden)
    if not hidden:
        return set()
    parent: dict[Cell, Cell] = {c: c for c in hidden}

    def find(c: Cell) -> Cell:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    eq_hidden = [[(c, k) for c, k in eq if c in hidden] for eq in eqs]
    for hs in eq_hidden:
        for (c1, _), (c2, _) in zip(hs, hs[1:], strict=False):
            ra, rb = find(c1), find(c2)
            if ra != rb:
                parent[ra] = rb
    comps: dict[Cell, list[Cell]] = defaultdict(list)
    for c in hidden:
        comps[find(c)].append(c)
    comp_eqs: dict[Cell, list[Relation]] = defaultdict(list)
    for hs in eq_hidden:
        if hs:
            comp_eqs[find(hs[0][0])].append(hs)
    out: set[Cell] = set()
    for root, cells in comps.items():
        if len(cells) > EXACT_LIMIT:
            continue
        rows_ = comp_eqs.get(root, [])
        if not rows_:
            continue
        col = {c: k for k, c in enumerate(sorted(cells))}
        a = np.zeros((len(rows_), len(col)))
        for r, hs in enumerate(rows_):
            for c, coef in hs:
                a[r, col[c]] = float(coef)
        # Null space basis from the SVD: right singular vectors beyond the rank.
        _u, s, vt = np.linalg.svd(a)
        rank = int((s > 1e-9 * max(1.0, float(s[0]) if s.size else 1.0)).sum())
        null = vt[rank:]
        for c, k in col.items():
            if null.shape[0] == 0 or float(np.abs(null[:, k]).max()) < 1e-9:
                out.add(c)
    return out


def _order(rows: Sequence[Sequence[Value]]) -> Callable[[Cell], tuple[bool, float, Cell]]:
    def key(c: Cell) -> tuple[bool, float, Cell]:
        n = _number(rows[c[0]][c[1]])
        v = float("inf") if n is None else abs(n)
        return (v == 0, v, c)  # smallest non-zero first, zeros last, then position (deterministic)
    return key


def suppress(
    columns: Sequence[str], rows: Sequence[Sequence[Value]], spec: TableSpec,
    exempt: Sequence[bool] | None = None,
) -> Disclosed:
    """Apply primary, secondary and derived-figure suppression to a complete table."""
    cols = tuple(columns)
    missing = spec.columns() - set(cols)
    if missing:
        raise ValueError(f"table has no column(s) {', '.join(sorted(missing))} named in its disclosure spec")
    if exempt is not None and len(exempt) != len(rows):
        raise ValueError(f"{len(exempt)} exempt flags for {len(rows)} rows")
    idx = {c: i for i, c in enumerate(cols)}
    own = {i for i, e in enumerate(exempt or ()) if e}
    count_cols = [idx[c] for c in spec.counts]
    primary = {(i, j) for i, row in enumerate(rows) if i not in own for j in count_cols if is_small(row[j])}
    hidden = set(primary)
    eqs = relations(cols, rows, spec)
    by_cell: dict[Cell, list[int]] = defaultdict(list)
    for k, eq in enumerate(eqs):
        for c, _coef in eq:
            by_cell[c].append(k)
    key = _order(rows)
    # A cell that is the only one in some relation beside the caller's own cells is fixed by the
    # published total whatever we do: suppressing it as a complement would protect nothing.
    pinned: set[Cell] = set()
    for eq in eqs:
        unknown_to_caller = [c for c, _ in eq if c[0] not in own]
        if len(unknown_to_caller) == 1:
            pinned.add(unknown_to_caller[0])

    def complete_pairs(hide: set[Cell], todo: list[int]) -> None:
        """Until no relation has exactly one unknown (pick the smallest complement)."""
        while todo:
            k = todo.pop()
            eq = [c for c, _coef in eqs[k]]
            if sum(1 for c in eq if c in hide) != 1:
                continue
            candidates = [c for c in eq if c not in hide and c[0] not in own and c not in pinned]
            if not candidates:
                continue  # only the caller's own cells remain: nothing in this table can protect it
            pick = min(candidates, key=key)
            hide.add(pick)
            todo.extend(by_cell[pick])

    def component(hide: set[Cell], start: Cell) -> tuple[list[Cell], list[Cell]]:
        """Hidden cells linked to ``start`` through relations, and the cells that could join them
        (nearest first)."""
        seen, queue, near = {start}, [start], dict[Cell, int]()
        depth = {start: 0}
        while queue:
            h = queue.pop(0)
            for k in by_cell[h]:
                for d, _coef in eqs[k]:
                    if d in hide:
                        if d not in seen:
                            seen.add(d)
                            depth[d] = depth[h] + 1
                            queue.append(d)
                    elif d[0] not in own and d not in pinned and d not in near:
                        near[d] = depth[h]
        return list(seen), sorted(near, key=lambda d: (near[d], key(d)))

    complete_pairs(hidden, list(range(len(eqs))))
    hopeless: set[Cell] = set()
    while True:
        fixed = sorted(determined(hidden, eqs) - hopeless)
        if not fixed:
            break
        c = fixed[0]
        _cells, candidates = component(hidden, c)
        if not candidates:
            hopeless.add(c)  # pinned by totals less the caller's own figures: nothing here hides it
            continue
        for cand in candidates:  # the nearest, smallest complement that frees c; else the first
            trial = set(hidden) | {cand}
            complete_pairs(trial, list(by_cell[cand]))
            cells, _ = component(trial, c)
            if c not in determined(cells, eqs):
                hidden = trial
                break
        else:
            hidden.add(candidates[0])
            complete_pairs(hidden, list(by_cell[candidates[0]]))
    withheld: set[Cell] = set()
    for name, deps in spec.derived.items():
        j = idx[name]
        base = idx[deps[0]]
        dep_cols = [idx[d] for d in deps]
        for i, row in enumerate(rows):
            if i in own or row[j] is None:
                continue
            n = _number(row[base])
            if n is None or n < MIN_COUNT or any((i, d) in hidden for d in dep_cols):
                withheld.add((i, j))
    secondary = hidden - primary
    shown = hidden | withheld
    out_rows = tuple(
        tuple(SUPPRESSED if (i, j) in shown else v for j, v in enumerate(row)) for i, row in enumerate(rows)
    )
    return Disclosed(cols, out_rows, frozenset(primary), frozenset(secondary), frozenset(withheld))


# --- the tables analysts get ------------------------------------------------------------------

_DISPOSITIONS = ("hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere")
_OVER = ("over_15", "over_30", "over_45", "over_60")

SPECS: Final[Mapping[str, TableSpec]] = {
    # `amb query` / GET /v1/metrics tables (domain.metrics.TABLES)
    "dispositions": TableSpec(
        counts=("incidents", *_DISPOSITIONS, "open"),
        totals=(("incidents", _DISPOSITIONS),),
        groups=("period",), geo=(None, "code"),
    ),
    "response": TableSpec(
        counts=("count",), derived={"mean_s": ("count",), "p90_s": ("count",)},
        groups=("period", "category"), geo=(None, "code"),
    ),
    "handover": TableSpec(
        counts=("handovers", *_OVER),
        derived={"mean_min": ("handovers",), "p90_min": ("handovers",), "hours_lost": ("handovers",)},
        groups=("period",), geo=(None, "code"),
    ),
    # analyst views (sinks/migrations/0006_create_analyst_views.sql), the SQL endpoint's tables
    "non_conveyance_icb_month": TableSpec(
        counts=("incidents", *_DISPOSITIONS, "not_conveyed_ed", "open"),
        derived={
            "non_conveyance_rate": ("incidents", "not_conveyed_ed"),
            "hear_and_treat_rate": ("incidents", "hear_and_treat"),
            "see_and_treat_rate": ("incidents", "see_and_treat"),
            "conveyed_elsewhere_rate": ("incidents", "conveyed_elsewhere"),
        },
        totals=(("incidents", _DISPOSITIONS),
                ("not_conveyed_ed", ("hear_and_treat", "see_and_treat", "conveyed_elsewhere"))),
        groups=("month",), geo=(None, "icb"), level="icb",
    ),
    "handover_site_day": TableSpec(
        counts=("arrivals", "handovers", *_OVER),
        derived={"mean_min": ("handovers",), "p90_min": ("handovers",), "hours_lost": ("handovers",)},
        groups=("day",), geo=(None, "site"), level="site",
    ),
    "response_category_month": TableSpec(
        counts=("responses",), derived={"mean_s": ("responses",), "p90_s": ("responses",)},
        groups=("level", "month", "category"), geo=("level", "code"),
    ),
    "dispositions_imd_month": TableSpec(
        counts=("incidents", *_DISPOSITIONS, "open"),
        derived={"non_conveyance_rate": ("incidents", "hear_and_treat", "see_and_treat", "conveyed_elsewhere")},
        totals=(("incidents", _DISPOSITIONS),),
        groups=("month",),
    ),
    "response_imd_month": TableSpec(
        counts=("responses",), derived={"mean_s": ("responses",), "p90_s": ("responses",)},
        groups=("month", "category"),
    ),
    "handover_imd_month": TableSpec(
        counts=("arrivals", "handovers", *_OVER),
        derived={"mean_min": ("handovers",), "p90_min": ("handovers",), "hours_lost": ("handovers",)},
        groups=("month",),
    ),
}
"""Disclosure specs of every table an analyst can reach, by table or view name."""

VIEWS: Final = tuple(name for name in SPECS if name not in ("dispositions", "response", "handover"))
"""The analyst views (the SQL endpoint serves these, and nothing else)."""
