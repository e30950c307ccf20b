"""Statistical process control: XmR charts with NHS England's "Making Data Count" rules.

An XmR (individuals and moving range) chart puts the process limits at the mean ± 2.66 × the mean
moving range (mR-bar), i.e. ± 3 sigma with sigma = mR-bar / 1.128. A point is *special cause
variation* when it meets one of the four Making Data Count rules:

- ``beyond_limit``: a single point above the upper or below the lower process limit;
- ``shift``: a run of 7 or more consecutive points on the same side of the mean (a point exactly on
  the mean breaks the run), every point of the run flagged;
- ``trend``: 6 or more consecutive points each strictly higher (or lower) than the one before,
  every point of the trend flagged (an equal value breaks it);
- ``two_of_three``: two out of three consecutive points beyond 2 sigma on the same side of the mean
  ("close to a process limit"), the points beyond 2 sigma flagged.

Each signal has a direction (high or low); with the metric's good direction ("up": higher is
better, e.g. the hear-and-treat rate; "down": lower is better, e.g. handover hours lost) it is an
improvement or a concern. A point with both kinds of signal (say a falling trend that is still
above the mean) is assessed a concern: a commissioner should look at it rather than miss it.

Limits come from the whole series unless ``baseline`` names how many leading points to freeze
them on (Making Data Count's "recalculate only after a sustained change": the shell decides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

Good = Literal["up", "down"]
Assessment = Literal["improvement", "concern"]

BEYOND_LIMIT: Final = "beyond_limit"
SHIFT: Final = "shift"
TREND: Final = "trend"
TWO_OF_THREE: Final = "two_of_three"
RULES: Final = (BEYOND_LIMIT, SHIFT, TREND, TWO_OF_THREE)
"""Signal names, in the order they are listed on a point."""

SHIFT_RUN: Final = 7
TREND_RUN: Final = 6
LIMIT_FACTOR: Final = 2.66
"""3 / d2 with d2 = 1.128 for moving ranges of two points (Making Data Count rounds it to 2.66)."""
SIGMA_FACTOR: Final = LIMIT_FACTOR / 3


@dataclass(frozen=True, slots=True)
class XmrPoint:
    """One value on the chart, the rules it meets and what they mean for the metric."""

    value: float
    signals: tuple[str, ...]
    assessment: Assessment | None
    high: bool = False
    """Some signal says the process is higher than usual."""
    low: bool = False
    """Some signal says the process is lower than usual."""


@dataclass(frozen=True, slots=True)
class XmrChart:
    """An XmR chart: the centre line, the process limits and every point's signals."""

    mean: float
    ucl: float
    lcl: float
    moving_ranges: tuple[float, ...]
    points: tuple[XmrPoint, ...]
    good: Good = "up"
    sigma: float = 0.0

    @property
    def mr_bar(self) -> float:
        """The mean moving range the limits were drawn from."""
        return self.sigma / SIGMA_FACTOR

    @property
    def latest(self) -> XmrPoint | None:
        """The last point (the one `amb alerts spc` reports), or None for an empty chart."""
        return self.points[-1] if self.points else None

    @property
    def variation(self) -> str:
        """Making Data Count's variation icon for the latest point, in words."""
        last = self.latest
        if last is None or last.assessment is None:
            return "common cause"
        return f"special cause {last.assessment}"


