"""The ``<prefix>.incident-facts`` message: one incident (or 111 call) at one state version.

Key: ``trust:incident_id`` (the events' key, so facts stay on the partition number their events
came from). Value: UTF-8 JSON, field names exactly those of the ``domain.facts`` dataclasses::

    {"f": 1, "kind": "incident", "incident": {IncidentFact...}, "handover": {HandoverFact...} | null}
    {"f": 1, "kind": "call_111", "call": {Call111Fact...}}

No headers: kind and version are in the value (and the key names the incident). Earlier releases
sent ``amb.fact.kind`` and ``amb.fact.version`` headers, which no reader used; a header pair cost
the worker ~2 us a message in librdkafka's Python binding, more than the rest of the send.

Speed: the worker encodes one fact per input event, and ``json`` over a dict built by ``getattr``
cost ~25 us a fact. The encoders here are generated once from the dataclasses' field types (plain
string concatenation, ``json``'s own C string escaper) and give byte for byte what
``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` gives (the tests check it).

The worker may send the same (incident, version) more than once (it re-sends the current version
on every input, duplicates included, so a crash between the state write and the send heals on the
re-read) and versions may arrive out of order across a rebalance: readers keep, per incident, the
highest version (``domain.oracle.latest``; ClickHouse ReplacingMergeTree(version)).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from json.encoder import encode_basestring
from typing import Any, Final

from domain.facts import (
    CALL_COLUMNS,
    HANDOVER_COLUMNS,
    INCIDENT_COLUMNS,
    Call111Fact,
    HandoverFact,
    IncidentFact,
)

FORMAT: Final = 1
KIND_INCIDENT: Final = "incident"
KIND_CALL: Final = "call_111"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _d(fact: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: getattr(fact, c) for c in columns}


def _value_expr(kind: str, v: str) -> str:
    """A Python expression giving the JSON text of attribute ``v`` of the declared type ``kind``."""
    if kind == "str":
        return f"_s({v})"
    if kind == "int":
        return f"_i({v})"
    if kind == "bool":
        return f"('true' if {v} else 'false')"
    if kind.endswith(" | None"):
        inner = _value_expr(kind[:-len(" | None")], "_x")
        return f"('null' if (_x := {v}) is None else {inner})"
    raise TypeError(f"no fast JSON encoder for field type {kind!r}")


def _object_encoder(cls: type) -> Callable[[Any], str]:
    """``cls`` instance -> its JSON object text, fields in declaration order (as :func:`_d` gives)."""
    parts = []
    for i, f in enumerate(fields(cls)):
        parts.append(repr(("{" if i == 0 else ",") + json.dumps(f.name) + ":"))
        parts.append(_value_expr(str(f.type), f"o.{f.name}"))
    src = f"def enc(o):\n    return ''.join(({', '.join(parts)}, '}}'))\n"
    scope: dict[str, Any] = {"_s": encode_basestring, "_i": int.__repr__}
    exec(compile(src, f"<fact encoder for {cls.__name__}>", "exec"), scope)  # noqa: S102 - our own source
    enc: Callable[[Any], str] = scope["enc"]
    return enc


_incident_json: Final = _object_encoder(IncidentFact)
_handover_json: Final = _object_encoder(HandoverFact)
_call_json: Final = _object_encoder(Call111Fact)
_INCIDENT_HEAD: Final = f'{{"f":{FORMAT},"kind":"{KIND_INCIDENT}","incident":'
_CALL_HEAD: Final = f'{{"f":{FORMAT},"kind":"{KIND_CALL}","call":'


def encode_incident(incident: IncidentFact, handover: HandoverFact | None) -> bytes:
    hand = "null" if handover is None else _handover_json(handover)
    return "".join((_INCIDENT_HEAD, _incident_json(incident), ',"handover":', hand, "}")).encode()


def encode_call(call: Call111Fact) -> bytes:
    return "".join((_CALL_HEAD, _call_json(call), "}")).encode()


def encode_incident_json(incident: IncidentFact, handover: HandoverFact | None) -> bytes:
    """The reference encoding (``json`` over dicts) that :func:`encode_incident` must equal."""
    body = {"f": FORMAT, "kind": KIND_INCIDENT, "incident": _d(incident, INCIDENT_COLUMNS),
            "handover": None if handover is None else _d(handover, HANDOVER_COLUMNS)}
    return _dumps(body).encode()


def encode_call_json(call: Call111Fact) -> bytes:
    """The reference encoding that :func:`encode_call` must equal."""
    return _dumps({"f": FORMAT, "kind": KIND_CALL, "call": _d(call, CALL_COLUMNS)}).encode()


@dataclass(frozen=True, slots=True)
class FactMessage:
    """A decoded message: ``incident`` (+ ``handover``) for an incident, ``call`` for a 111 call."""

    kind: str
    incident: IncidentFact | None = None
    handover: HandoverFact | None = None
    call: Call111Fact | None = None

    @property
    def version(self) -> int:
        fact = self.incident or self.call
        assert fact is not None
        return fact.version

    @property
    def identity(self) -> tuple[str, str, str]:
        """(kind, trust, incident or call id): what readers dedupe on, with :attr:`version`."""
        if self.call is not None:
            return (self.kind, self.call.trust, self.call.call_id)
        assert self.incident is not None
        return (self.kind, self.incident.trust, self.incident.incident_id)


def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> the JSON value types it may hold (None is always let through: the store's
    NOT NULL columns refuse it with their own error)."""
    import typing

    out: dict[str, tuple[type, ...]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) or (hint,)
        allowed = tuple(a for a in args if a is not type(None))
        if float in allowed:
            allowed += (int,)
        out[name] = allowed
    return out


_CHECKS: Final = {cls: _field_types(cls) for cls in (IncidentFact, HandoverFact, Call111Fact)}


def _checked(cls: Any, body: Any) -> Any:
    """``cls(**body)`` after checking each value's JSON type: a fact with a wrong type is a bad
    message for the dead-letter topic, not an error later in the loader (a poison pill)."""
    if not isinstance(body, dict):
        raise TypeError(f"{cls.__name__} is {type(body).__name__}, not an object")
    types = _CHECKS[cls]
    for name, value in body.items():
        allowed = types.get(name)
        if allowed is None:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        if value is not None and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            raise TypeError(f"{cls.__name__}.{name} is {type(value).__name__} {value!r:.40}, expected "
                            f"{' or '.join(t.__name__ for t in allowed)}")
    return cls(**body)


def decode(value: bytes) -> FactMessage:
    """Bytes -> FactMessage; ValueError for anything that is not a fact message of this format."""
    try:
        body = json.loads(value)
        if body.get("f") != FORMAT:
            raise ValueError(f"fact message format {body.get('f')!r}, expected {FORMAT}")
        kind = body["kind"]
        if kind == KIND_INCIDENT:
            h = body.get("handover")
            return FactMessage(kind, _checked(IncidentFact, body["incident"]),
                               None if h is None else _checked(HandoverFact, h))
        if kind == KIND_CALL:
            return FactMessage(kind, call=_checked(Call111Fact, body["call"]))
        raise ValueError(f"unknown fact kind {kind!r}")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an incident-facts message: {type(exc).__name__}: {exc}") from None
