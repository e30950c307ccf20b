"""`amb serve --with-sink`: one process owns the chDB store, serving analysts while the fact sink
loads on a thread (amb.serve.InProcessSink); facts published to the facts topic reach
/v1/metrics (the sink's loads invalidate the service's cached tables). On the session's real
broker, the command as a process."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_data import dataset  # noqa: E402

from amb.config import Settings, to_environ  # noqa: E402
from amb.identities import issue  # noqa: E402
from amb.topics import incident_facts_topic  # noqa: E402
from domain.access import Identity  # noqa: E402
from streams import fact_codec  # noqa: E402

WHO = Identity("trust", "RX7")  # its own row is shown exactly (no disclosure control)


def incidents_shown(url: str, token: str) -> int:
    req = urllib.request.Request(url + "/v1/metrics/dispositions?level=trust&code=RX7&by=month",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body: dict[str, Any] = json.loads(r.read())
    return sum(int(row["incidents"]) for row in body["rows"])


def wait_for(url: str, n: int, token: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := incidents_shown(url, token)) != n:
        assert time.monotonic() < deadline, f"/v1/metrics shows {seen} incidents, not {n}, after {timeout} s"
        time.sleep(0.3)


AMB = ("import sys, click\nfrom amb.commands import serve\n@click.group()\ndef cli(): pass\n"
       "cli.add_command(serve.command)\ncli.main(sys.argv[1:])\n")


@pytest.mark.kafka
def test_amb_serve_with_sink_is_one_process_that_loads_and_serves(stack_settings: Settings, tmp_path: Path) -> None:
    """The command itself: its own topics (prefix), migrations applied, facts in, figures out, a clean stop."""
    s = dataclasses.replace(stack_settings, topic_prefix=f"s{uuid.uuid4().hex[:10]}", data_dir=tmp_path,
                            sink_metrics_port=0)
    token, _ = issue(tmp_path / "identities.toml", WHO)
    proc = subprocess.Popen([sys.executable, "-c", AMB, "serve", "--with-sink", "--port", "0"], env=to_environ(s),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None
        line = ""
        while "amb serve: http" not in line:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "amb serve exited"
        m = re.search(r"(http://[\d.]+:\d+)", line)
        assert m and "sink " in line, line
        url = m.group(1)
        assert incidents_shown(url, token) == 0  # now cached: the sink's loads must invalidate it
        inc, hand = dataset({"E54000057": 30})
        by_id = {h.incident_id: h for h in hand}
        producer = Producer({"bootstrap.servers": s.bootstrap, "log_level": 0})

        def publish(facts: list[Any]) -> None:
            for f in facts:
                producer.produce(incident_facts_topic(s), fact_codec.encode_incident(f, by_id.get(f.incident_id)),
                                 f"{f.trust}:{f.incident_id}".encode())
            producer.flush(30)

        publish(inc[:20])
        wait_for(url, 20, token=token)
        publish(inc[20:])
        wait_for(url, len(inc), token=token)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"sink loaded {len(inc)} messages" in out and "stopped" in out
