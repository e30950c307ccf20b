"""The real Prometheus scraping a real `amb worker` that reads simulated events from the session broker.

Prometheus is Debian's binary, started through ``amb.stack.prometheus`` with exactly the config
`amb stack up` generates (job names, ports, the shipped rule files), on free ports and a private
data directory. The worker and the simulator are the real CLI commands in child processes, on a
topic prefix of their own so no other test's topics or consumer groups are involved. Everything
is asserted through Prometheus's HTTP API, polling until the condition holds (never on timing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from amb import topics
from amb.config import Settings
from amb.stack import process
from amb.stack import prometheus as prom

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
TRUSTS = ("RX6", "R1F")
LONDON = ZoneInfo("Europe/London")
WAIT_S = 45.0  # a ceiling for each condition to become true, not a timing assertion

pytestmark = pytest.mark.kafka


def prometheus_binary() -> str:
    """Debian's prometheus; a failure where it could be installed, a skip where it cannot."""
    exe = prom.binary()
    if exe:
        return exe
    if os.getuid() == 0 and shutil.which("apt-get"):
        pytest.fail("prometheus not found although root and apt are available: run `make setup` "
                    "(apt-get install prometheus)", pytrace=False)
    pytest.skip("prometheus not installed (apt-get install prometheus)")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child `amb` process needs to see exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMB_") and k != "CLICKHOUSE_URL"}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = "" if value is None else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def amb(*args: str) -> list[str]:
    # -P: the working directory (where the worker keeps its data) must not shadow the package.
    return [sys.executable, "-P", "-m", "amb.cli", *args]


@dataclass
class Live:
    settings: Settings
    base: str
    logs: dict[str, Path]
    alive: Callable[[], str | None]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def evidence(self) -> str:
        return "".join(f"\n--- {name} log ---\n{tail(path)}" for name, path in self.logs.items())

    def wait(self, what: str, probe: Callable[[], Any]) -> Any:
        """Poll ``probe`` until it returns something truthy; fail with the evidence if it never does."""
        deadline = time.monotonic() + WAIT_S
        last: Any = None
        while True:
            dead = self.alive()
            if dead:
                pytest.fail(f"{dead} while waiting for {what}{self.evidence()}")
            last = probe()
            if last:
                return last
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen within {WAIT_S:.0f} s; last answer {last!r}{self.evidence()}")
            time.sleep(0.5)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(line.rstrip("\n") for line in process.tail(path, lines)) if path.exists() else "(no log)"


