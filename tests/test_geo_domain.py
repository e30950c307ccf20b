"""The pure geography core (domain.geo): no index, no files."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.geo import attribute as ga
from domain.geo import vintage as gv
from domain.geo.postcode import (
    key_to_postcode,
    keys_to_postcodes,
    normalise_keys,
    normalise_postcode,
    postcode_key,
)
from domain.geo.status import STATUS_NAMES, Country, Status, reason, reasons, status_from_name

POSTCODE = r"(?:[A-Z][0-9][A-Z0-9]?|[A-Z]{2}[0-9][A-Z0-9]?) [0-9][A-Z]{2}"


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(canonical postcode, the same postcode in a random spelling)."""
    canon = draw(st.from_regex(POSTCODE, fullmatch=True))
    chars = []
    for ch in canon.replace(" ", ""):
        chars.append(draw(st.sampled_from(["", " ", "  ", "\t", "\xa0"])))
        chars.append(ch.lower() if draw(st.booleans()) else ch)
    chars.append(draw(st.sampled_from(["", " ", "\n"])))
    return canon, "".join(chars)


# --- postcodes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["sw1a1aa", "SW1A 1AA", "SW1A  1AA", " sw1a 1AA\n", "S W 1 A 1 A A", "sw1a\xa01aa"])
def test_every_spelling_of_one_postcode_gives_one_key(text: str) -> None:
    assert normalise_postcode(text) == "SW1A 1AA"
    keys, status = normalise_keys([text])
    assert status[0] == Status.OK
    assert int(keys[0]) == postcode_key("SW1A1AA")


@given(spellings())
def test_random_spellings_normalise_to_the_canonical_form(pair: tuple[str, str]) -> None:
    canon, spelled = pair
    assert normalise_postcode(spelled) == canon
    key = postcode_key(spelled)
    assert key is not None and key_to_postcode(key) == canon
    keys, status = normalise_keys([spelled, canon])
    assert list(status) == [Status.OK, Status.OK]
    assert int(keys[0]) == int(keys[1]) == key


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(max_size=12), st.from_regex(POSTCODE, fullmatch=True), st.none()), max_size=30))
def test_vectorised_normalisation_agrees_with_the_scalar_one(texts: list[str | None]) -> None:
    keys, status = normalise_keys(texts)
    for text, k, s in zip(texts, keys, status, strict=True):
        expect = postcode_key(text)
        if expect is None:
            assert k == 0
            blank = text is None or not re.sub(r"[\t\n\v\f\r \xa0\x00]", "", text)
            assert s == (Status.NO_LOCATION if blank else Status.INVALID_POSTCODE)
        else:
            assert s == Status.OK and int(k) == expect


def test_long_junk_does_not_widen_the_batch_and_is_still_judged() -> None:
    texts = ["SW1A 1AA" + " " * 100, "x" * 500, "M1 1AE", "SW1A 1AA" + " " * 50 + "X"]
    keys, status = normalise_keys(texts)
    assert list(status) == [Status.OK, Status.INVALID_POSTCODE, Status.OK, Status.INVALID_POSTCODE]
    assert list(keys_to_postcodes(keys)) == ["SW1A 1AA", "", "M1 1AE", ""]


@pytest.mark.parametrize("text", ["", "   ", None, float("nan")])
def test_missing_postcodes_are_no_location(text: object) -> None:
    _, status = normalise_keys(np.array([text, "M1 1AE"], dtype=object))
    assert status[0] == Status.NO_LOCATION and status[1] == Status.OK


@pytest.mark.parametrize("text", ["XX", "12345", "SW1A1AAA", "NPT 0AD", "SW1A 1AÁ", "SW1A-1AA", "1W1A 1AA", "W1 AAA"])
def test_malformed_postcodes_are_invalid(text: str) -> None:
    assert normalise_postcode(text) is None
    assert normalise_keys([text])[1][0] == Status.INVALID_POSTCODE


def test_all_postcode_shapes_and_girobank() -> None:
    for text in ("M1 1AE", "B33 8TH", "W1A 0AX", "CR2 6XH", "DN55 1PT", "EC1A 1BB", "GIR 0AA"):
        assert normalise_postcode(text.lower().replace(" ", "")) == text


def test_keys_sort_like_postcodes_with_padded_outward_codes() -> None:
    texts = ["B1 1AA", "B10 0AA", "B1A 1AA", "BA1 1AA", "A1 1AA"]
    keys, _ = normalise_keys(texts)
    order = [texts[i] for i in np.argsort(keys)]
    assert order == sorted(texts, key=lambda t: f"{t.split()[0]:<4}{t.split()[1]}")


