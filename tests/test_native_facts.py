"""The sink's native fact decoder (native/src/facts.rs) against the pyarrow.json path it speeds up.

For canonical messages (what the worker writes) both must give the same Arrow tables; for
anything else the native decoder must say None (so the pyarrow path, with its own verdict, runs)
or, where it still reads the bytes, agree with pyarrow exactly. It may refuse more, never accept
more.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.facts import Call111Fact, HandoverFact, IncidentFact
from sinks import loader
from streams import fact_codec
from streams.native import load

pytestmark = pytest.mark.skipif(load() is None or not hasattr(load(), "decode_facts"),
                                reason="amb_native is not built (make builds it)")

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
INT = st.integers(-(2**62), 2**62)


def _value(t: Any) -> st.SearchStrategy[Any]:
    s = str(t)
    base = s.removesuffix(" | None")
    inner = {"str": TEXT, "int": INT, "bool": st.booleans()}[base]
    return st.none() | inner if s.endswith(" | None") else inner


def facts_of(cls: type) -> st.SearchStrategy[Any]:
    fields = dataclasses.fields(cls)
    kwargs = {f.name: (st.integers(0, 2**31) if f.name == "version" else _value(f.type)) for f in fields}
    return st.builds(cls, **kwargs)


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            inc = draw(facts_of(IncidentFact))
            hand = draw(st.none() | facts_of(HandoverFact))
            out.append(fact_codec.encode_incident(inc, hand))
        else:
            out.append(fact_codec.encode_call(draw(facts_of(Call111Fact))))
    return out


def pyarrow_path(values: list[bytes]) -> dict[str, pa.Table] | None:
    real = loader._native_columns
    loader._native_columns = lambda v: None  # type: ignore[assignment]
    try:
        return loader.decode_columns(values)
    finally:
        loader._native_columns = real  # type: ignore[assignment]


def same(a: dict[str, pa.Table] | None, b: dict[str, pa.Table] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_canonical_messages_decode_exactly_as_pyarrow_does(values: list[bytes]) -> None:
    native = loader._native_columns(values)
    assert native is not None
    assert same(native, pyarrow_path(values))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_spoilt_messages_are_refused_or_read_as_pyarrow_reads_them(values: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(values) - 1))
    v = bytearray(values[i])
    how = data.draw(st.sampled_from(["flip", "cut", "insert", "space"]))
    at = data.draw(st.integers(0, len(v) - 1))
    if how == "flip":
        v[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        v = v[:at]
    elif how == "insert":
        v[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        v[at:at] = b" "
    values[i] = bytes(v)
    native = loader._native_columns(values)
    if native is not None:
        assert same(native, pyarrow_path(values))


def test_a_required_field_null_or_another_order_goes_to_the_pyarrow_path() -> None:
    call = Call111Fact("RX6", "C1", 1, 0, 0, 0, 0, 0, 0, None, None, "a", "b", "c", "d", "e", "f", "ok")
    good = fact_codec.encode_call(call)
    assert loader._native_columns([good]) is not None
    assert loader._native_columns([good.replace(b'"trust":"RX6"', b'"trust":null')]) is None
    assert loader._native_columns([good.replace(b'{"f":1,"kind":"call_111"', b'{"kind":"call_111","f":1')]) is None
    assert loader._native_columns([good.replace(b'"version":1', b'"version":1.0')]) is None
