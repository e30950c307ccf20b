"""The raw archive in the store (sinks.raw -> raw_events, dead_letters) and `amb rebuild --from` /
`amb reconcile` reading it, on chDB without Kafka: the rows the sink's archivers insert, a "code
fix" modelled by tampering with stored facts, a partial rebuild that heals exactly those incidents
(counts move, nothing else is touched), a second rebuild that changes nothing."""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_archive import DAY, as_messages, batches, poison  # noqa: E402

from amb import config  # noqa: E402
from amb.codec import default_codec  # noqa: E402
from amb.config import Settings  # noqa: E402
from amb.dlq import H_MESSAGE, H_OFFSET, H_PARTITION, H_REASON, H_REASONS, H_TIME, H_TOPIC  # noqa: E402
from amb.rebuild import rebuild, rebuild_from, recompute, reconcile  # noqa: E402
from domain.events import Event  # noqa: E402
from domain.oracle import compute  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks import queries  # noqa: E402
from sinks.loader import check, load_facts  # noqa: E402
from sinks.raw import RAW_TABLE, dead_letter_rows, raw_rows  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402
from streams.geo import IndexGeo  # noqa: E402


@pytest.fixture(scope="module")
def geo() -> IndexGeo:
    return IndexGeo.load(config.load().geo_index_dir)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return config.load({}, data_dir=tmp_path, geo_dir=config.load().geo_index_dir)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    from test_archive import TRUSTS

    from amb.simulate_io import load_pool
    from domain.simulate import Mess, SimConfig, clean_events

    cfg = SimConfig(start=DAY, days=2, trusts=TRUSTS, seed=11, scale=0.03,
                    mess=Mess(dup=0.05, late=0.05, shuffle=0.1, correction=0.1, retriage=0.05))
    return list(clean_events(cfg, load_pool(config.load(), "sample")))


@pytest.fixture
def store(settings: Settings) -> Any:
    s = ChdbStore(settings.chdb_dir)
    mig.migrate(s)
    yield s
    s.close()


def archive_into(store: ChdbStore, events: list[Event]) -> int:
    """What the sink's raw archiver inserts, batch by batch, with a replay of the first batches."""
    now = int(time.time() * 1000)
    msgs = as_messages(events, now) + poison(now)
    validate = default_codec().decode_and_validate
    cut = list(batches(msgs, 3))
    rows = 0
    for i, b in enumerate([*cut, *cut[:3]]):  # a crash replays some batches: same event ids
        t = raw_rows(b, now, validate)
        rows += t.num_rows
        store.insert_arrow(RAW_TABLE, t, f"test:{i}")
    return rows


def every_table(store: ChdbStore) -> dict[str, Any]:
    return {f"{m}/{lvl}/{by}": queries.run(store, queries.Query(m, lvl, by))
            for m in queries.METRICS for lvl in ("england", "icb", "lsoa") for by in ("day", "month")}


def oracle_tables(events: list[Event], geo: IndexGeo) -> dict[str, Any]:
    rep = compute(events, geo, geo)
    return {f"{m}/{lvl}/{by}": queries.oracle_table(rep, queries.Query(m, lvl, by))
            for m in queries.METRICS for lvl in ("england", "icb", "lsoa") for by in ("day", "month")}


def test_raw_events_hold_each_accepted_event_once_and_refusals_are_left_to_the_dlq(
        store: ChdbStore, events: list[Event]) -> None:
    archive_into(store, events)
    distinct = {e.event_id for e in events}
    got = store.query("SELECT count(), uniqExact(event_id) FROM raw_events FINAL").rows[0]
    assert got == (len(distinct), len(distinct))
    lateness = store.query("SELECT min(kafka_ts_ms - event_time_ms) FROM raw_events FINAL").scalar()
    assert lateness >= 0


def test_full_rebuild_from_the_store_equals_the_oracle(settings: Settings, store: ChdbStore, events: list[Event],
                                                      geo: IndexGeo) -> None:
    archive_into(store, events)
    rec = recompute(settings, geo=geo, store=store)
    assert rec.report.rows == compute(events, geo, geo).rows
    store.close()
    res = rebuild(settings, geo=geo)
    assert res.problems == []
    assert reconcile(settings, DAY, DAY + timedelta(days=1), geo=geo, levels=("england", "icb")).ok


