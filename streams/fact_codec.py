"""The ``<prefix>.incident-facts`` message: one incident (or 111 call) at one state version.

Key: ``trust:incident_id`` (the events' key, so facts stay on the partition number their events
came from). Value: UTF-8 JSON, field names exactly those of the ``domain.facts`` dataclasses::

    {"f": 1, "kind": "incident", "incident": {IncidentFact...}, "handover": {HandoverFact...} | null}
    {"f": 1, "kind": "call_111", "call": {Call111Fact...}}

Headers ``amb.fact.kind`` and ``amb.fact.version`` let a reader dedupe without parsing JSON.

The worker may send the same (incident, version) more than once (it re-sends the current version
on every input, duplicates included, so a crash between the state write and the send heals on the
re-read) and versions may arrive out of order across a rebalance: readers keep, per incident, the
highest version (``domain.oracle.latest``; ClickHouse ReplacingMergeTree(version)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
H_KIND: Final = "amb.fact.kind"
H_VERSION: Final = "amb.fact.version"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _d(fact: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: getattr(fact, c) for c in columns}


def encode_incident(incident: IncidentFact, handover: HandoverFact | None) -> bytes:
    body = {"f": FORMAT, "kind": KIND_INCIDENT, "incident": _d(incident, INCIDENT_COLUMNS),
            "handover": None if handover is None else _d(handover, HANDOVER_COLUMNS)}
    return _dumps(body).encode()


def encode_call(call: Call111Fact) -> bytes:
    return _dumps({"f": FORMAT, "kind": KIND_CALL, "call": _d(call, CALL_COLUMNS)}).encode()


def headers(kind: str, version: int) -> list[tuple[str, bytes]]:
    return [(H_KIND, kind.encode()), (H_VERSION, str(version).encode())]


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


def decode(value: bytes) -> FactMessage:
    """Bytes -> FactMessage; ValueError for anything that is not a fact message of this format."""
    try:
        body = json.loads(value)
        if body.get("f") != FORMAT:
            raise ValueError(f"fact message format {body.get('f')!r}, expected {FORMAT}")
        kind = body["kind"]
        if kind == KIND_INCIDENT:
            h = body.get("handover")
            return FactMessage(kind, IncidentFact(**body["incident"]), None if h is None else HandoverFact(**h))
        if kind == KIND_CALL:
            return FactMessage(kind, call=Call111Fact(**body["call"]))
        raise ValueError(f"unknown fact kind {kind!r}")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an incident-facts message: {type(exc).__name__}: {exc}") from None
