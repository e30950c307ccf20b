"""Every schema in schemas/ stays compatible, both ways, with its released snapshot (schemas/released/v1).

Two independent checks: a structural one (the Avro spec's schema-resolution rules, for the shapes
we use) and a behavioural one (fastavro writes samples with one schema and reads them with the
other). Each must also catch deliberately breaking changes, or it proves nothing.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from test_validation import EXAMPLE_NOW, NOW, example

from amb.codec import SCHEMA_DIR, event_to_avro, released_versions
from domain.events import Event, EventType
from domain.validation import parse_record

CURRENT = sorted(SCHEMA_DIR.glob("*.avsc"))
PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
              "string": {"bytes"}, "bytes": {"string"}}


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def latest_release(name: str) -> dict[str, Any]:
    versions = released_versions(name)
    assert versions, f"schemas/{name}.avsc has no released snapshot under schemas/released/"
    return load(SCHEMA_DIR / "released" / versions[-1] / f"{name}.avsc")


# ----------------------------------------------------------------------------- structural check


def _type(t: Any) -> Any:
    while isinstance(t, dict) and t.get("type") not in ("record", "enum", "fixed", "array", "map"):
        t = t["type"]
    return t


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def resolution_problems(writer: Any, reader: Any, path: str = "") -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can), per the Avro spec."""
    writer, reader = _type(writer), _type(reader)
    if isinstance(writer, list):
        out = []
        for branch in writer:
            out += resolution_problems(branch, reader, f"{path}<{_kind(branch)}>")
        return out
    if isinstance(reader, list):
        if any(not resolution_problems(writer, branch, path) for branch in reader):
            return []
        return [f"{path}: no branch of reader union {[_kind(b) for b in reader]} reads {_kind(writer)}"]
    wk, rk = _kind(writer), _kind(reader)
    if isinstance(writer, str) and isinstance(reader, str):
        return [] if writer == reader or reader in PROMOTIONS.get(writer, ()) else [f"{path}: {writer} -> {reader}"]
    if wk != rk or not isinstance(writer, dict) or not isinstance(reader, dict):
        return [f"{path}: {wk} -> {rk}"]
    kind = writer["type"]
    if kind in ("record", "enum", "fixed") and _short(writer["name"]) != _short(reader["name"]) and \
            _short(writer["name"]) not in map(_short, reader.get("aliases", [])):
        return [f"{path}: named type {writer['name']} -> {reader['name']}"]
    if kind == "record":
        out = []
        wfields = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            names = [f["name"], *f.get("aliases", [])]
            match = next((wfields[n] for n in names if n in wfields), None)
            if match is None:
                if "default" not in f:
                    out.append(f"{path}.{f['name']}: new field without a default")
            else:
                out += resolution_problems(match["type"], f["type"], f"{path}.{f['name']}")
        return out
    if kind == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{path}: enum symbols {missing} unknown to the reader, which has no default"]
        return []
    if kind == "fixed":
        return [] if writer["size"] == reader["size"] else [f"{path}: fixed size {writer['size']} -> {reader['size']}"]
    if kind == "array":
        return resolution_problems(writer["items"], reader["items"], f"{path}[]")
    if kind == "map":
        return resolution_problems(writer["values"], reader["values"], f"{path}{{}}")
    return [f"{path}: unsupported {kind}"]


def _kind(t: Any) -> str:
    t = _type(t)
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        return str(t["type"])
    return str(t)


# ----------------------------------------------------------------------------- behavioural check


def samples(name: str) -> list[dict[str, Any]]:
    """Records of each schema to write: every example, every event type, nulls and all."""
    records = [example(t.value) for t in EventType]
    if name == "trust_export":
        return records
    if name == "trust_event":
        events = [parse_record(r, now_ms=EXAMPLE_NOW) for r in records]
        return [event_to_avro(e, NOW) for e in events if isinstance(e, Event)]
    raise AssertionError(f"add samples for schemas/{name}.avsc to this test")


def round_trip(writer: dict[str, Any], reader: dict[str, Any], records: list[dict[str, Any]]) -> list[Any]:
    w, r = fastavro.parse_schema(copy.deepcopy(writer)), fastavro.parse_schema(copy.deepcopy(reader))
    out = []
    for record in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, w, record)
        buf.seek(0)
        out.append(fastavro.schemaless_reader(buf, w, r))
    return out


# ----------------------------------------------------------------------------- the tests


def test_there_is_something_to_check() -> None:
    assert {p.stem for p in CURRENT} >= {"trust_event", "trust_export"}


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.stem)
def test_current_schema_resolves_both_ways_with_the_release(path: Path) -> None:
    new, old = load(path), latest_release(path.stem)
    assert resolution_problems(old, new) == [], "new reader cannot read old data"
    assert resolution_problems(new, old) == [], "old reader cannot read new data"
    records = samples(path.stem)
    assert len(round_trip(old, new, records)) == len(records)
    assert len(round_trip(new, old, records)) == len(records)


def _add_required_field(s: dict[str, Any]) -> None:
    s["fields"].append({"name": "crew_id", "type": "string"})


def _change_type(s: dict[str, Any]) -> None:
    f = next(f for f in s["fields"] if f["name"] == "incident_id")
    f["type"] = "long"


def _rename_field(s: dict[str, Any]) -> None:
    f = next(f for f in s["fields"] if f["name"] == "trust")
    f["name"] = "trust_code"


def _drop_null(s: dict[str, Any]) -> None:
    f = next(f for f in s["fields"] if f["name"] == "site")
    f["type"] = "string"
    f.pop("default", None)


def _drop_enum_symbol(s: dict[str, Any]) -> None:
    f = next(f for f in s["fields"] if f["name"] == "event_type")
    f["type"]["symbols"].remove("handover")
    f["type"].pop("default")
    f["type"]["symbols"].remove("unknown")


BREAKING: dict[str, Callable[[dict[str, Any]], None]] = {
    "new field without default": _add_required_field,
    "string field becomes long": _change_type,
    "field renamed without alias": _rename_field,
    "nullable field becomes required": _drop_null,
    "enum symbol removed, no default": _drop_enum_symbol,
}


@pytest.mark.parametrize("change", list(BREAKING))
def test_a_breaking_change_is_detected(change: str) -> None:
    old = latest_release("trust_event")
    new = copy.deepcopy(old)
    BREAKING[change](new)
    problems = resolution_problems(old, new) + resolution_problems(new, old)
    assert problems, f"{change} was not detected structurally"
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises several types; any failure is the point
        round_trip(old, new, samples("trust_event"))


def test_a_compatible_change_passes() -> None:
    """The kind of change a v2 would make: a nullable field with a default, an enum symbol added."""
    old = latest_release("trust_event")
    new = copy.deepcopy(old)
    new["fields"].append({"name": "crew_count", "type": ["null", "int"], "default": None})
    next(f for f in new["fields"] if f["name"] == "event_type")["type"]["symbols"].append("vehicle_released")
    new["fields"][-1]["aliases"] = ["crews"]
    assert resolution_problems(old, new) == [] and resolution_problems(new, old) == []
    records = samples("trust_event")
    assert round_trip(old, new, records)[0]["crew_count"] is None
    newer = [{**r, "crew_count": 2, "event_type": "vehicle_released"} for r in records]
    # an old reader maps the new symbol to the enum default and ignores the new field
    back = round_trip(new, old, newer)
    assert back[0]["event_type"] == "unknown" and "crew_count" not in back[0]
