"""Avro encoding of trust events on Kafka: the one place bytes become Events and back.

Two wire formats, both Avro binary of ``schemas/trust_event.avsc``:

* **single-object encoding** (Avro spec; the default, no registry needed): ``C3 01`` + the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + body.
  The fingerprint names the writer schema: the current one or any in ``schemas/released/``.
* **Confluent wire format** (when ``AMB_SCHEMA_REGISTRY_URL`` is set): ``00`` + 4-byte big-endian
  schema id + body, written and read by ``confluent_kafka.schema_registry.avro``.

The decoder accepts both, whatever the settings say, so a topic can move from one to the other.

Speed: fastavro is correct but spends ~20 us per event on this envelope (nullable unions), which
is more than producing it to Kafka. The encoder here is generated once from the schema (plain
Python expressions over the Event's attributes, table lookups for varints and enums) and checked
byte-for-byte against fastavro by the tests; the decoder is generated the same way and falls back
to fastavro for older writer schemas (schema resolution). A schema the generator does not
understand falls back to fastavro entirely.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields as dc_fields
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import fastavro

from amb.errors import AmbError
from domain.events import Category, Disposition, Event, EventType, Location, Source
from domain.validation import Code, Reason, Rejection, validate

if TYPE_CHECKING:
    from amb.config import Settings

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
"""schemas/ at the repository root: the source of truth for every Avro schema."""
EVENT_SCHEMA: Final = "trust_event"
SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = 0
CONFLUENT_MAGIC_V1: Final = 1  # schema guid instead of id (newer Confluent clients)

Wire = Literal["single", "confluent"]

# Avro enum name -> Python enum. Symbols match member values, except where Avro's symbol rules
# forbid it (Source "999"): then the member name is the symbol.
PY_ENUMS: Final[dict[str, type[Enum]]] = {
    "EventType": EventType, "Category": Category, "Source": Source, "Disposition": Disposition,
}


class RegistryUnavailable(AmbError):
    """The schema registry could not be asked (down, refused, unauthorised): an outage, not bad
    data, so it is raised instead of dead-lettering every message while it lasts."""


def _registry_failure(exc: BaseException) -> str | None:
    """'missing' for a schema the registry does not have, 'outage' for any other registry or HTTP
    failure, None when ``exc`` did not come from the registry at all."""
    status = getattr(exc, "http_status_code", None)
    if type(exc).__name__ == "SchemaRegistryError":
        return "missing" if status == 404 else "outage"
    if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
        return "outage"
    return None


class DecodeError(AmbError):
    """Bytes that are not a trust event; ``reason`` is what the dead-letter topic records."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.reason = Reason(code, message)


# ---------------------------------------------------------------------------------------------
# Schemas and fingerprints


@functools.cache
def load_schema(name: str = EVENT_SCHEMA, version: str | None = None) -> dict[str, Any]:
    """The JSON of ``schemas/<name>.avsc`` (or ``schemas/released/<version>/<name>.avsc``)."""
    path = SCHEMA_DIR / f"{name}.avsc" if version is None else SCHEMA_DIR / "released" / version / f"{name}.avsc"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AmbError(f"Avro schema {path} not found (is the repository's schemas/ directory there?)") from None
    if not isinstance(data, dict):
        raise AmbError(f"{path}: not an Avro record schema")
    return data


def released_versions(name: str = EVENT_SCHEMA) -> list[str]:
    """Released versions of a schema, oldest first (``v1``, ``v2``, ...)."""
    root = SCHEMA_DIR / "released"
    found = [p.parent.name for p in root.glob(f"v*/{name}.avsc")]
    return sorted(found, key=lambda v: int(v[1:]) if v[1:].isdigit() else 0)


def canonical_form(schema: Mapping[str, Any]) -> str:
    """Avro Parsing Canonical Form: what the fingerprint is taken over (no docs, defaults, logical types)."""
    return str(fastavro.schema.to_parsing_canonical_form(dict(schema)))


_CRC64_EMPTY: Final = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE: Final = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 of the Avro spec ("CRC-64-AVRO"), as an unsigned 64-bit int."""
    fp = _CRC64_EMPTY
    table = _CRC64_TABLE
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: Mapping[str, Any]) -> bytes:
    """8-byte little-endian CRC-64-AVRO of the canonical form: the single-object header's id."""
    return crc64_avro(canonical_form(schema).encode()).to_bytes(8, "little")