def test_rebuild_from_a_date_heals_exactly_the_tampered_incidents_and_twice_is_a_no_op(
        settings: Settings, store: ChdbStore, events: list[Event], geo: IndexGeo) -> None:
    archive_into(store, events)
    oracle = compute(events, geo, geo)
    # A "bug": some incidents of the second day were stored wrong (a newer version the code got
    # wrong), one never stored; and one of the first day too, which --from day 2 must not touch.
    day2 = int(queries.london_midnight_s(DAY + timedelta(days=1)) * 1000)
    late = [f for f in oracle.incidents if f.disposition is not None and f.first_event_ms >= day2]
    early = next(f for f in oracle.incidents if f.disposition is not None and f.last_event_ms < day2)
    lost = late[5]
    load_facts(store, "sink", incidents=[f for f in oracle.incidents if f is not lost], handovers=oracle.handovers,
               calls=oracle.calls)
    wrong = [dataclasses.replace(f, disposition=None, open=True, conveyed=False, version=f.version + 1)
             for f in [*late[:5], early]]
    load_facts(store, "bug", incidents=wrong)
    assert check(store) == []
    assert every_table(store) != oracle_tables(events, geo)
    bad = reconcile(settings, geo=geo, store=store, levels=("england",))
    assert not bad.ok

    part = rebuild_from(settings, DAY + timedelta(days=1), geo=geo, store=store, chunk_incidents=40)
    assert part.chunks > 1
    assert (part.changed["incident"], part.added["incident"], part.removed["incident"]) == (5, 1, 0)
    assert part.problems == [] and check(store) == []
    # the first-day incident is outside the range: still wrong, and only it
    facts = next(d for d in reconcile(settings, geo=geo, store=store, levels=("england",)).differences
                 if d.table == "incident_facts")
    assert (facts.changed, facts.missing, facts.extra) == (1, 0, 0)
    # the rest of day 2 is exactly the oracle again; and from day 1 everything is
    part = rebuild_from(settings, DAY, geo=geo, store=store)
    assert part.changed["incident"] == 1
    assert every_table(store) == oracle_tables(events, geo)
    assert reconcile(settings, geo=geo, store=store).ok
    again = rebuild_from(settings, DAY, geo=geo, store=store)
    assert again.touched == 0 and again.incidents == part.incidents
    assert every_table(store) == oracle_tables(events, geo)
    # a worker's next version still supersedes a rebuilt fact; a stale replay does not
    f = late[0]
    newer = dataclasses.replace(f, version=f.version + 1)
    assert load_facts(store, "worker", incidents=[f])["incident"].applied == 0
    assert load_facts(store, "worker", incidents=[newer])["incident"].applied == 1


def test_dead_letters_rows_unpack_the_headers() -> None:
    class Msg:
        def __init__(self, offset: int, headers: list[tuple[str, bytes]], key: bytes | None) -> None:
            self._o, self._h, self._k = offset, headers, key

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self._o

        def key(self) -> bytes | None:
            return self._k

        def value(self) -> bytes:
            return b"\x00bad"

        def headers(self) -> list[tuple[str, bytes]]:
            return self._h

        def timestamp(self) -> tuple[int, int]:
            return (1, 1_760_000_000_000)

    h = [(H_REASON, b"bad_magic"), (H_REASONS, b"bad_magic;wrong_key"), (H_MESSAGE, b"not Avro"),
         (H_TOPIC, b"amb.events.RX6"), (H_PARTITION, b"2"), (H_OFFSET, b"41"), (H_TIME, b"2025-10-01T10:00:00Z")]
    t = dead_letter_rows([Msg(7, h, b"RX6:1"), Msg(8, [], b"RYE:9")])
    rows = t.to_pylist()
    assert rows[0]["trust"] == "RX6" and rows[0]["reason"] == "bad_magic"
    assert rows[0]["reasons"] == "bad_magic;wrong_key" and rows[0]["source_offset"] == 41
    assert rows[0]["dead_lettered_ms"] == 1_759_312_800_000 and rows[0]["kafka_ts_ms"] == 1_760_000_000_000
    assert rows[1]["trust"] == "RYE" and rows[1]["reason"] == "unknown" and rows[1]["source_partition"] == -1


def test_rebuild_command_from_a_date(settings: Settings, events: list[Event]) -> None:
    from click.testing import CliRunner

    from amb.commands import rebuild as rebuild_cmd
    from amb.commands import reconcile as reconcile_cmd

    s = ChdbStore(settings.chdb_dir)
    mig.migrate(s)
    archive_into(s, events[:400])
    s.close()
    env = {"AMB_DATA_DIR": str(settings.data_dir), "AMB_GEO_DIR": str(settings.geo_index_dir)}
    runner = CliRunner()
    bad = runner.invoke(reconcile_cmd.command, ["--level", "england"], env=env)
    assert bad.exit_code == 1, bad.output  # nothing loaded yet: the store differs
    out = runner.invoke(rebuild_cmd.command, ["--from", DAY.isoformat()], env=env)
    assert out.exit_code == 0 and "added" in out.output, out.output
    out = runner.invoke(reconcile_cmd.command, ["--level", "england"], env=env)
    assert out.exit_code == 0 and "0 differ" in out.output, out.output
    out = runner.invoke(rebuild_cmd.command, ["--to", DAY.isoformat()], env=env)
    assert out.exit_code != 0 and "--to needs --from" in out.output
