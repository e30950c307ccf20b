"""The small chaos scenario (the full set, with archive kills, broker restarts and two workers, is
`make chaos`: tests/chaos/run_chaos.py): the worker and the sink killed with -9 at seeded random
moments while messy traffic and poison flow, the archive running throughout; at the end the store
equals the batch oracle and the archive, and every poison message is dead-lettered."""

from __future__ import annotations

from pathlib import Path

import pytest

from amb import config
from amb.config import Settings
from chaos.scenario import format_reports, run_scenario
from streams.geo import IndexGeo

pytestmark = pytest.mark.kafka


def test_kill_9_worker_and_sink_lose_and_double_count_nothing(
        stack_settings: Settings, tmp_path: Path) -> None:
    geo = IndexGeo.load(config.load().geo_index_dir)
    rep = run_scenario(stack_settings, tmp_path, name="small", seed=20261123, trusts=("RX6", "RYE"), scale=0.05,
                       chunks=2, faults=("kill_worker", "kill_sink"), geo=geo, echo=print)
    print("\n" + format_reports([rep]))
    assert rep.faults == {"kill_worker": 1, "kill_sink": 1}
    assert rep.ok, "\n".join(rep.details)