def strip_logical_types(schema: Any) -> Any:
    """The same schema without logicalType/doc: identical binary encoding and fingerprint, but
    fastavro then reads times as int milliseconds and ids as str, as the domain wants them."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k not in ("logicalType", "doc")}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


# ---------------------------------------------------------------------------------------------
# Primitive encoders (Avro binary): varints by table lookup, 14 bits at a time.

_SHORT: Final = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14)]
_MID: Final = [bytes([(n & 0x7F) | 0x80, (n >> 7) | 0x80]) for n in range(1 << 14)]
_U64: Final = 1 << 64


def _uvarint(n: int) -> bytes:
    if n < 0x4000:
        return _SHORT[n]
    if n < 0x10000000:
        return _MID[n & 0x3FFF] + _SHORT[n >> 14]
    if n < 0x40000000000:
        return _MID[n & 0x3FFF] + _MID[(n >> 14) & 0x3FFF] + _SHORT[n >> 28]
    if n >= _U64:
        raise OverflowError("value does not fit an Avro long")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(n: int) -> bytes:
    """Avro int/long: zigzag then varint. Epoch-millisecond times (< 2**41, until 2039) take the
    first branch: three table lookups, no loop."""
    if 0 <= n < 0x20000000000:
        n <<= 1
        if n < 0x4000:
            return _SHORT[n]
        if n < 0x10000000:
            return _MID[n & 0x3FFF] + _SHORT[n >> 14]
        return _MID[n & 0x3FFF] + _MID[(n >> 14) & 0x3FFF] + _SHORT[n >> 28]
    if not -0x8000000000000000 <= n <= 0x7FFFFFFFFFFFFFFF:
        raise OverflowError(f"{n} does not fit an Avro long")
    return _uvarint((n << 1) ^ (n >> 63))


def _str(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_SHORT[n << 1] if n < 0x2000 else _uvarint(n << 1)) + b


def _bytes(b: bytes) -> bytes:
    n = len(b)
    return (_SHORT[n << 1] if n < 0x2000 else _uvarint(n << 1)) + b


_pack_double: Final = struct.Struct("<d").pack
_pack_bd: Final = struct.Struct("<Bd").pack  # a union branch byte and a double in one call
_pack_float: Final = struct.Struct("<f").pack
_unpack_double: Final = struct.Struct("<d").unpack_from
_unpack_float: Final = struct.Struct("<f").unpack_from


# ---------------------------------------------------------------------------------------------
# Generated encoder and decoder


class _Unsupported(Exception):
    """The generator does not handle this schema shape: use fastavro for it."""


def _field_type(t: Any) -> Any:
    """Strip a {"type": X} wrapper that only carries annotations (logical types, docs)."""
    while isinstance(t, dict) and t.get("type") not in ("record", "enum", "fixed", "array", "map"):
        t = t["type"]
    return t


def _nullable(t: Any) -> tuple[int, Any] | None:
    """For ["null", X] or [X, "null"]: (index of X, X). None for anything else."""
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        i = 1 - t.index("null")
        return i, _field_type(t[i])
    return None


def _enum_symbol_map(schema: Mapping[str, Any]) -> dict[Any, int]:
    """Python value (enum member or plain string) -> symbol index."""
    symbols: list[str] = schema["symbols"]
    table: dict[Any, int] = {}
    py = PY_ENUMS.get(schema["name"].rsplit(".", 1)[-1])
    if py is not None:
        for member in py:
            for i, sym in enumerate(symbols):
                if sym in (member.value, member.name):
                    table[member] = i
    for i, sym in enumerate(symbols):
        table.setdefault(sym, i)
    return table


def _enum_members(schema: Mapping[str, Any]) -> list[Any]:
    """Symbol index -> Python enum member (None for a symbol the domain does not know: 'unknown')."""
    py = PY_ENUMS.get(schema["name"].rsplit(".", 1)[-1])
    out: list[Any] = []
    for sym in schema["symbols"]:
        member = None
        if py is not None:
            for m in py:
                if sym in (m.value, m.name):
                    member = m
        out.append(member)
    return out


_CLASSES: Final[dict[str, type]] = {"TrustEvent": Event, "Location": Location}
_FILL_FROM_NOW: Final = frozenset({"produced_time"})


class _Gen:
    """Builds Python source for one record schema: encode(obj, now) -> bytes, decode(buf, pos) -> (obj, pos)."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.tables: dict[str, str] = {}
        self.consts: dict[str, Any] = {}
        self.funcs: list[str] = []
        self.seen: set[str] = set()
        self.n = 0

    def const(self, value: Any, hint: str = "c") -> str:
        name = f"_{hint}{len(self.consts)}"
        self.consts[name] = value
        return name

    def tmp(self) -> str:
        self.n += 1
        return f"_t{self.n}"

    # -- encoding ---------------------------------------------------------------------------
    def table(self, kind: str, tag: bytes) -> str:
        """A varint lookup table with ``tag`` (a union branch byte, or nothing) in front of every entry."""
        key = f"{kind}{tag.hex()}"
        if key not in self.tables:
            base = _SHORT if kind == "short" else _MID
            self.tables[key] = self.const([tag + x for x in base], kind)
        return self.tables[key]

    def enc_expr(self, t: Any, v: str, tag: bytes = b"") -> str:
        """A Python expression that encodes ``v`` (evaluated once) as Avro type ``t``, ``tag`` first.

        Varints and string lengths are inlined as table lookups: on this hot path a function call
        costs as much as the encoding itself. ``tag`` folds a union's branch byte into the first
        lookup instead of concatenating it.
        """
        t = _field_type(t)
        tagc = repr(tag)
        if t in ("long", "int"):
            x, z = self.tmp(), self.tmp()
            short, mid = self.table("short", tag), self.table("mid", b"")
            tmid = self.table("mid", tag)
            # epoch-ms times (2**27 <= n < 2**41): exactly three 7-bit pairs, no loop, no call
            return (f"({tmid}[({z} := {x} << 1) & 0x3FFF] + {mid}[({z} >> 14) & 0x3FFF] + _SHORT[{z} >> 28] "
                    f"if 0x8000000 <= ({x} := {v}) < 0x20000000000 "
                    f"else {short}[{x} << 1] if 0 <= {x} < 0x2000 else {tagc} + _long({x}))")
        if t in ("string", "bytes"):
            b, n = self.tmp(), self.tmp()
            short = self.table("short", tag)
            raw = f"{v}.encode()" if t == "string" else v
            return (f"({short}[{n} << 1] + {b} if ({n} := len({b} := {raw})) < 0x2000 "
                    f"else {tagc} + _uvarint({n} << 1) + {b})")
        if t == "double":
            return f"_pack_bd({tag[0]}, {v})" if tag else f"_pack_double({v})"
        if t == "float":
            return f"{tagc} + _pack_float({v})"
        if t == "boolean":
            true, false = repr(tag + b"\x01"), repr(tag + b"\x00")
            return f"({true} if {v} else {false})"
        if t == "null":
            return tagc
        if isinstance(t, dict) and t["type"] == "enum":
            table = {k: tag + _SHORT[i << 1] for k, i in _enum_symbol_map(t).items()}
            return f"{self.const(table, 'enum')}[{v}]"
        if isinstance(t, dict) and t["type"] == "record":
            return f"{self.record(t)}({v}, now_b, {tagc})"
        nullable = _nullable(t)
        if nullable is not None:
            if tag:
                raise _Unsupported("nested unions")
            index, inner = nullable
            x = self.tmp()
            null_tag = repr(_SHORT[(1 - index) << 1])
            return f"({null_tag} if ({x} := {v}) is None else {self.enc_expr(inner, x, _SHORT[index << 1])})"
        raise _Unsupported(f"type {t!r}")

    def record(self, schema: Mapping[str, Any], outer: bool = False) -> str:
        short = schema["name"].rsplit(".", 1)[-1]
        cls = _CLASSES.get(short)
        if cls is None:
            raise _Unsupported(f"record {short} has no domain class")
        name = f"_enc_{short}"
        if name in self.seen:
            return name
        self.seen.add(name)
        attrs = {f.name for f in dc_fields(cls)}
        parts = []
        for f in schema["fields"]:
            fname = f["name"]
            if fname not in attrs:
                if "default" not in f:
                    raise _Unsupported(f"field {fname} is not on {cls.__name__} and has no default")
                parts.append(self.const(_default_bytes(f), "dflt"))
                continue
            v = f"o.{fname}"
            if fname in _FILL_FROM_NOW and _nullable(f["type"]) is None:
                # the caller passes now_b = _long(now), computed once per batch
                x = self.tmp()
                parts.append(f"(now_b if ({x} := o.{fname}) is None else {self.enc_expr(f['type'], x)})")
                continue
            parts.append(self.enc_expr(f["type"], v))
        # The outermost record's function also writes the frame header, a nested one its union
        # branch byte: one join, no concatenation.
        parts.insert(0, "_prefix")
        body = ",\n        ".join(parts)
        default = self.const(self.prefix, "prefix") if outer else "b''"
        self.funcs.append(f"def {name}(o, now_b, _prefix={default}):\n    return b''.join((\n        {body},\n    ))\n")
        return name

    # -- decoding ---------------------------------------------------------------------------
    # Inline fast paths for the common one-byte cases (union tags, short lengths); IndexError and
    # struct.error from reading past the end are turned into "truncated" by Codec.decode.
    def dec_stmts(self, t: Any, target: str, indent: str) -> list[str]:
        """Statements that read one value at ``p`` from ``b`` into ``target`` and advance ``p``."""
        t = _field_type(t)
        i = indent
        if t in ("long", "int"):
            return [f"{i}{target}, p = _read_long(b, p)"]
        if t in ("string", "bytes"):
            n = self.tmp()
            lines = [f"{i}{n} = b[p]",
                     f"{i}if {n} < 0x80:",
                     f"{i}    p += 1",
                     f"{i}    if {n} & 1:",
                     f"{i}        raise _Bad('negative length')",
                     f"{i}    {n} = p + ({n} >> 1)",
                     f"{i}else:",
                     f"{i}    {n}, p = _read_long(b, p)",
                     f"{i}    if {n} < 0:",
                     f"{i}        raise _Bad('negative length')",
                     f"{i}    {n} += p",
                     f"{i}if {n} > len(b):",
                     f"{i}    raise _Bad('length runs past the end')"]
            read = f"b[p:{n}].decode()" if t == "string" else f"b[p:{n}]"
            return lines + [f"{i}{target} = {read}", f"{i}p = {n}"]
        if t == "double":
            return [f"{i}{target} = _unpack_double(b, p)[0]", f"{i}p += 8"]
        if t == "float":
            return [f"{i}{target} = _unpack_float(b, p)[0]", f"{i}p += 4"]
        if t == "boolean":
            return [f"{i}{target} = _BOOL[b[p]]", f"{i}p += 1"]
        if t == "null":
            return [f"{i}{target} = None"]
        if isinstance(t, dict) and t["type"] == "enum":
            members = self.const(_enum_members(t), "sym")
            names = self.const(list(t["symbols"]), "symname")
            x = self.tmp()
            return [f"{i}{x} = b[p]",
                    f"{i}if {x} < 0x80:",
                    f"{i}    p += 1",
                    f"{i}    {x} = {x} >> 1 if not {x} & 1 else -1",
                    f"{i}else:",
                    f"{i}    {x}, p = _read_long(b, p)",
                    f"{i}{target} = {members}[{x}] if 0 <= {x} < {len(t['symbols'])} else None",
                    f"{i}if {target} is None:",
                    f"{i}    _enum_fail({names}, {x}, {t['name']!r})"]
        if isinstance(t, dict) and t["type"] == "record":
            return [f"{i}{target}, p = {self.dec_record(t)}(b, p)"]
        nullable = _nullable(t)
        if nullable is not None:
            index, inner = nullable
            x = self.tmp()
            lines = [f"{i}{x} = b[p]", f"{i}p += 1",
                     f"{i}if {x} == {index << 1}:"]
            lines += self.dec_stmts(inner, target, i + "    ")
            lines += [f"{i}elif {x} == {(1 - index) << 1}:", f"{i}    {target} = None",
                      f"{i}else:", f"{i}    raise _Bad(f'union branch byte {{{x}}} out of range')"]
            return lines
        raise _Unsupported(f"type {t!r}")

    def dec_record(self, schema: Mapping[str, Any]) -> str:
        short = schema["name"].rsplit(".", 1)[-1]
        cls = _CLASSES.get(short)
        if cls is None:
            raise _Unsupported(f"record {short} has no domain class")
        name = f"_dec_{short}"
        if name in self.seen:
            return name
        self.seen.add(name)
        attrs = [f.name for f in dc_fields(cls)]
        lines = [f"def {name}(b, p):"]
        assigned: dict[str, str] = {}
        for k, f in enumerate(schema["fields"]):
            var = f"v{k}"
            lines += self.dec_stmts(f["type"], var, "    ")
            if f["name"] in attrs:
                assigned[f["name"]] = var
        # The domain classes are frozen slots dataclasses whose __init__ costs ~0.5 us a field here;
        # setting the slots directly is 5x cheaper and equivalent while they have no __post_init__.
        c = self.const(cls, "cls")
        if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
            lines.append(f"    return {c}({', '.join(f'{a}={v}' for a, v in assigned.items())}), p")
        else:
            lines.append(f"    o = _new({c})")
            for a in attrs:
                setter = self.const(cls.__dict__[a].__set__, "set")
                if a in assigned:
                    lines.append(f"    {setter}(o, {assigned[a]})")
                else:
                    dflt = next(f for f in dc_fields(cls) if f.name == a).default
                    lines.append(f"    {setter}(o, {self.const(dflt, 'dv')})")
            lines.append("    return o, p")
        self.funcs.append("\n".join(lines) + "\n")
        return name


