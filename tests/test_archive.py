"""The raw archive (amb.archive) and the rebuild/reconcile from it (amb.rebuild), without Kafka:
messages as the events topics carry them, archived batch by batch, crash-resumed, tampered with,
then replayed into an empty chDB store and compared with the oracle and with itself."""

from __future__ import annotations

import dataclasses
import random
import time
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from amb import archive, config
from amb.archive import ArchiveError, RawMessage, archive_batch, archive_dir, list_files, positions
from amb.codec import default_codec
from amb.config import Settings
from amb.rebuild import rebuild, recompute, reconcile
from amb.simulate_io import load_pool
from domain.events import Event
from domain.oracle import compute
from domain.simulate import Mess, SimConfig, clean_events
from streams.geo import IndexGeo

DAY = date(2025, 10, 1)
TRUSTS = ("RX6", "RYE")


@pytest.fixture(scope="module")
def geo() -> IndexGeo:
    return IndexGeo.load(config.load().geo_index_dir)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    cfg = SimConfig(start=DAY, days=1, trusts=TRUSTS, seed=7, scale=0.03,
                    mess=Mess(dup=0.05, late=0.05, shuffle=0.1, correction=0.1, retriage=0.05))
    return list(clean_events(cfg, load_pool(config.load(), "sample")))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return config.load({}, data_dir=tmp_path, geo_dir=config.load().geo_index_dir)


def as_messages(evs: list[Event], now_ms: int, partitions: int = 3) -> list[RawMessage]:
    """The events as the trust topics hold them: per-topic partitions by key, ascending offsets."""
    codec = default_codec()
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for e in evs:
        topic = f"amb.events.{e.trust}"
        part = zlib.crc32(e.key.encode()) % partitions
        off = next_offset.get((topic, part), 0)
        next_offset[(topic, part)] = off + 1
        out.append(RawMessage(topic, part, off, now_ms, e.key.encode(), codec.encode(e, now_ms, topic)))
    return out


def poison(now_ms: int) -> list[RawMessage]:
    return [RawMessage("amb.events.RX6", 0, 10_000_000, now_ms, b"RX6:x", b'{"json": 1}'),
            RawMessage("amb.events.RX6", 1, 10_000_000, now_ms, b"RX6:x", b"")]


def batches(msgs: list[RawMessage], seed: int) -> Iterator[list[RawMessage]]:
    rng = random.Random(seed)
    i = 0
    while i < len(msgs):
        n = rng.randint(1, 400)
        yield msgs[i:i + n]
        i += n


def test_archive_keeps_every_accepted_event_once(settings: Settings, events: list[Event], geo: IndexGeo) -> None:
    now = int(time.time() * 1000)
    msgs = as_messages(events, now) + poison(now)
    root = archive_dir(settings)
    stats = archive.ArchiveStats()
    for b in batches(msgs, 1):
        archive_batch(root, b, now, stats=stats)
    assert stats.archived == len(events) and stats.refused == 2
    assert dict(stats.refused_by_code) == {"bad_magic": 1, "empty_message": 1}
    got = list(archive.iter_records(root))
    assert sorted((r.topic, r.partition, r.offset) for r in got) == sorted(
        (m.topic, m.partition, m.offset) for m in msgs[:-2])
    assert {f.trust for f in list_files(root)} == set(TRUSTS)
    # position per partition: past the last message seen, refused ones included
    assert positions(root)[("amb.events.RX6", 0)] == 10_000_001
    # the replay is the same events, so the oracle agrees
    rec = recompute(settings, geo=geo, source="files")
    assert rec.report.rows == compute(events, geo, geo).rows
    assert rec.records == len(events) and not rec.refused


def test_crash_between_files_and_checkpoint_neither_loses_nor_duplicates(settings: Settings, events: list[Event]) -> None:
    """A batch whose files were written but whose checkpoint was not: the restart reads from the
    files' position; re-offering the whole batch writes nothing twice."""
    now = int(time.time() * 1000)
    msgs = as_messages(events[:500], now)
    root = archive_dir(settings)
    archive_batch(root, msgs[:200], now)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archive, "checkpoint", lambda _root, _pos: None)  # crash before the checkpoint
        archive_batch(root, msgs[200:350], now)
    pos = positions(root)
    # the consumer resumes at `pos`: only messages at or past it are read again
    rest = [m for m in msgs if m.offset >= pos.get((m.topic, m.partition), 0)]
    assert len(rest) == 150
    archive_batch(root, rest, now)
    got = sorted((r.topic, r.partition, r.offset) for r in archive.iter_records(root))
    assert got == sorted((m.topic, m.partition, m.offset) for m in msgs)


