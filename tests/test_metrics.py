"""Metric definitions: time buckets (with the 2026 clock changes), the centile, the aggregates, and
that ClickHouse (embedded chDB) reproduces the periods and the centile to the unit."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import MINUTE, utc_ms

from domain.metrics import (
    HOUR_MS,
    LONDON,
    PERIOD_SQL,
    Calls111,
    DispositionCounts,
    Handovers,
    Quality,
    ResponseTimes,
    centile,
    format_table,
    lost_ms,
    period_label,
    periods,
    table,
)

# ---------------------------------------------------------------------------------------- periods
H = HOUR_MS


def test_spring_forward_2026_03_29() -> None:
    # 01:00 GMT becomes 02:00 BST at 01:00 UTC; the local day is 23 hours long
    before, after = utc_ms("2026-03-29T00:30"), utc_ms("2026-03-29T01:30")  # 00:30 GMT, 02:30 BST
    day = utc_ms("2026-03-29T00:00")
    assert periods(before) == (utc_ms("2026-03-29T00:00"), day, utc_ms("2026-03-23T00:00"),
                               utc_ms("2026-03-01T00:00"), utc_ms("2025-03-31T23:00"))
    assert periods(after).hour == utc_ms("2026-03-29T01:00") and periods(after).day == day
    next_day = periods(utc_ms("2026-03-29T23:30")).day  # 00:30 BST on the 30th
    assert next_day == utc_ms("2026-03-29T23:00") and next_day - day == 23 * H
    assert period_label("hour", periods(after).hour) == "2026-03-29 02:00 BST"
    assert periods(utc_ms("2026-03-30T12:00")).week == utc_ms("2026-03-29T23:00")  # Monday in BST


def test_fall_back_2026_10_25() -> None:
    # 02:00 BST becomes 01:00 GMT at 01:00 UTC: local 01:xx happens twice, in two UTC hours
    first, second = utc_ms("2026-10-25T00:30"), utc_ms("2026-10-25T01:30")  # 01:30 BST, 01:30 GMT
    assert periods(first).hour == utc_ms("2026-10-25T00:00")
    assert periods(second).hour == utc_ms("2026-10-25T01:00")
    assert period_label("hour", periods(first).hour) == "2026-10-25 01:00 BST"
    assert period_label("hour", periods(second).hour) == "2026-10-25 01:00 GMT"
    day = utc_ms("2026-10-24T23:00")  # local midnight was still BST
    assert periods(utc_ms("2026-10-24T23:30")).day == day  # 00:30 BST on the 25th
    assert periods(utc_ms("2026-10-25T23:30")).day == day  # 23:30 GMT on the 25th
    assert periods(utc_ms("2026-10-26T00:00")).day - day == 25 * H
    assert periods(first).week == utc_ms("2026-10-18T23:00")  # Sunday 25th: week began Monday 19th, BST
    assert periods(first).month == utc_ms("2026-09-30T23:00")
    assert period_label("day", day) == "2026-10-25" and period_label("week", day) == "2026-W43"


def test_financial_year_and_iso_week_boundaries() -> None:
    assert periods(utc_ms("2026-03-31T22:59")).fy == utc_ms("2025-03-31T23:00")  # 23:59 BST 31 March
    assert periods(utc_ms("2026-03-31T23:00")).fy == utc_ms("2026-03-31T23:00")  # 00:00 BST 1 April
    assert period_label("fy", utc_ms("2026-03-31T23:00")) == "2026/27"
    assert period_label("fy", utc_ms("2099-04-01T00:00")) == "2099/00"
    assert periods(utc_ms("2025-12-28T23:30")).week == utc_ms("2025-12-22T00:00")
    w = periods(utc_ms("2025-12-29T00:30")).week
    assert w == utc_ms("2025-12-29T00:00") and period_label("week", w) == "2026-W01"
    assert period_label("month", utc_ms("2026-02-01T00:00")) == "2026-02"
    with pytest.raises(ValueError, match="unknown period kind"):
        period_label("decade", 0)


@given(st.integers(utc_ms("1990-01-01T00:00"), utc_ms("2040-01-01T00:00")))
def test_periods_contain_the_instant_and_start_at_local_boundaries(ms: int) -> None:
    p = periods(ms)
    local = datetime.fromtimestamp(ms / 1000, LONDON)
    d = local.date()

    def midnight(x: object) -> int:
        return int(datetime.combine(x, time(0), LONDON).timestamp() * 1000)  # type: ignore[arg-type]

    assert p.hour <= ms < p.hour + H and p.hour % H == 0
    assert p.day == midnight(d) <= ms < midnight(d + timedelta(days=1))
    assert p.week == midnight(d - timedelta(days=d.weekday()))
    assert p.month == midnight(d.replace(day=1))
    assert p.fy == midnight(d.replace(year=d.year if d.month >= 4 else d.year - 1, month=4, day=1))


def _clickhouse(sql: str) -> list[object]:
    """One query in embedded ClickHouse (chDB), in a child process so its session cannot clash with
    another test's. Returns the first row."""
    script = "import chdb, sys; sys.stdout.write(chdb.query(sys.stdin.read(), 'JSONCompact').bytes().decode())"
    out = subprocess.run([sys.executable, "-c", script], input=sql, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    row: list[object] = json.loads(out.stdout)["data"][0]
    return row


def test_clickhouse_reproduces_the_period_keys() -> None:
    rng = random.Random(7)
    xs = [rng.randrange(utc_ms("2020-01-01T00:00"), utc_ms("2031-01-01T00:00")) for _ in range(2000)]
    for weekend in ("2026-03-27T00:00", "2026-10-23T00:00", "2027-03-26T00:00", "2027-10-29T00:00"):
        xs += [utc_ms(weekend) + k * 15 * MINUTE for k in range(4 * 96)]
    xs += [utc_ms("2026-03-31T23:00") - 1, utc_ms("2026-03-31T23:00")]
    t = "fromUnixTimestamp64Milli(toInt64(x), 'UTC')"
    kinds = ("hour", "day", "week", "month", "fy")
    cols = ", ".join(f"arrayMap(x -> toInt64(toUnixTimestamp({PERIOD_SQL[k].format(t=t)})) * 1000, xs)"
                     for k in kinds)
    got = _clickhouse(f"WITH {xs} AS xs SELECT {cols}")
    for i, x in enumerate(xs):
        assert tuple(int(got[j][i]) for j in range(5)) == periods(x), x  # type: ignore[index]


# ---------------------------------------------------------------------------------------- centile
def test_centile_is_clickhouse_quantile_exact() -> None:
    assert centile([]) is None
    assert centile([5]) == 5
    assert centile(list(range(1, 11))) == 10  # index int(0.9 * 10) = 9: the largest of ten
    assert centile(list(range(1, 12))) == 10  # index int(9.9) = 9
    assert centile(list(range(1, 21))) == 19
    assert centile(list(range(1, 71))) == 64  # 0.9 * 70 = 63.00000000000001 -> index 63
    assert centile([3, 1, 2]) == 3


def test_clickhouse_reproduces_the_centile() -> None:
    rng = random.Random(11)
    lists = [[rng.choice([rng.randrange(0, 10), rng.randrange(0, 10**7)]) for _ in range(rng.randrange(1, 80))]
             for _ in range(400)]
    lists += [list(range(1, n + 1)) for n in range(1, 201)]
    got = _clickhouse(f"SELECT arrayMap(a -> arrayReduce('quantileExact(0.9)', a), {lists})")[0]
    assert [int(v) for v in got] == [centile(v) for v in lists]  # type: ignore[attr-defined]


@given(st.lists(st.integers(-10**9, 10**9), min_size=1))
def test_centile_properties(values: list[int]) -> None:
    c = centile(values)
    assert c in values
    below_or_equal = sum(1 for v in values if v <= c)  # type: ignore[operator]
    assert below_or_equal >= 0.9 * len(values)  # at least 90% at or below it
    assert centile(sorted(values, reverse=True)) == c


# ------------------------------------------------------------------------------------- aggregates
def test_disposition_counts_follow_ambsys() -> None:
    d = DispositionCounts()
    for disp, n in (("hear_and_treat", 2), ("see_and_treat", 3), ("conveyed_ed", 4), ("conveyed_elsewhere", 1),
                    (None, 5)):
        for _ in range(n):
            d.add(disp)
    n = d.numbers()
    assert (n["incidents"], n["face_to_face"], n["not_conveyed_ed"], n["open"]) == (10, 8, 6, 5)
    assert n["incidents"] == n["hear_and_treat"] + n["face_to_face"]  # A7 = A17 + A56
    assert n["face_to_face"] == n["conveyed_ed"] + n["conveyed_elsewhere"] + n["see_and_treat"]  # A56
    assert n["non_conveyance_rate"] == 0.6  # (A17 + A55 + A54) / A7 = 6 / 10; open not in the denominator
    assert (n["hear_and_treat_rate"], n["see_and_treat_rate"], n["conveyed_elsewhere_rate"],
            n["conveyed_ed_rate"]) == (0.2, 0.3, 0.1, 0.4)
    empty = DispositionCounts().numbers()
    assert empty["incidents"] == 0 and empty["non_conveyance_rate"] is None


def test_handover_figures() -> None:
    h = Handovers()
    for minutes in (10, 15, 20, 30, 50, 70):
        h.add(minutes * MINUTE, (minutes + 10) * MINUTE)
    h.add(None, None)  # arrived, handover not yet complete
    n = h.numbers()
    assert (n["arrivals"], n["handovers"], n["sum_ms"]) == (7, 6, 195 * MINUTE)
    assert n["mean_min"] == 32.5
    assert n["p90_min"] == 70  # index int(0.9 * 6) = 5
    assert (n["over_15"], n["over_30"], n["over_45"], n["over_60"]) == (4, 2, 2, 1)  # exactly 15 or 30 is not over
    assert n["lost_ms"] == (0 + 0 + 5 + 15 + 35 + 55) * MINUTE
    assert n["hours_lost"] == 110 / 60
    assert (n["clear_count"], n["clear_over_30"]) == (6, 3)  # clear 20, 25, 30, 40, 60, 80 min
    assert lost_ms(15 * MINUTE + 1) == 1 and lost_ms(0) == 0


def test_response_figures() -> None:
    r = ResponseTimes()
    for s in (300, 420, 600, 900):
        r.add(s * 1000)
    assert r.numbers() == {"count": 4, "sum_ms": 2_220_000, "mean_s": 555.0, "p90_ms": 900_000, "p90_s": 900.0}
    assert ResponseTimes().numbers()["mean_s"] is None


@given(st.lists(st.tuples(st.sampled_from(["hear_and_treat", "see_and_treat", "conveyed_ed", None]),
                          st.integers(0, 10**7), st.none() | st.integers(0, 10**7)), max_size=30),
       st.integers(0, 30), st.integers(0, 30))
def test_aggregates_merge_like_one_pass(items: list[tuple[str | None, int, int | None]], i: int, j: int) -> None:
    """Splitting the input anywhere and merging the parts, in either order, equals one pass."""
    i, j = sorted((min(i, len(items)), min(j, len(items))))
    parts = [items[:i], items[i:j], items[j:]]

    def build(chunk: list[tuple[str | None, int, int | None]]) -> list[object]:
        d, r, h, c = DispositionCounts(), ResponseTimes(), Handovers(), Calls111()
        for disp, v, w in chunk:
            d.add(disp)
            r.add(v)
            h.add(w, v)
            c.add_call(disp is None, w is not None, v % 2 == 0)
            c.add_incident_111()
        return [d, r, h, c]

    whole = [a.numbers() for a in build(items)]  # type: ignore[attr-defined]
    for order in (parts, parts[::-1]):
        acc = build([])
        for chunk in order:
            for a, b in zip(acc, build(chunk), strict=True):
                a.merge(b)  # type: ignore[attr-defined]
        assert [a.numbers() for a in acc] == whole  # type: ignore[attr-defined]


def test_quality_names_match_counts() -> None:
    assert Quality().numbers() == dict.fromkeys(Quality.NAMES, 0)


def test_table_rendering() -> None:
    day = utc_ms("2026-10-24T23:00")
    rows = {
        ("dispositions", "icb", "E54000001", "day", day): {
            "incidents": 3, "hear_and_treat": 1, "see_and_treat": 1, "conveyed_ed": 1, "conveyed_elsewhere": 0, "open": 2},
        ("response:C2", "icb", "E54000001", "day", day): {"count": 2, "mean_s": 1800.25, "p90_s": 2400.0},
        ("response:C1", "icb", "E54000001", "day", day): {"count": 1, "mean_s": 420.0, "p90_s": 420.0},
        ("dispositions", "icb", "E54000002", "month", day): {},
    }
    assert table(rows, "dispositions", "icb", "day") == [("E54000001", "2026-10-25", 3, 1, 1, 1, 0, 2)]
    resp = table(rows, "response", "icb", "day", code="E54000001")
    assert [r[2] for r in resp] == ["C1", "C2"]
    text = format_table(("code", "period", "category", "count", "mean_s", "p90_s"), resp)
    assert text.splitlines()[2].split() == ["E54000001", "2026-10-25", "C2", "2", "1800.2", "2400.0"]
    with pytest.raises(ValueError, match="unknown table"):
        table(rows, "nope", "icb", "day")