def _default_bytes(field: Mapping[str, Any]) -> bytes:
    schema = fastavro.parse_schema({"type": "record", "name": "D", "fields": [dict(field)]})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {})
    return buf.getvalue()


class _Bad(Exception):
    """Malformed body found by the generated decoder."""


def _gen_read_long() -> Callable[[bytes, int], tuple[int, int]]:
    """An unrolled varint reader: a loop costs twice as much for the 6-byte timestamps we carry."""
    lines = ["def _read_long(b, p):", "    x = b[p]", "    if x < 0x80:", "        return (x >> 1) ^ -(x & 1), p + 1",
             "    n = x & 0x7F"]
    indent = "    "
    for k in range(1, 10):
        lines += [f"{indent}x = b[p + {k}]",
                  f"{indent}if x < 0x80:",
                  f"{indent}    n |= x << {7 * k}",
                  f"{indent}    return (n >> 1) ^ -(n & 1), p + {k + 1}",
                  f"{indent}n |= (x & 0x7F) << {7 * k}"]
    lines.append(f"{indent}raise _Bad('varint longer than 10 bytes')")
    namespace: dict[str, Any] = {"_Bad": _Bad}
    exec("\n".join(lines), namespace)
    return namespace["_read_long"]  # type: ignore[no-any-return]


