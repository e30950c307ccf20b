"""The data-quality scorecard: the pure definition (domain/data_quality.py) on hand-made events, and
the store's SQL (amb/insight/quality.py over raw_events and dead_letters) equal to it on simulated
events with duplicates sent at different times, late events and corrected dispositions."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_archive import DAY, TRUSTS  # noqa: E402

from amb import config  # noqa: E402
from amb.archive import RawMessage  # noqa: E402
from amb.codec import default_codec  # noqa: E402
from amb.insight import quality  # noqa: E402
from domain.data_quality import HOUR_MS, MINUTE_MS, scorecard  # noqa: E402
from domain.events import Event, EventType  # noqa: E402
from sinks import migrate as mig  # noqa: E402
from sinks.queries import london_midnight_s  # noqa: E402
from sinks.raw import DEAD_SCHEMA, DEAD_TABLE, RAW_TABLE, raw_rows  # noqa: E402
from sinks.store import ChdbStore  # noqa: E402

T0 = 1_759_300_000_000


def ev(i: int, incident: str, kind: EventType = EventType.RESPONSE_ARRIVED, t: int = T0, trust: str = "RX6") -> Event:
    return Event(event_id=f"e{i}", event_type=kind, trust=trust, incident_id=incident, event_time=t)


def test_pure_scorecard_by_hand() -> None:
    sent = [
        (ev(1, "a"), T0 + 2 * MINUTE_MS),
        (ev(1, "a"), T0 + 90 * MINUTE_MS),  # a duplicate sent later: the earliest copy counts
        (ev(2, "a", EventType.DISPOSITION), T0 + 3 * HOUR_MS),
        (ev(3, "a", EventType.DISPOSITION, T0 + 1), T0 + 30 * HOUR_MS),  # corrects e2, a day late
        (ev(4, "b", EventType.DISPOSITION), T0),
        (ev(5, "c", t=T0 - 10 * HOUR_MS), T0),  # outside the period
        (ev(6, "z", trust="RYE"), T0 + 8 * 24 * HOUR_MS),
    ]
    dead = [("RX6", "bad_magic", T0), ("RX6", "bad_magic", T0 + 5), ("", "undecodable", T0),
            ("RX6", "invalid", T0 - 1)]
    card = scorecard(sent, dead, T0, T0 + 24 * HOUR_MS)
    rx6 = card.trusts["RX6"]
    assert rx6["events"] == 4
    # lateness (ms) sorted: 0, 2 min, 3 h, 30 h - 1 ms; index int(q * 4)
    assert rx6["lateness_p50_min"] == 180.0 and rx6["lateness_p90_min"] == (30 * HOUR_MS - 1) / MINUTE_MS
    assert (rx6["late_1h_rate"], rx6["late_24h_rate"], rx6["late_7d_rate"]) == (0.5, 0.25, 0.0)
    assert (rx6["dispositions"], rx6["corrected"], rx6["corrections"], rx6["corrected_rate"]) == (2, 1, 1, 0.5)
    assert rx6["dead_letters"] == 2
    assert card.trusts["RYE"]["late_7d_rate"] == 1.0 and card.trusts["RYE"]["corrected_rate"] is None
    assert card.trusts[""]["events"] == 0 and card.trusts[""]["dead_letters"] == 1
    assert card.dead_by_reason == {("RX6", "bad_magic"): 2, ("", "undecodable"): 1}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = ChdbStore(tmp_path / "chdb")
    mig.migrate(s)
    yield s
    s.close()


def simulated() -> list[Event]:
    from amb.simulate_io import load_pool
    from domain.simulate import Mess, SimConfig, clean_events

    cfg = SimConfig(start=DAY, days=1, trusts=TRUSTS, seed=3, scale=0.03,
                    mess=Mess(dup=0.08, late=0.1, shuffle=0.1, correction=0.15, retriage=0.05))
    return list(clean_events(cfg, load_pool(config.load(), "sample")))


def test_store_scorecard_equals_the_definition(store: ChdbStore) -> None:
    events = simulated()
    rng = random.Random(9)
    codec = default_codec()
    sent: list[tuple[Event, int]] = []
    msgs = []
    for i, e in enumerate(events):
        ts = e.event_time + rng.choice((0, 1, 30_000, 2 * HOUR_MS, 30 * HOUR_MS, 9 * 24 * HOUR_MS))
        sent.append((e, ts))
        topic = f"amb.events.{e.trust}"
        msgs.append(RawMessage(topic, 0, i, ts, e.key.encode(), codec.encode(e, ts, topic)))
    # accepted with a clock after every send, so nothing is refused as from the future
    rows = raw_rows(msgs, max(m.timestamp_ms for m in msgs) + 1, codec.decode_and_validate)
    assert rows.num_rows == len(msgs)
    half = rows.num_rows // 2
    store.insert_arrow(RAW_TABLE, rows.slice(0, half), "a")
    store.insert_arrow(RAW_TABLE, rows.slice(half), "b")
    lo = london_midnight_s(DAY) * 1000
    dead = [(rng.choice(TRUSTS + ("",)), rng.choice(("bad_magic", "invalid", "wrong_key")), lo + rng.randrange(86_400_000))
            for _ in range(40)]
    store.insert_arrow(DEAD_TABLE, pa.Table.from_pylist([
        {"dlq_partition": 0, "dlq_offset": i, "trust": t, "reason": r, "reasons": r, "message": "", "source_topic": "",
         "source_partition": -1, "source_offset": -1, "dead_lettered_ms": at, "kafka_ts_ms": at, "replays": 0,
         "key": b"", "payload": b""} for i, (t, r, at) in enumerate(dead)], schema=DEAD_SCHEMA), "d")
    for start, end in ((lo, lo + 86_400_000), (lo + 6 * HOUR_MS, lo + 18 * HOUR_MS), (0, 2**62)):
        want = scorecard(sent, dead, start, end)
        got = quality.scorecard(store, start, end)
        assert got == want
    one = quality.scorecard(store, lo, lo + 86_400_000, ["RX6"])
    assert set(one.trusts) == {"RX6"} and one.trusts["RX6"] == scorecard(sent, dead, lo, lo + 86_400_000).trusts["RX6"]
    assert any(v["corrected"] for v in want.trusts.values()) and any(v["late_7d_rate"] for v in want.trusts.values())


def test_no_archive_is_said_not_shown_as_zeros(store: ChdbStore, tmp_path: Path) -> None:
    with pytest.raises(quality.NoArchive, match="--no-archive"):
        quality.scorecard(store, 0, 2**62)
    assert "no raw events" in quality.scorecard_html(store, 0, 2**62)
    store.close()
    env = {"AMB_DATA_DIR": str(tmp_path), "AMB_CHDB_PATH": str(tmp_path / "chdb"),
           "AMB_GEO_DIR": str(config.load().geo_index_dir)}
    from amb.commands import report

    out = CliRunner().invoke(report.command, ["quality", "--period", "2025-10"], env=env)
    assert out.exit_code != 0 and "no raw events" in str(out.exception)


def test_quality_command_and_report_section(store: ChdbStore, tmp_path: Path) -> None:
    events = simulated()[:300]
    codec = default_codec()
    msgs = [RawMessage(f"amb.events.{e.trust}", 0, i, e.event_time + 60_000, e.key.encode(),
                       codec.encode(e, e.event_time, f"amb.events.{e.trust}")) for i, e in enumerate(events)]
    store.insert_arrow(RAW_TABLE, raw_rows(msgs, 2**41, codec.decode_and_validate), "x")
    html = quality.scorecard_html(store, 0, 2**62)
    assert "Scorecard" in html and "RX6" in html
    store.close()
    env = {"AMB_DATA_DIR": str(tmp_path), "AMB_CHDB_PATH": str(tmp_path / "chdb"),
           "AMB_GEO_DIR": str(config.load().geo_index_dir)}
    from amb.commands import report

    out = CliRunner().invoke(report.command, ["quality", "--from", DAY.isoformat(), "--to", DAY.isoformat(),
                                              "--format", "csv"], env=env)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("trust,events,lateness_p50_min") and len(lines) == 1 + len({e.trust for e in events})
    assert all(",1.0," in ln for ln in lines[1:])  # every event sent one minute after it happened