@pytest.fixture
def live(stack_settings: Settings, tmp_path: Path) -> Iterator[Live]:
    """Prometheus, a worker and a sink on settings of their own (fresh ports, topic prefix, data dir)."""
    exe = prometheus_binary()
    prom_port, worker_port, sink_port, serve_port, web_port = process.free_ports(5)
    settings = dataclasses.replace(
        stack_settings, data_dir=tmp_path / "data", topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        geo_dir=tmp_path / "geo", chdb_path=tmp_path / "chdb", clickhouse_url="", prometheus_port=prom_port,
        worker_metrics_port=worker_port, sink_metrics_port=sink_port, serve_port=serve_port,
        worker_web_port=web_port, publisher_metrics_port=0,
    )
    env = settings_env(settings)
    topics.ensure_topics(settings.bootstrap, topics.project_topics(settings))
    built = subprocess.run(amb("geo", "build", "-q"), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, f"amb geo build failed: {built.stderr[-2000:]}"

    paths = prom.write_config(settings)
    prom_pid = prom.start(settings, paths, exe, die_with_parent=True)
    logs = {"prometheus": paths.log}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        deadline = time.monotonic() + 30
        while not prom.ready(settings, timeout=0.5):
            assert process.pid_alive(prom_pid), f"prometheus exited: {tail(paths.log)}"
            assert time.monotonic() < deadline, f"prometheus not ready after 30 s: {tail(paths.log)}"
            time.sleep(0.1)
        for name in ("worker", "sink"):
            logs[name] = tmp_path / f"{name}.log"
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen(amb(name), env=env, cwd=tmp_path, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)

        def alive() -> str | None:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    return f"`amb {name}` exited with status {proc.returncode}"
            return None if process.pid_alive(prom_pid) else "prometheus exited"

        yield Live(settings, f"http://127.0.0.1:{prom_port}", logs, alive)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                process.terminate(proc.pid, timeout=20)
        process.terminate(prom_pid, timeout=10)
        paths.pid.unlink(missing_ok=True)


def publish_simulated(live: Live, day: date) -> int:
    """Publish a small simulated day for a few trusts; returns the events delivered to Kafka."""
    proc = subprocess.run(
        amb("simulate", "--publish", "--start", day.isoformat(), "--trusts", ",".join(TRUSTS),
            "--scale", "0.02", "--mess", "none",
            "--locations", "sample", "--no-111", "--seed", "7", "--no-progress"),
        env=settings_env(live.settings), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"amb simulate --publish failed: {proc.stderr[-2000:]}"
    delivered = [int(n.replace(",", "")) for n in re.findall(r"delivered ([\d,]+)", proc.stdout)]
    assert len(delivered) == len(TRUSTS), f"cannot read what was delivered from: {proc.stdout}"
    return sum(delivered)


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def test_prometheus_scrapes_the_worker_and_evaluates_the_rules(live: Live) -> None:
    day = datetime.now(LONDON).date()  # today: no event is more than a day in the future
    delivered = publish_simulated(live, day)
    assert delivered > 0

    # The worker and the sink are healthy targets under the local job names the `up` alerts match.
    for job, port in (("worker", live.settings.worker_metrics_port), ("sink", live.settings.sink_metrics_port)):
        up = live.wait(f"up{{job={job!r}}} == 1", functools.partial(live.query, f'up{{job="{job}"}} == 1'))
        assert {s["metric"]["instance"] for s in up} == {f"127.0.0.1:{port}"}

    # Events counted, by trust, for exactly the trusts published; never more than were delivered.
    def all_counted() -> list[dict[str, Any]]:
        result = live.query('sum by (trust) (amb_worker_events_total{job="worker"})')
        return result if {s["metric"].get("trust") for s in result} >= set(TRUSTS) else []

    by_trust = live.wait("amb_worker_events_total for every published trust", all_counted)
    assert {s["metric"]["trust"] for s in by_trust} == set(TRUSTS)
    assert all(value(s) > 0 for s in by_trust)
    def counted_all() -> float | None:
        result = live.query('sum(amb_worker_events_total{job="worker"})')
        return value(result[0]) if result and value(result[0]) >= delivered else None

    assert live.wait("every delivered event counted", counted_all) == delivered

    # The worker's other series are there with plausible values: state held, facts sent, batches
    # taken, and a live clock (the greatest event time seen) inside the simulated day or the
    # day after it, where its last handovers and clears fall.
    for promql in ('sum(amb_worker_state_incidents{job="worker"}) > 0',
                   'sum(amb_worker_facts_total{job="worker"}) > 0',
                   'sum(amb_worker_batch_size_count{job="worker"}) > 0'):
        live.wait(promql, functools.partial(live.query, promql))
    as_of = value(live.wait("amb_live_as_of_seconds", lambda: live.query('amb_live_as_of_seconds{job="worker"} > 0'))[0])
    day_start = datetime.combine(day, datetime.min.time(), LONDON).timestamp()
    assert day_start - 3600 <= as_of <= day_start + 2 * 86400, f"live clock {as_of} outside the simulated day"
    # Live rates (which of today's gauges have values depends on where that clock falls) are rates.
    rates = live.query("amb:live_nonconveyance_rate_today:by_icb")
    assert all(0 <= value(s) <= 1 for s in rates), rates

    # The sink loads the worker's facts into chDB and commits: the series AmbDataStale watches.
    live.wait("amb_sink_facts_total applied", lambda: live.query(
        'sum(amb_sink_facts_total{job="sink", result="applied"}) > 0'))
    commits = live.wait("amb_sink_last_commit_timestamp_seconds", lambda: live.query(
        'max(amb_sink_last_commit_timestamp_seconds{job="sink"})'))
    assert value(commits[0]) > day_start - 86400, "the last commit time is not a Unix time of today"

    # End-to-end freshness: the sink timed the newest event of every batch it inserted (the series
    # AmbDataStale watches). The simulated day runs to midnight, so values may be 0 (events stamped
    # later than now are clamped) but never negative.
    fresh = live.wait("amb_sink_event_freshness_seconds observed", lambda: live.query(
        'sum(amb_sink_event_freshness_seconds_count{job="sink"}) > 0'))
    assert value(fresh[0]) > 0
    assert all(value(s) >= 0 for s in live.query('amb_sink_event_freshness_seconds_sum{job="sink"}'))

    # Worker consumer lag: one series per events partition the worker owns (the published trusts'
    # topics have messages, so their partitions have high watermarks), never negative, and back to
    # zero once everything delivered has been processed.
    events_topics = {topics.events_topic(live.settings, t) for t in TRUSTS}

    def lag_series() -> list[dict[str, Any]]:
        result = live.query('amb_worker_consumer_lag{job="worker"}')
        return result if {s["metric"]["topic"] for s in result} >= events_topics else []

    lags = live.wait("amb_worker_consumer_lag for every published trust's topic", lag_series)
    assert all(value(s) >= 0 for s in lags), lags
    assert all(s["metric"]["partition"].isdigit() for s in lags), lags
    per_topic: dict[str, set[str]] = {}
    for s in lags:
        per_topic.setdefault(s["metric"]["topic"], set()).add(s["metric"]["partition"])
    assert max(len(parts) for parts in per_topic.values()) <= live.settings.kafka_partitions
    live.wait("worker consumer lag back to zero", lambda: live.query(
        f'sum(amb_worker_consumer_lag{{job="worker", topic=~"{"|".join(sorted(events_topics))}"}}) == 0'))

    # A second worker joins the group: the first keeps a lag series for exactly the events
    # partitions it still owns (the label sets of revoked ones are dropped). The second is not
    # scraped (the local config has one worker port); its partitions are the rest.
    total = len(topics.events_topics(live.settings)) * live.settings.kafka_partitions
    assert len(lags) == total, f"one worker owns all {total} events partitions, but {len(lags)} have a lag series"
    second_log = live.logs["worker"].with_name("worker-2.log")
    with open(second_log, "wb") as log:
        second = subprocess.Popen(amb("worker", "--worker-id", "2", "--metrics-port", "0", "--web-port", "0"),
                                  env=settings_env(live.settings), cwd=second_log.parent, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    live.logs["worker 2"] = second_log
    try:
        def shared() -> list[dict[str, Any]] | None:
            if second.poll() is not None:
                pytest.fail(f"the second `amb worker` exited with status {second.returncode}{live.evidence()}")
            owned = live.query('amb_worker_assigned_partitions{job="worker"}')
            series = live.query('count(amb_worker_consumer_lag{job="worker"})')
            if owned and series and 0 < value(owned[0]) < total and value(series[0]) == value(owned[0]):
                return series
            return None

        live.wait("the first worker's lag series shrink to the partitions it still owns", shared)
    finally:
        process.terminate(second.pid, timeout=20)

    # The recording rule over the counter evaluates in the real server (its value may be 0: the
    # worker can have read everything before the first scrape, and rate needs an increase to see).
    rate = live.wait("amb:worker_events:rate5m", lambda: live.query("amb:worker_events:rate5m"))
    assert {s["metric"]["trust"] for s in rate} == set(TRUSTS)
    assert all(value(s) >= 0 for s in rate)

    # Every amb_ series the worker exports is one the code declares (the dashboards rely on it).
    names = {s["metric"]["__name__"]
             for s in live.query('count by (__name__) ({job=~"worker|sink", __name__=~"amb_.*"})')}
    assert {"amb_worker_events_total", "amb_sink_facts_total"} <= names
    from test_grafana import declared_series  # tests/ is on sys.path under pytest's default import mode

    undeclared = names - set(declared_series())
    assert not undeclared, f"the processes export {sorted(undeclared)}, which the declaration scan does not see"

    # The shipped rules are loaded, and every rule evaluates without error in the real server.
    shipped = {(g["name"], r.get("alert") or r.get("record")) for path in RULE_FILES
               for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}

    def evaluated() -> list[dict[str, Any]]:
        rules = [{**r, "group": g["name"]} for g in live.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = live.wait("every rule evaluated once", evaluated)
    assert {(r["group"], r["name"]) for r in rules} == shipped
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, f"rules failing in Prometheus: {bad}"

    # With the worker up and scraped, its down alert resolves (it may have been pending before the
    # first scrape) and stays quiet.
    live.wait("AmbWorkerDown inactive", lambda: not any(
        a["labels"]["alertname"] == "AmbWorkerDown" for a in live.api("alerts")["alerts"]) or None)