_read_long: Final = _gen_read_long()
_BOOL: Final = {0: False, 1: True}


def _enum_fail(names: list[str], i: int, enum: str) -> None:
    if 0 <= i < len(names):
        raise _UnknownSymbol(enum, names[i])
    raise _Bad(f"{enum} index {i} out of range")


class _UnknownSymbol(Exception):
    def __init__(self, enum: str, symbol: str) -> None:
        super().__init__(f"{enum} symbol {symbol!r} is unknown to this reader")
        self.enum = enum


def _compile(
    schema: Mapping[str, Any], prefix: bytes = b""
) -> tuple[Callable[..., bytes], Callable[[bytes, int], tuple[Event, int]], str]:
    """Generate encode(event, now_b, _prefix=prefix) and decode(buf, pos) for a TrustEvent schema.

    ``now_b`` is ``_long(now_ms)``, the encoded clock reading that fills ``produced_time`` when an
    event has none (encoded once per batch). Returns the source too, for tests and curiosity.
    """
    gen = _Gen(prefix)
    enc = gen.record(schema, outer=True)
    dec = gen.dec_record(schema)
    source = "\n".join(gen.funcs)
    namespace: dict[str, Any] = {
        "_long": _long, "_uvarint": _uvarint, "_SHORT": _SHORT, "_pack_double": _pack_double,
        "_pack_float": _pack_float, "_pack_bd": _pack_bd,
        "_read_long": _read_long, "_BOOL": _BOOL, "_new": object.__new__,
        "_unpack_double": _unpack_double, "_unpack_float": _unpack_float, "_enum_fail": _enum_fail,
        "_Bad": _Bad, **gen.consts,
    }
    exec(compile(source, f"<generated codec for {schema['name']}>", "exec"), namespace)
    return namespace[enc], namespace[dec], source