def test_tampered_or_torn_file_is_an_error(settings: Settings, events: list[Event]) -> None:
    now = int(time.time() * 1000)
    root = archive_dir(settings)
    archive_batch(root, as_messages(events[:50], now, partitions=1), now)
    (f,) = [e.path for e in list_files(root) if e.trust == events[0].trust][:1]
    data = bytearray(f.read_bytes())
    f.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArchiveError, match="unreadable|checksum"):
        list(archive.iter_records(root))


def test_rebuild_then_reconcile_equal_and_a_lost_fact_is_reported(
        settings: Settings, events: list[Event], geo: IndexGeo) -> None:
    now = int(time.time() * 1000)
    root = archive_dir(settings)
    for b in batches(as_messages(events, now), 2):
        archive_batch(root, b, now)
    res = rebuild(settings, geo=geo, source="files")
    assert res.problems == []
    oracle = compute(events, geo, geo)
    assert res.loaded["incident"] == len(oracle.incidents)
    ok = reconcile(settings, DAY, DAY, geo=geo, source="files")
    assert ok.ok, [d for d in ok.differences if d.differs]
    assert any(d.store_rows for d in ok.differences if d.level == "england")
    # A correction the store never received: one incident's newest version is missing.
    from sinks.loader import load_facts
    from sinks.store import opened

    victim = next(f for f in oracle.incidents if f.disposition is not None and f.clock_start_ms is not None)
    with opened(settings) as store:
        store.command("TRUNCATE TABLE incident_facts")
        store.command("TRUNCATE TABLE incident_changes")
        for t in ("hourly", "daily", "monthly"):
            store.command(f"TRUNCATE TABLE incident_rollup_{t}")
        others = [f for f in oracle.incidents if f is not victim]
        stale = dataclasses.replace(victim, disposition=None, open=True, conveyed=False, version=1)
        load_facts(store, "tamper", incidents=[*others, stale])
    bad = reconcile(settings, DAY, DAY, geo=geo, levels=("england", "icb"), source="files")
    assert not bad.ok
    facts = next(d for d in bad.differences if d.table == "incident_facts")
    assert (facts.changed, facts.missing, facts.extra) == (1, 0, 0)
    assert any(d.differs for d in bad.differences if d.table == "dispositions" and d.level == "england")
    # and a rebuild heals it
    assert rebuild(settings, geo=geo, source="files").problems == []
    assert reconcile(settings, DAY, DAY, geo=geo, levels=("england",), source="files").ok


def test_commands_verify_rebuild_and_reconcile(settings: Settings, events: list[Event]) -> None:
    from click.testing import CliRunner

    from amb.commands import archive as archive_cmd
    from amb.commands import rebuild as rebuild_cmd
    from amb.commands import reconcile as reconcile_cmd

    env = {"AMB_DATA_DIR": str(settings.data_dir), "AMB_GEO_DIR": str(settings.geo_index_dir)}
    runner = CliRunner()
    for cmd in (archive_cmd.command, rebuild_cmd.command, reconcile_cmd.command):
        assert "Example" in runner.invoke(cmd, ["--help"]).output
    empty = runner.invoke(reconcile_cmd.command, ["--source", "files"], env=env)
    assert empty.exit_code != 0 and "archive" in str(empty.exception)
    now = int(time.time() * 1000)
    archive_batch(archive_dir(settings), as_messages(events[:300], now), now)
    out = runner.invoke(archive_cmd.command, ["--verify"], env=env)
    assert out.exit_code == 0 and "300 events" in out.output and "every checksum matches" in out.output
    out = runner.invoke(rebuild_cmd.command, ["--yes", "--source", "files"], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(reconcile_cmd.command, ["--from", DAY.isoformat(), "--to", DAY.isoformat(),
                                                "--level", "england", "--source", "files"], env=env)
    assert out.exit_code == 0 and "0 differ" in out.output, out.output
    bad = runner.invoke(reconcile_cmd.command, ["--from", "2025-10-02", "--to", "2025-10-01"], env=env)
    assert bad.exit_code != 0