def xmr(values: Sequence[float], good: Good, *, baseline: int | None = None) -> XmrChart:
    """XmR chart of ``values`` (in time order) with the Making Data Count signals on every point.

    ``good`` is the metric's good direction. ``baseline``, if given, is the number of leading
    points the mean and limits are computed from (at least 2); the rules still run over all points.
    """
    if good not in ("up", "down"):
        raise ValueError(f"good direction must be 'up' or 'down', not {good!r}")
    xs = [float(v) for v in values]
    for i, v in enumerate(xs):
        if not math.isfinite(v):
            raise ValueError(f"SPC value {i} is not a finite number: {v}")
    n = len(xs)
    if n == 0:
        return XmrChart(mean=math.nan, ucl=math.nan, lcl=math.nan, moving_ranges=(), points=(), good=good)
    moving = tuple(abs(b - a) for a, b in zip(xs, xs[1:], strict=False))
    if baseline is not None and baseline < 2:
        raise ValueError(f"an SPC baseline needs at least 2 points, not {baseline}")
    base = xs[: baseline] if baseline is not None else xs
    base_moving = moving[: len(base) - 1]
    mean = _mean(base)
    mr_bar = math.fsum(base_moving) / len(base_moving) if base_moving else 0.0
    sigma = SIGMA_FACTOR * mr_bar
    ucl, lcl = mean + 3 * sigma, mean - 3 * sigma
    high: list[set[str]] = [set() for _ in xs]
    low: list[set[str]] = [set() for _ in xs]
    if sigma > 0:
        _beyond_limits(xs, ucl, lcl, high, low)
        _two_of_three(xs, mean + 2 * sigma, mean - 2 * sigma, high, low)
    _shifts(xs, mean, high, low)
    _trends(xs, high, low)
    points = tuple(_point(v, hi, lo, good) for v, hi, lo in zip(xs, high, low, strict=True))
    return XmrChart(mean=mean, ucl=ucl, lcl=lcl, moving_ranges=moving, points=points, good=good, sigma=sigma)


def _mean(xs: Sequence[float]) -> float:
    """The mean, exact for a constant series (so it has no spurious side-of-mean runs)."""
    if min(xs) == max(xs):
        return xs[0]
    return math.fsum(xs) / len(xs)


def _beyond_limits(xs: Sequence[float], ucl: float, lcl: float,
                   high: list[set[str]], low: list[set[str]]) -> None:
    for i, v in enumerate(xs):
        if v > ucl:
            high[i].add(BEYOND_LIMIT)
        elif v < lcl:
            low[i].add(BEYOND_LIMIT)


def _two_of_three(xs: Sequence[float], upper: float, lower: float,
                  high: list[set[str]], low: list[set[str]]) -> None:
    """Flag the points beyond 2 sigma in any window of three with at least two beyond on one side."""
    for flags, beyond in ((high, [v > upper for v in xs]), (low, [v < lower for v in xs])):
        for start in range(len(xs) - 2):
            window = range(start, start + 3)
            if sum(beyond[i] for i in window) >= 2:
                for i in window:
                    if beyond[i]:
                        flags[i].add(TWO_OF_THREE)


def _shifts(xs: Sequence[float], mean: float, high: list[set[str]], low: list[set[str]]) -> None:
    sides = [(v > mean) - (v < mean) for v in xs]
    for start, stop, side in _runs(sides):
        if side != 0 and stop - start >= SHIFT_RUN:
            for i in range(start, stop):
                (high if side > 0 else low)[i].add(SHIFT)


def _trends(xs: Sequence[float], high: list[set[str]], low: list[set[str]]) -> None:
    steps = [(b > a) - (b < a) for a, b in zip(xs, xs[1:], strict=False)]
    # A run of k equal non-zero steps covers k + 1 points.
    for start, stop, step in _runs(steps):
        if step != 0 and stop - start + 1 >= TREND_RUN:
            for i in range(start, stop + 1):
                (high if step > 0 else low)[i].add(TREND)


def _runs(codes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal codes as (start, stop exclusive, code)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(codes) + 1):
        if i == len(codes) or codes[i] != codes[start]:
            runs.append((start, i, codes[start]))
            start = i
    return runs


def _point(value: float, high: set[str], low: set[str], good: Good) -> XmrPoint:
    signals = tuple(rule for rule in RULES if rule in high or rule in low)
    improving, worsening = (high, low) if good == "up" else (low, high)
    assessment: Assessment | None = "concern" if worsening else "improvement" if improving else None
    return XmrPoint(value=value, signals=signals, assessment=assessment, high=bool(high), low=bool(low))