# ---------------------------------------------------------------------------------------------
# Avro dict (fastavro / Confluent) <-> Event


_EPOCH_UTC: Final = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def _ms(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - _EPOCH_UTC) // timedelta(milliseconds=1)
    return value


def _member(enum: type[Enum], value: Any, field: str) -> Any:
    if value is None:
        return None
    for m in enum:
        if value in (m.value, m.name):
            return m
    raise _UnknownSymbol(field, str(value))


def event_from_avro(d: Mapping[str, Any]) -> Event:
    """A TrustEvent as fastavro or the Confluent deserializer returns it -> Event.

    Raises ``DecodeError`` (unknown_enum) for an enum symbol the domain does not know.
    """
    try:
        loc = d.get("location")
        return Event(
            event_id=str(d["event_id"]),
            event_type=_member(EventType, d["event_type"], "event_type"),
            trust=d["trust"],
            incident_id=d["incident_id"],
            event_time=_ms(d["event_time"]),
            produced_time=_ms(d.get("produced_time")),
            schema_version=d.get("schema_version", 1),
            clock_start=_ms(d.get("clock_start")),
            category=_member(Category, d.get("category"), "category"),
            source=_member(Source, d.get("source"), "source"),
            location=None if loc is None else Location(**{k: loc.get(k) for k in
                                                          ("postcode", "lat", "lon", "easting", "northing")}),
            disposition=_member(Disposition, d.get("disposition"), "disposition"),
            destination_site=d.get("destination_site"),
            site=d.get("site"),
            arrived_at_hospital=_ms(d.get("arrived_at_hospital")),
            handover_at=_ms(d.get("handover_at")),
            clear_at=_ms(d.get("clear_at")),
            call_id=d.get("call_id"),
            disposition_ambulance=d.get("disposition_ambulance"),
            linked_incident_id=d.get("linked_incident_id"),
        )
    except _UnknownSymbol as exc:
        raise DecodeError(Code.UNKNOWN_ENUM, str(exc)) from None


