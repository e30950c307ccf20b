"""The worker's own offset bookkeeping (streams.agents.StreamWorker._advance): what it commits is
exactly the contiguous run of messages it processed, and a message past the next offset (Faust
skipping some, as its rebalance races do) is a hole to read again, never committed past."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from faust.types import TP

from amb import config
from streams.agents import StreamWorker
from streams.app import create_app
from streams.pipeline import InMessage


class NoGeo:
    def attribute(self, *a: object, **k: object) -> object:  # never called here
        raise AssertionError

    def hierarchy(self, *a: object, **k: object) -> object:
        raise AssertionError


class NoOutput:
    """The worker's producer is not needed to count offsets (and would dial a broker)."""

    def __init__(self, *a: object, **k: object) -> None:
        pass


@pytest.fixture
def tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("streams.agents.Output", NoOutput)
    return tmp_path


def worker(tmp_path: Path) -> StreamWorker:
    s = dataclasses.replace(config.load(), data_dir=tmp_path, topic_prefix="offsets-test")
    app = create_app(s, store="memory", web_enabled=False)
    return StreamWorker(s, app, NoGeo(), store="memory")  # type: ignore[arg-type]


def msgs(topic: str, partition: int, *offsets: int) -> list[InMessage]:
    return [InMessage(topic, partition, o, b"k", b"v") for o in offsets]


def test_contiguous_messages_advance_from_the_committed_offset(tmp_path: Path) -> None:
    w = worker(tmp_path)
    t = w.events_topics[0]
    w.app.consumer._committed_offset[TP(t, 0)] = 10  # type: ignore[attr-defined]  # what Faust read at assignment
    assert w._advance(msgs(t, 0, 10, 11, 12)) == {}
    assert w._advance(msgs(t, 0, 13)) == {}
    assert w._next_offset[(t, 0)] == 14


def test_a_first_message_past_the_committed_offset_is_a_hole(tmp_path: Path) -> None:
    w = worker(tmp_path)
    t = w.events_topics[0]
    w.app.consumer._committed_offset[TP(t, 1)] = 15  # type: ignore[attr-defined]
    assert w._advance(msgs(t, 1, 62, 63)) == {(t, 1): 15}
    assert w._next_offset[(t, 1)] == 15  # never committed past the skipped messages
    assert w._advance(msgs(t, 1, 64)) == {}  # reported once
    assert w._next_offset[(t, 1)] == 15
    # after the seek back, the skipped messages come, then the rest again (duplicates)
    assert w._advance(msgs(t, 1, *range(15, 66))) == {}
    assert w._next_offset[(t, 1)] == 66
    assert (t, 1) not in w._holes


def test_redelivered_messages_do_not_move_the_offset_back(tmp_path: Path) -> None:
    w = worker(tmp_path)
    t = w.events_topics[1]
    assert w._advance(msgs(t, 2, 0, 1, 2, 3)) == {}  # no commit yet: starts at the first message
    assert w._advance(msgs(t, 2, 1, 2)) == {}
    assert w._next_offset[(t, 2)] == 4


def test_a_gap_inside_a_batch_is_a_hole(tmp_path: Path) -> None:
    w = worker(tmp_path)
    t = w.events_topics[0]
    assert w._advance(msgs(t, 3, 5, 6, 9, 10)) == {(t, 3): 7}
    assert w._next_offset[(t, 3)] == 7
