"""A small `amb demo` on the session broker: its printed tables must equal the batch oracle."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from amb import config
from amb.config import Settings, to_environ
from amb.topics import ensure_topics, project_topics


@pytest.mark.kafka
def test_small_demo_matches_the_batch_oracle(stack_settings: Settings, tmp_path: Path) -> None:
    s = dataclasses.replace(stack_settings, topic_prefix=f"d{uuid.uuid4().hex[:10]}", data_dir=tmp_path,
                            geo_dir=config.load().geo_index_dir, worker_web_port=0)
    ensure_topics(s.bootstrap, project_topics(s))
    proc = subprocess.run(
        [sys.executable, "-m", "amb.cli", "demo", "--no-stack", "--trusts", "RX6,R1F", "--seed", "5", "--idle", "5"],
        env=to_environ(s), capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Every table above equals the batch oracle" in out
    assert "MISMATCH" not in out
    # The tables are really there: England, both regions the two trusts serve, sites, categories.
    assert "E92000001" in out
    assert "E40000012" in out  # North East and Yorkshire (NEAS)
    assert "E40000005" in out  # South East (Isle of Wight)
    assert "Five hospital sites with most hours lost" in out
    for category in ("C1", "C2", "C3", "C4"):
        assert f" {category} " in out