def event_to_avro(event: Event, now_ms: int | None = None) -> dict[str, Any]:
    """Event -> the dict fastavro / the Confluent serializer writes (times stay int milliseconds)."""
    loc = event.location
    produced = event.produced_time if event.produced_time is not None else now_ms
    if produced is None:
        raise ValueError("produced_time is not set and no now_ms was given")
    return {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "trust": event.trust,
        "incident_id": event.incident_id,
        "event_time": event.event_time,
        "produced_time": produced,
        "schema_version": event.schema_version,
        "clock_start": event.clock_start,
        "category": None if event.category is None else event.category.value,
        "source": None if event.source is None else event.source.name,
        "location": None if loc is None else {
            "postcode": loc.postcode, "lat": loc.lat, "lon": loc.lon, "easting": loc.easting, "northing": loc.northing},
        "disposition": None if event.disposition is None else event.disposition.value,
        "destination_site": event.destination_site,
        "site": event.site,
        "arrived_at_hospital": event.arrived_at_hospital,
        "handover_at": event.handover_at,
        "clear_at": event.clear_at,
        "call_id": event.call_id,
        "disposition_ambulance": event.disposition_ambulance,
        "linked_incident_id": event.linked_incident_id,
    }


# ---------------------------------------------------------------------------------------------
# The codec


