"""Fuzzing the file and lookup surfaces: trust export files as `amb publish` reads them (JSON Lines,
CSV, Avro, gzip; amb.publisher.RecordFile then domain.validation.parse_record) and the geography
lookup (postcodes in any spelling, coordinates of any value; amb.geo.index.GeoIndex.lookup).

No crash: a damaged file is an AmbError (one line, names the file), a bad record a Rejection, an
unplaceable location a Placement with an explicit status.
"""

from __future__ import annotations

import gzip
import math
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amb import config
from amb.errors import AmbError
from amb.publisher import RecordFile
from domain.events import Event
from domain.validation import Rejection, parse_record

NOW = int(time.time() * 1000)
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HEADER = b"event_id,event_type,trust,incident_id,event_time,clock_start,category,source,postcode\n"
GOOD_JSONL = (b'{"event_id": "0b0c8f5e-3a1e-4f57-9d55-9e3c1f1e8a01", "event_type": "incident_created", '
              b'"trust": "RX6", "incident_id": "I1", "event_time": "2025-10-01T10:00:00Z", '
              b'"clock_start": "2025-10-01T10:00:00Z", "category": "C2", "source": "999", "postcode": "NE1 4LP"}\n')


def read_all(path: Path, fmt: str = "auto") -> int:
    """Iterate a file as `amb publish` does; returns records seen. Only AmbError may escape."""
    n = 0
    try:
        rf = RecordFile(path, fmt)
    except AmbError:
        return 0
    try:
        for line, item in rf:
            assert line is None or line >= 1
            if isinstance(item, dict):
                item = parse_record(item, now_ms=NOW, trust="RX6")
            assert isinstance(item, Event | Rejection)
            n += 1
    except AmbError as exc:
        assert str(exc)
    finally:
        rf.close()
    return n


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del b[i:i + draw(st.integers(1, 20))]
        elif op == 2:
            b[i:i] = draw(st.sampled_from([b",", b'"', b"\n", b"\r", b"{", b"}", b"\x00", b"\xff\xfe", b"\\"]))
        else:
            b[i:i] = b[i:i + draw(st.integers(1, 40))]
    return bytes(b)


@st.composite
def export_files(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["jsonl", "csv", "avro", "raw"]))  # damaged gzip: see the xfail below
    if kind == "jsonl":
        return ".jsonl", mutate(GOOD_JSONL * draw(st.integers(1, 3)), draw)
    if kind == "csv":
        row = b"0b0c8f5e-3a1e-4f57-9d55-9e3c1f1e8a01,incident_created,RX6,I1,2025-10-01T10:00:00Z,,C2,999,NE1 4LP\n"
        return ".csv", mutate(HEADER + row * draw(st.integers(1, 3)), draw)
    if kind == "avro":
        return ".avro", mutate(avro_file(), draw)
    return draw(st.sampled_from([".jsonl", ".csv", ".avro", ".txt", ""])), draw(st.binary(max_size=200))


_AVRO: list[bytes] = []


def avro_file() -> bytes:
    if not _AVRO:
        import io

        import fastavro

        from amb.codec import event_to_avro, load_schema, strip_logical_types
        from domain.validation import parse_record as parse

        ev = parse(__import__("json").loads(GOOD_JSONL), now_ms=NOW)
        assert isinstance(ev, Event)
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(strip_logical_types(load_schema())),
                        [event_to_avro(ev, NOW)] * 3)
        _AVRO.append(buf.getvalue())
    return _AVRO[0]


@FUZZ
@given(export_files())
def test_damaged_export_files_are_refused_with_one_line_errors(tmp_path: Path, file: tuple[str, bytes]) -> None:
    suffix, data = file
    path = tmp_path / f"export{suffix}"
    path.write_bytes(data)
    read_all(path)


def test_undamaged_files_give_their_records(tmp_path: Path) -> None:
    for suffix, data in ((".jsonl", GOOD_JSONL * 2), (".avro", avro_file()), (".jsonl.gz", gzip.compress(GOOD_JSONL))):
        path = tmp_path / f"ok{suffix}"
        path.write_bytes(data)
        assert read_all(path) >= 1


def _damaged_gzip(how: str) -> bytes:
    z = gzip.compress(GOOD_JSONL)
    if how == "truncated":
        return z[:-10]
    if how == "corrupt":
        b = bytearray(z)
        b[20] ^= 0xFF
        return bytes(b)
    return b"\x1e\x8b" + z[2:]  # .gz name, not gzip magic


@pytest.mark.parametrize("how", ["truncated", "corrupt", "not_gzip"])
def test_damaged_gzip_exports_are_one_line_errors(tmp_path: Path, how: str) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(_damaged_gzip(how))
    with pytest.raises(AmbError, match="export.jsonl.gz is not a readable gzip file"):
        rf = RecordFile(path)
        list(rf)


# --- geography lookup ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def index():  # type: ignore[no-untyped-def]
    from amb.geo.index import GeoIndex

    return GeoIndex(config.load().geo_index_dir)


postcodes = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"[A-Za-z]{1,2}[0-9][0-9A-Za-z]? ?[0-9][A-Za-z]{2}", fullmatch=True),
    st.sampled_from(["SW1A 1AA", "sw1a1aa", " NE1  4LP ", "GIR 0AA", "BF1 1AA", "ZZ99 9ZZ", "", " ", "\x00", "ÉÉ1 1ÉÉ"]),
)
coords = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 60)


@FUZZ
@given(postcodes)
def test_any_postcode_text_is_placed_or_given_a_status(index, postcode: str) -> None:  # type: ignore[no-untyped-def]
    p = index.lookup(postcode=postcode)
    assert p.status and isinstance(p.status, str)


@FUZZ
@given(coords, coords, st.booleans())
def test_any_coordinates_are_placed_or_given_a_status(index, a: float, b: float, osgb: bool) -> None:  # type: ignore[no-untyped-def]
    p = index.lookup(easting=a, northing=b) if osgb else index.lookup(lat=a, lon=b)
    assert p.status
    if not all(map(math.isfinite, (a, b))):
        assert p.status != "ok"
