"""XmR charts and the Making Data Count rules: a hand-made series for each rule (meeting it and just
missing it), the limits, the good direction, and properties over any series."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.spc import BEYOND_LIMIT, SHIFT, TREND, TWO_OF_THREE, xmr

# A stable base: mean 10, moving ranges all 2, so mR-bar 2, sigma 2.66*2/3, limits 10 ± 5.32.
BASE = [9.0, 11.0] * 6


def flagged(values: list[float], rule: str, good: str = "up") -> list[int]:
    chart = xmr(values, good)  # type: ignore[arg-type]
    return [i for i, p in enumerate(chart.points) if rule in p.signals]


def test_limits_are_mean_plus_minus_2_66_mean_moving_range() -> None:
    chart = xmr(BASE, "up")
    assert chart.mean == 10.0
    assert chart.moving_ranges == (2.0,) * 11
    assert chart.mr_bar == pytest.approx(2.0)
    assert chart.ucl == pytest.approx(10 + 2.66 * 2)
    assert chart.lcl == pytest.approx(10 - 2.66 * 2)
    assert all(p.signals == () and p.assessment is None for p in chart.points)
    assert chart.variation == "common cause"


def test_textbook_example_limits() -> None:
    values = [5.0, 7.0, 5.0, 9.0, 7.0, 5.0, 4.0, 9.0, 8.0, 13.0, 8.0, 7.0]
    chart = xmr(values, "up")
    mr = [2, 2, 4, 2, 2, 1, 5, 1, 5, 5, 1]
    assert chart.moving_ranges == tuple(float(m) for m in mr)
    assert chart.mean == pytest.approx(87 / 12)
    assert chart.ucl == pytest.approx(87 / 12 + 2.66 * 30 / 11)
    assert chart.lcl == pytest.approx(87 / 12 - 2.66 * 30 / 11)


# --- rule 1: a point beyond the process limits ------------------------------------------------------

def test_point_above_upper_limit() -> None:
    values = BASE + [20.0]
    chart = xmr(values, "up")
    assert flagged(values, BEYOND_LIMIT) == [12]
    assert chart.points[-1].assessment == "improvement"
    assert xmr(values, "down").points[-1].assessment == "concern"
    assert xmr(values, "down").variation == "special cause concern"


def test_point_below_lower_limit() -> None:
    values = BASE + [-5.0]
    assert flagged(values, BEYOND_LIMIT) == [12]
    assert xmr(values, "up").points[-1].assessment == "concern"
    assert xmr(values, "down").points[-1].assessment == "improvement"


def test_point_inside_limits_is_not_flagged() -> None:
    values = BASE + [14.0]  # the new point moves mR-bar; 14 stays inside
    chart = xmr(values, "up")
    assert chart.points[-1].value < chart.ucl
    assert flagged(values, BEYOND_LIMIT) == []


# --- rule 2: a run of 7 on one side of the mean ------------------------------------------------------

def test_run_of_seven_above_mean() -> None:
    values = [12.0, 8.0] * 3 + [10.5, 11.0, 10.5, 11.0, 10.5, 11.0, 10.5] + [8.0, 9.0] * 3
    chart = xmr(values, "up")
    assert chart.mean < 10.5
    assert flagged(values, SHIFT) == list(range(6, 13))
    assert {chart.points[i].assessment for i in range(6, 13)} == {"improvement"}
    assert {xmr(values, "down").points[i].assessment for i in range(6, 13)} == {"concern"}


def test_run_of_seven_below_mean_and_longer_runs_flag_every_point() -> None:
    values = [8.0, 12.0] * 3 + [9.0, 9.5] * 5
    chart = xmr(values, "down")
    assert chart.mean > 9.5
    assert flagged(values, SHIFT, "down") == list(range(6, 16))
    assert chart.points[-1].assessment == "improvement"


def test_run_of_six_is_not_a_shift() -> None:
    values = [12.0, 8.0] * 3 + [10.5, 11.0, 10.5, 11.0, 10.5, 11.0] + [8.0, 9.0] * 3
    assert xmr(values, "up").mean < 10.5
    assert flagged(values, SHIFT) == []


def test_point_on_the_mean_breaks_a_run() -> None:
    # Mean is exactly 10; the 10.0 in the middle splits seven points above into 3 + 4.
    values = [11.0, 11.0, 11.0, 10.0, 11.0, 11.0, 11.0, 11.0, 7.0, 8.0, 8.0, 10.0]
    chart = xmr(values, "up")
    assert chart.mean == 10.0
    assert flagged(values, SHIFT) == []


# --- rule 3: a trend of 6 increasing or decreasing ---------------------------------------------------

def test_trend_of_six_increasing() -> None:
    values = [10.0, 9.0, 10.0, 9.0] + [8.0, 8.5, 9.0, 9.5, 10.0, 10.5] + [9.0, 10.0]
    chart = xmr(values, "up")
    assert flagged(values, TREND) == list(range(4, 10))  # 8 .. 10.5: six rising points
    assert chart.points[9].assessment == "improvement"
    assert xmr(values, "down").points[9].assessment == "concern"


def test_trend_of_six_decreasing() -> None:
    values = [9.0, 10.0, 9.0, 10.0] + [12.0, 11.5, 11.0, 10.5, 10.0, 9.5] + [10.0, 9.0]
    assert flagged(values, TREND) == list(range(4, 10))
    assert xmr(values, "up").points[9].assessment == "concern"
    assert xmr(values, "down").points[9].assessment == "improvement"


def test_five_rising_points_or_an_equal_step_is_not_a_trend() -> None:
    five = [10.0, 9.0, 10.0, 9.0] + [8.5, 9.0, 9.5, 10.0, 10.5] + [9.0, 10.0]
    assert flagged(five, TREND) == []
    with_tie = [10.0, 9.0] + [8.0, 8.5, 9.0, 9.0, 9.5, 10.0] + [9.0, 10.0]
    assert flagged(with_tie, TREND) == []


# --- rule 4: two out of three beyond 2 sigma, same side ------------------------------------------------

def test_two_of_three_near_the_upper_limit() -> None:
    values = BASE + [14.6, 10.0, 14.6] + BASE
    chart = xmr(values, "up")
    two_sigma = chart.mean + 2 * chart.sigma
    assert chart.points[12].value > two_sigma and chart.points[12].value < chart.ucl
    assert flagged(values, TWO_OF_THREE) == [12, 14]
    assert flagged(values, BEYOND_LIMIT) == []
    assert chart.points[14].assessment == "improvement"
    assert chart.points[13].assessment is None


def test_two_of_three_near_the_lower_limit() -> None:
    values = BASE + [5.4, 5.4] + BASE
    chart = xmr(values, "down")
    assert flagged(values, TWO_OF_THREE, "down") == [12, 13]
    assert chart.points[13].assessment == "improvement"


def test_one_of_three_or_opposite_sides_is_not_two_of_three() -> None:
    one = BASE + [14.6, 10.0, 10.0] + BASE
    assert flagged(one, TWO_OF_THREE) == []
    opposite = BASE + [14.6, 5.4, 10.0] + BASE
    assert flagged(opposite, TWO_OF_THREE) == []
    apart = BASE + [14.6, 10.0, 10.0, 14.6] + BASE
    assert flagged(apart, TWO_OF_THREE) == []


# --- the rest ---------------------------------------------------------------------------------------

def test_mixed_signals_are_a_concern() -> None:
    # A rising trend (high) whose points sit in a run below the mean (low).
    values = [20.0, 20.0, 20.0, 20.0, 20.0, 20.0] + [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    chart = xmr(values, "up")
    last = chart.points[-1]
    assert TREND in last.signals and SHIFT in last.signals
    assert last.high and last.low
    assert last.assessment == "concern"
    assert xmr(values, "down").points[-1].assessment == "concern"


def test_baseline_freezes_the_limits() -> None:
    values = BASE + [16.0] * 4
    chart = xmr(values, "up", baseline=len(BASE))
    assert chart.mean == 10.0 and chart.ucl == pytest.approx(15.32)
    assert flagged(values, BEYOND_LIMIT) == []  # the step widens limits drawn from every point
    assert [i for i, p in enumerate(chart.points) if BEYOND_LIMIT in p.signals] == [12, 13, 14, 15]


def test_empty_and_single_point_and_bad_input() -> None:
    assert xmr([], "up").points == ()
    assert xmr([], "up").variation == "common cause"
    one = xmr([3.0], "down")
    assert one.mean == 3.0 and one.points[0].signals == ()
    with pytest.raises(ValueError, match="finite"):
        xmr([1.0, math.nan], "up")
    with pytest.raises(ValueError, match="good direction"):
        xmr([1.0], "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline"):
        xmr([1.0, 2.0], "up", baseline=1)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(min_value=0, max_value=60))
def test_constant_series_has_no_signals(value: float, n: int) -> None:
    chart = xmr([value] * n, "up")
    assert all(p.signals == () and p.assessment is None for p in chart.points)


@given(st.lists(finite, max_size=40))
def test_reversing_good_swaps_improvement_and_concern(values: list[float]) -> None:
    up, down = xmr(values, "up"), xmr(values, "down")
    swap = {"improvement": "concern", "concern": "improvement", None: None}
    for a, b in zip(up.points, down.points, strict=True):
        assert a.signals == b.signals
        if a.high and a.low:
            assert a.assessment == b.assessment == "concern"
        else:
            assert b.assessment == swap[a.assessment]


@given(st.lists(finite, min_size=2, max_size=40))
def test_limits_and_signals_are_consistent(values: list[float]) -> None:
    chart = xmr(values, "up")
    assert chart.lcl <= chart.mean <= chart.ucl
    assert len(chart.moving_ranges) == len(values) - 1
    for p in chart.points:
        assert (p.assessment is None) == (p.signals == ())
        assert (BEYOND_LIMIT in p.signals) == (p.value > chart.ucl or p.value < chart.lcl)


@given(st.lists(finite, min_size=1, max_size=40), st.floats(min_value=-1e3, max_value=1e3),
       st.floats(min_value=0.01, max_value=100))
def test_signals_do_not_depend_on_units(values: list[float], shift: float, scale: float) -> None:
    # Moving to other units (minutes -> hours, a rate -> a percentage) keeps every signal; rounding
    # at the edges can move a point sitting exactly on a limit, so compare points clear of them.
    a = xmr(values, "up")
    margin = 1e-6 * (1 + max(abs(v) for v in values))
    near = [abs(v - edge) < margin for v in values
            for edge in (a.ucl, a.lcl, a.mean, a.mean + 2 * a.sigma, a.mean - 2 * a.sigma)]
    scaled = [v * scale + shift for v in values]
    if not any(near) and len(set(values)) == len(values) == len(set(scaled)):
        b = xmr(scaled, "up")
        assert [p.signals for p in a.points] == [p.signals for p in b.points]
