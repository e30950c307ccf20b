"""Pseudonymised incident rows: a stable keyed hash instead of the incident id, nothing outside
the allow-list, no location finer than LSOA."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.facts import INCIDENT_COLUMNS
from domain.pseudonym import (
    PSEUDONYM_COLUMN,
    PSEUDONYMISED_COLUMNS,
    PseudonymKeyError,
    pseudonym,
    pseudonymise,
    pseudonymise_row,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_the_pseudonym_is_hmac_sha256_of_trust_and_incident_id() -> None:
    expected = hmac.new(KEY, b"RX7:INC-1", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(KEY, "RX7", "INC-1") == expected
    assert pseudonym(KEY, "RX7", "INC-1") != hashlib.sha256(b"RX7:INC-1").hexdigest()[:32]


def test_same_id_in_two_trusts_and_same_id_under_two_keys_differ() -> None:
    assert pseudonym(KEY, "RX7", "1") != pseudonym(KEY, "RX8", "1")
    assert pseudonym(KEY, "RX7", "1") != pseudonym(OTHER_KEY, "RX7", "1")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(PseudonymKeyError, match="32 bytes"):
        pseudonym(b"secret", "RX7", "1")


def test_fact_rows_keep_only_allowed_columns_and_lose_the_incident_id() -> None:
    row = {c: f"v-{c}" for c in INCIDENT_COLUMNS} | {"trust": "RX7", "incident_id": "INC-42",
                                                    "postcode": "M1 1AA", "notes": "free text"}
    out = pseudonymise_row(KEY, row)
    assert out[PSEUDONYM_COLUMN] == pseudonym(KEY, "RX7", "INC-42")
    assert "incident_id" not in out and "postcode" not in out and "notes" not in out
    assert set(out) == {PSEUDONYM_COLUMN, *PSEUDONYMISED_COLUMNS}
    assert "INC-42" not in repr(out)
    # the finest location is the LSOA
    assert {"lsoa", "msoa", "icb"} <= set(out) and not {"lat", "lon", "easting", "northing"} & set(out)


def test_every_allowed_column_is_a_fact_column() -> None:
    assert set(PSEUDONYMISED_COLUMNS) <= set(INCIDENT_COLUMNS)


def test_rows_without_identity_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="incident_id"):
        pseudonymise(KEY, ["trust"], [("RX7",)])


@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["RX6", "RX7"]), st.text(min_size=1, max_size=64)), max_size=50))
def test_pseudonyms_are_stable_and_distinct_per_incident(incidents: list[tuple[str, str]]) -> None:
    cols, rows = pseudonymise(KEY, ["trust", "incident_id"], incidents)
    assert cols == (PSEUDONYM_COLUMN, "trust")
    again = pseudonymise(KEY, ["trust", "incident_id"], incidents)[1]
    assert rows == again
    by_incident = {inc: row[0] for inc, row in zip(incidents, rows, strict=True)}
    assert len(set(by_incident.values())) == len(by_incident)
    assert all(len(p) == 32 and int(p, 16) >= 0 for p in by_incident.values())