# --- statuses -------------------------------------------------------------------------------------

def test_status_names_round_trip_and_reasons_name_the_cause() -> None:
    for s in Status:
        assert status_from_name(STATUS_NAMES[s]) == s
    with pytest.raises(ValueError, match="unknown geography status"):
        status_from_name("nope")
    assert reason(Status.OUTSIDE_ENGLAND, Country.WALES) == "in Wales"
    assert "2000 m" in reason(Status.TOO_FAR_FROM_POSTCODE, max_distance_m=2000)
    r = reasons(np.array([0, 6, 6], dtype=np.uint8), np.array([1, 3, 4], dtype=np.uint8), 2000)
    assert list(r) == ["ok", "in Scotland", "in Northern Ireland"]


# --- vintages -------------------------------------------------------------------------------------

V24 = gv.Vintage("2024-04", date(2024, 4, 1))
V26 = gv.Vintage("2026-04", date(2026, 4, 1))


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


def test_a_vintage_starts_at_midnight_london_time() -> None:
    starts = gv.starts_ms([V24, V26])
    times = [_ms("2026-03-31T12:00:00+01:00"), _ms("2026-03-31T22:59:59.999+00:00"),
             _ms("2026-03-31T23:00:00+00:00"), _ms("2027-01-01T00:00:00+00:00"), _ms("2020-01-01T00:00:00+00:00")]
    assert list(gv.select(starts, times, len(times))) == [0, 0, 1, 1, 0]
    assert list(gv.select(starts, None, 2)) == [1, 1]
    assert gv.select_date([V24, V26], date(2026, 3, 31)) == 0
    assert gv.select_date([V24, V26], date(2026, 4, 1)) == 1
    assert gv.local_date(_ms("2026-03-31T23:30:00+00:00")) == date(2026, 4, 1)


def test_vintages_must_increase() -> None:
    with pytest.raises(gv.GeographyDataError):
        gv.starts_ms([V26, V24])


def _row(lsoa: str, sicbl: str, icb: str, region: str = "E40000003") -> dict[str, str]:
    return {"lsoa21_code": lsoa, "msoa21_code": "E02" + lsoa[3:], "msoa21_name": "m", "lad_code": "E09000001",
            "lad_name": "l", "sicbl_code": sicbl, "sicbl_ods": sicbl[-3:], "sicbl_name": "s", "icb_code": icb,
            "icb_ods": "Q" + icb[-2:], "icb_name": "icb " + icb, "region_code": region, "region_ods": "Y56",
            "region_name": "London"}


LSOAS = ["E01000001", "E01000002", "E01000003", "E01000004"]
ROWS = [_row("E01000001", "E38000001", "E54000001"), _row("E01000002", "E38000001", "E54000001"),
        _row("E01000003", "E38000002", "E54000002"), _row("E01000004", "E38000003", "E54000002")]


def test_full_table_vintage_and_its_invariants() -> None:
    h = gv.from_rows(V24, LSOAS, ROWS)
    assert list(h.codes("icb", np.array([0, 2, -1], dtype=np.int32))) == ["E54000001", "E54000002", ""]
    with pytest.raises(gv.GeographyDataError, match="lies in two icbs"):
        gv.from_rows(V24, LSOAS, [*ROWS[:3], _row("E01000004", "E38000001", "E54000002")])
    with pytest.raises(gv.GeographyDataError, match="have no row"):
        gv.from_rows(V24, LSOAS, ROWS[:3])
    with pytest.raises(gv.GeographyDataError, match="appears twice"):
        gv.from_rows(V24, LSOAS, [*ROWS, ROWS[0]])
    with pytest.raises(gv.GeographyDataError, match="blank"):
        gv.from_rows(V24, LSOAS, [*ROWS[:3], {**ROWS[3], "icb_code": ""}])