class Codec:
    """Encodes Events for one wire format and decodes either; build one per process and reuse it.

    ``registry`` is a ``confluent_kafka.schema_registry.SchemaRegistryClient`` (or its mock); it is
    needed to write the Confluent format and to read it.
    """

    def __init__(self, wire: Wire = "single", registry: Any = None, schema: Mapping[str, Any] | None = None) -> None:
        if wire == "confluent" and registry is None:
            raise AmbError("the Confluent wire format needs a schema registry (AMB_SCHEMA_REGISTRY_URL)")
        self.wire: Wire = wire
        self.registry = registry
        self.schema: dict[str, Any] = dict(schema) if schema is not None else load_schema()
        self.schema_json = json.dumps(self.schema)
        self.fingerprint = fingerprint(self.schema)
        self.header = SINGLE_OBJECT_MAGIC + self.fingerprint
        self._parsed = fastavro.parse_schema(strip_logical_types(self.schema))
        self._encode_framed: Callable[..., bytes]
        try:
            self._encode_framed, self._decode_body, self.generated_source = _compile(self.schema, self.header)
            self.generated = True
        except _Unsupported:  # pragma: no cover - only for schema shapes we do not use yet
            self._encode_framed, self._decode_body, self.generated_source = (
                self._fastavro_encode, self._fastavro_decode, "")
            self.generated = False
        # Writer schemas this reader knows by fingerprint: the current one and every released one.
        self._writers: dict[bytes, Any] = {}
        for version in released_versions():
            old = load_schema(EVENT_SCHEMA, version)
            fp = fingerprint(old)
            if fp != self.fingerprint:
                self._writers[fp] = fastavro.parse_schema(strip_logical_types(old))
        self._serializers: dict[str, Any] = {}
        self._deserializer: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, registry: Any = None) -> Codec:
        """Single-object encoding, or Confluent framing when AMB_SCHEMA_REGISTRY_URL is set."""
        url = settings.schema_registry_url
        if not url and registry is None:
            return cls("single")
        if registry is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            registry = SchemaRegistryClient.new_client({"url": url})
        return cls("confluent", registry)

    # -- encode ---------------------------------------------------------------------------
    def encode(self, event: Event, now_ms: int, topic: str = "") -> bytes:
        """One Event -> message value. ``now_ms`` fills ``produced_time`` when the event has none."""
        if self.wire == "confluent":
            return self._confluent_encode(event, now_ms, topic)
        return self._encode_framed(event, _long(now_ms))

    def encode_batch(self, events: Iterable[Event], now_ms: int, topic: str = "") -> list[bytes]:
        """Many Events -> message values (one clock reading stamps the whole batch)."""
        if self.wire == "confluent":
            return [self._confluent_encode(e, now_ms, topic) for e in events]
        enc = self._encode_framed
        now_b = _long(now_ms)
        return [enc(e, now_b) for e in events]

    def encode_body(self, event: Event, now_ms: int) -> bytes:
        """The bare Avro body (no framing): what both wire formats carry after their header."""
        return self._encode_framed(event, _long(now_ms), b"")

    def _fastavro_encode(self, event: Event, now_b: bytes, _prefix: bytes | None = None) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._parsed, event_to_avro(event, _read_long(now_b, 0)[0]))
        return (self.header if _prefix is None else _prefix) + buf.getvalue()

    def _confluent_encode(self, event: Event, now_ms: int, topic: str) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get(topic)
        if serializer is None:
            from confluent_kafka.schema_registry.avro import AvroSerializer

            serializer = AvroSerializer(
                self.registry, self.schema_json,
                to_dict=lambda obj, ctx: obj,
                conf={"auto.register.schemas": True},
            )
            self._serializers[topic] = serializer
        try:
            value = serializer(event_to_avro(event, now_ms), SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            if _registry_failure(exc) is None:
                raise
            raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}"[:300]) from exc
        assert isinstance(value, bytes)
        return value

    # -- decode ---------------------------------------------------------------------------
    def decode(self, value: bytes | None, topic: str = "") -> Event:
        """Message value -> Event, or ``DecodeError`` with the DLQ reason. Never anything else."""
        if not value:
            raise DecodeError(Code.EMPTY_MESSAGE, "message value is empty")
        try:
            if value[:2] == SINGLE_OBJECT_MAGIC:
                return self._single_decode(value)
            if value[0] in (CONFLUENT_MAGIC, CONFLUENT_MAGIC_V1):
                return self._confluent_decode(value, topic)
        except DecodeError:
            raise
        except _UnknownSymbol as exc:
            raise DecodeError(Code.UNKNOWN_ENUM, str(exc)) from None
        except RecursionError:  # pragma: no cover - defensive
            raise DecodeError(Code.UNDECODABLE, "nesting too deep") from None
        except Exception as exc:  # noqa: BLE001 - any failure of a library on hostile bytes is a reason
            kind = _registry_failure(exc)
            if kind == "outage":
                raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}"[:300]) from exc
            if kind == "missing":
                raise DecodeError(Code.UNKNOWN_SCHEMA, f"schema id {value[1:5].hex()} is not in the registry") from None
            raise DecodeError(Code.UNDECODABLE, f"{type(exc).__name__}: {exc}"[:300]) from None
        raise DecodeError(Code.BAD_MAGIC, f"first bytes {value[:2].hex()} are neither Avro single-object (c301) "
                                          "nor Confluent (00) framing")

    def _single_decode(self, value: bytes) -> Event:
        if len(value) < 10:
            raise DecodeError(Code.UNDECODABLE, f"single-object header truncated ({len(value)} bytes)")
        fp = value[2:10]
        if fp == self.fingerprint:
            try:
                event, end = self._decode_body(value, 10)
            except _Bad as exc:
                raise DecodeError(Code.UNDECODABLE, str(exc)) from None
            except (IndexError, struct.error):
                raise DecodeError(Code.UNDECODABLE, "truncated: the message ends inside the event") from None
            except KeyError:
                raise DecodeError(Code.UNDECODABLE, "boolean byte is neither 0 nor 1") from None
            except UnicodeDecodeError:
                raise DecodeError(Code.UNDECODABLE, "string is not UTF-8") from None
            if end != len(value):
                raise DecodeError(Code.TRAILING_BYTES, f"{len(value) - end} bytes after the event")
            return event
        writer = self._writers.get(fp)
        if writer is None:
            raise DecodeError(Code.UNKNOWN_SCHEMA,
                              f"writer schema fingerprint {fp.hex()} is not the current schema or a released one")
        buf = io.BytesIO(value)
        buf.seek(10)
        record = fastavro.schemaless_reader(buf, writer, self._parsed)
        if buf.tell() != len(value):
            raise DecodeError(Code.TRAILING_BYTES, f"{len(value) - buf.tell()} bytes after the event")
        assert isinstance(record, dict)
        return event_from_avro(record)

    def _fastavro_decode(self, value: bytes, pos: int) -> tuple[Event, int]:
        buf = io.BytesIO(value)
        buf.seek(pos)
        record = fastavro.schemaless_reader(buf, self._parsed, None)
        assert isinstance(record, dict)
        return event_from_avro(record), buf.tell()

    def _confluent_decode(self, value: bytes, topic: str) -> Event:
        if self.registry is None:
            raise DecodeError(Code.NO_REGISTRY, "Confluent-framed message but no schema registry is configured "
                                                "(AMB_SCHEMA_REGISTRY_URL)")
        from confluent_kafka.serialization import MessageField, SerializationContext

        if self._deserializer is None:
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._deserializer = AvroDeserializer(self.registry, self.schema_json)
        record = self._deserializer(value, SerializationContext(topic, MessageField.VALUE))
        if not isinstance(record, dict):
            raise DecodeError(Code.UNDECODABLE, "Confluent deserializer returned no record")
        return event_from_avro(record)

    def decode_and_validate(
        self, value: bytes | None, now_ms: int, topic: str = "", trust: str | None = None
    ) -> Event | Rejection:
        """What the stream worker calls per message: an Event fit for the core, or the DLQ reason.

        Bad bytes never raise. Only an unreachable schema registry does (RegistryUnavailable):
        that is an outage to wait out, not a property of the message.
        """
        try:
            event = self.decode(value, topic)
        except DecodeError as exc:
            return Rejection((exc.reason,))
        try:
            return validate(event, now_ms=now_ms, trust=trust)
        except Exception as exc:  # noqa: BLE001 - a decoded value of a wrong type, e.g. via an old writer
            return Rejection((Reason(Code.UNDECODABLE, f"{type(exc).__name__}: {exc}"[:300]),),
                             event.event_id, event.trust, event.incident_id)

    def decode_batch(
        self, values: Iterable[bytes | None], now_ms: int, topic: str = "", trust: str | None = None
    ) -> list[Event | Rejection]:
        """decode_and_validate over a batch (one clock reading, no per-message setup)."""
        dv = self.decode_and_validate
        return [dv(v, now_ms, topic, trust) for v in values]


@functools.cache
def default_codec() -> Codec:
    """The single-object codec (no registry): enough to read anything but Confluent frames."""
    return Codec("single")


def decode_and_validate(value: bytes | None, now_ms: int, trust: str | None = None) -> Event | Rejection:
    """Decode one message value and validate it: ``Event`` or a ``Rejection`` (never raises)."""
    return default_codec().decode_and_validate(value, now_ms, trust=trust)