def test_remap_merges_whole_icbs_and_moves_single_sicbls() -> None:
    base = gv.from_rows(V24, LSOAS, ROWS)
    remap = [
        {"old_icb_code": "E54000001", "sicbl_code": "", "new_icb_code": "E54900001", "new_icb_ods": "",
         "new_icb_name": "merged", "new_region_code": "E40000003"},
        {"old_icb_code": "", "sicbl_code": "E38000003", "new_icb_code": "E54900001", "new_icb_ods": "",
         "new_icb_name": "merged", "new_region_code": "E40000003"},
    ]
    h = gv.remap(base, V26, remap)
    all_lsoas = np.arange(4, dtype=np.int32)
    assert list(h.codes("icb", all_lsoas)) == ["E54900001", "E54900001", "E54000002", "E54900001"]
    assert list(h.codes("sicbl", all_lsoas)) == list(base.codes("sicbl", all_lsoas))
    assert list(h.codes("region", all_lsoas)) == ["E40000003"] * 4
    with pytest.raises(gv.GeographyDataError, match="unknown ICB"):
        gv.remap(base, V26, [{**remap[0], "old_icb_code": "E54999999"}])
    with pytest.raises(gv.GeographyDataError, match="unknown region"):
        gv.remap(base, V26, [{**remap[0], "new_region_code": "E40999999"}])
    with pytest.raises(gv.GeographyDataError, match="neither"):
        gv.remap(base, V26, [{**remap[0], "old_icb_code": ""}])


# --- attribution over synthetic tables -----------------------------------------------------------

def _table() -> ga.PostcodeTable:
    texts = ["AA1 1AA", "AA1 1AB", "AA1 1AD", "CF1 1AA", "BD98 1GA"]
    keys, _ = normalise_keys(texts)
    order = np.argsort(keys)
    return ga.PostcodeTable(
        keys=keys[order],
        lsoa=np.array([0, 1, 2, -1, -1], dtype=np.int32)[order],
        status=np.array([Status.OK, Status.TERMINATED_POSTCODE, Status.OK, Status.OUTSIDE_ENGLAND,
                         Status.NON_GEOGRAPHIC_POSTCODE], dtype=np.uint8)[order],
        country=np.array([1, 1, 1, 2, 1], dtype=np.uint8)[order],
        fit=np.array([1, 1, 2, 0, 0], dtype=np.uint8)[order],
    )


def test_lookup_keys_gives_each_postcode_its_status_and_lsoa() -> None:
    texts = ["aa11ab", "AA1 1AA", "ZZ9 9ZZ", "nonsense", None, "cf11aa", "BD981GA", "AA1 1AD"]
    keys, pre = normalise_keys(texts)
    att = ga.lookup_keys(_table(), keys, pre)
    names = [STATUS_NAMES[s] for s in att.status]
    assert names == ["terminated_postcode", "ok", "unknown_postcode", "invalid_postcode", "no_location",
                     "outside_england", "non_geographic_postcode", "ok"]
    assert list(att.lsoa) == [1, 0, -1, -1, -1, -1, -1, 2]
    assert list(att.placed) == [True, True, False, False, False, False, False, True]
    assert list(ga.fallback_mask(att.status)) == [False, False, True, True, True, False, True, False]


def test_nearest_results_respect_the_distance_limit_and_the_country() -> None:
    points = ga.PointTable(lsoa=np.array([5, -1], dtype=np.int32), country=np.array([1, 3], dtype=np.uint8),
                           postcode=np.array([10, 11], dtype=np.int32))
    pre = np.array([0, 0, 0, 2, 7], dtype=np.uint8)
    att = ga.from_nearest(points, np.array([0, 1, 0, 2, 2]), np.array([10.0, 5.0, 2500.0, np.inf, np.inf]),
                          pre, 2000.0, ga.Method.OSGB)
    assert [STATUS_NAMES[s] for s in att.status] == ["ok", "outside_england", "too_far_from_postcode",
                                                     "no_location", "invalid_coordinates"]
    assert list(att.lsoa) == [5, -1, -1, -1, -1]
    assert list(att.postcode) == [10, 11, -1, -1, -1]


def test_coordinate_classification() -> None:
    e = np.array([530000, np.nan, -5, 800000, 1])
    n = np.array([180000, 1, 1, 1, np.nan])
    assert [STATUS_NAMES[s] for s in ga.classify_osgb(e, n)] == [
        "ok", "no_location", "invalid_coordinates", "invalid_coordinates", "no_location"]
    la = np.array([53.4, 91, np.nan, -33.9])
    lo = np.array([-2.2, 0, 0, 151.2])
    assert [STATUS_NAMES[s] for s in ga.classify_wgs84(la, lo)] == ["ok", "invalid_coordinates", "no_location", "ok"]


def test_choose_merges_row_wise() -> None:
    a = ga.empty(3, Status.UNKNOWN_POSTCODE)
    b = ga.empty(3, Status.OK)
    b.lsoa[:] = 7
    m = ga.choose(a, b, np.array([False, True, False]))
    assert list(m.status) == [Status.UNKNOWN_POSTCODE, Status.OK, Status.UNKNOWN_POSTCODE]
    assert list(m.lsoa) == [-1, 7, -1]
