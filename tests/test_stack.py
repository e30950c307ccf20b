"""`amb stack` and amb.stack: generated configs, topic names, pid safety, and the real
up/status/down cycle through the CLI on free ports (its own broker, not the session one)."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from amb import topics
from amb.config import Settings
from amb.errors import AmbError
from amb.stack import Stack, kafka, private_settings, process, prometheus
from amb.stack.maven import dist_for
from domain.events import TRUSTS


def amb(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "amb.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "AMB_DATA_DIR": str(settings.data_dir), "AMB_CACHE_DIR": str(settings.cache_dir),
           "AMB_KAFKA_VERSION": settings.kafka_version}
    for field in ("kafka_port", "kafka_controller_port", "prometheus_port", "publisher_metrics_port",
                  "worker_metrics_port", "sink_metrics_port", "serve_port"):
        env["AMB_" + field.upper()] = str(getattr(settings, field))
    env.update(extra)
    return env


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return private_settings(tmp_path / "data")


# --- generated configuration ------------------------------------------------------------------

def test_server_properties_describe_a_single_node_kraft_broker(settings: Settings) -> None:
    props = dict(line.split("=", 1) for line in kafka.server_properties(settings).splitlines()
                 if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{settings.kafka_controller_port}"
    assert f"PLAINTEXT://127.0.0.1:{settings.kafka_port}" in props["listeners"]
    assert f"CONTROLLER://127.0.0.1:{settings.kafka_controller_port}" in props["listeners"]
    assert Path(props["log.dirs"]) == settings.data_dir / "kafka"
    assert props["num.partitions"] == str(settings.kafka_partitions)
    assert props["auto.create.topics.enable"] == "true"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {kafka.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_prometheus_scrapes_each_metrics_port_and_skips_disabled_ones(settings: Settings) -> None:
    cfg = prometheus.config(settings)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in cfg["scrape_configs"]}
    assert targets["worker"] == [f"127.0.0.1:{settings.worker_metrics_port}"]
    assert targets["sink"] == [f"127.0.0.1:{settings.sink_metrics_port}"]
    assert targets["serve"] == [f"127.0.0.1:{settings.serve_port}"]
    assert targets["prometheus"] == [f"127.0.0.1:{settings.prometheus_port}"]
    off = prometheus.config(private_settings(settings.data_dir, publisher_metrics_port=0))
    assert "publisher" not in {job["job_name"] for job in off["scrape_configs"]}
    # The file written is valid YAML with the same content.
    paths = prometheus.write_config(settings)
    assert yaml.safe_load(paths.config.read_text()) == cfg


# --- topics ------------------------------------------------------------------------------------

def test_project_topics_one_per_trust_plus_dlq_and_facts(settings: Settings) -> None:
    specs = topics.project_topics(settings)
    names = [s.name for s in specs]
    assert names == [f"amb.events.{t}" for t in TRUSTS] + ["amb.dlq", "amb.incident-facts"]
    assert all(s.partitions == settings.kafka_partitions for s in specs)
    assert int(next(s for s in specs if s.name == "amb.dlq").config["retention.ms"]) >= 7 * 24 * 3600 * 1000


def test_events_topic_refuses_unknown_trusts_and_pattern_matches_only_events(settings: Settings) -> None:
    with pytest.raises(AmbError, match="unknown trust"):
        topics.events_topic(settings, "XXX")
    pattern = re.compile(topics.events_pattern(settings))
    assert all(pattern.match(t) for t in topics.events_topics(settings))
    assert not pattern.match("amb.dlq") and not pattern.match("amb.incident-facts")
    assert not pattern.match("other.events.RX6")


# --- processes and ports -------------------------------------------------------------------------

def test_a_pid_file_pointing_at_someone_elses_process_is_not_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but its command line lacks the marker
    assert process.owned_pid(pid_file, str(tmp_path / "never-in-argv.properties")) is None
    assert not pid_file.exists(), "a stale pid file is removed"
    pid_file.write_text("999999999\n")
    assert process.owned_pid(pid_file, "anything") is None


def test_port_checks(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not process.port_free("127.0.0.1", port)
        assert process.port_open("127.0.0.1", port)
    assert process.port_free("127.0.0.1", port)


def test_status_of_a_stack_never_started(settings: Settings) -> None:
    env = env_for(settings)
    proc = amb("stack", "status", env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^kafka\s+stopped", proc.stdout, re.M)
    check = amb("stack", "status", "--check", env=env)
    assert check.returncode == 1


# --- the real thing ------------------------------------------------------------------------------

@pytest.fixture
def cli_stack(settings: Settings) -> Iterator[tuple[Settings, dict[str, str]]]:
    env = env_for(settings)
    try:
        yield settings, env
    finally:  # whatever the test did, leave no broker behind
        Stack(settings).down(timeout=10)


@pytest.mark.kafka
def test_up_status_up_down_through_the_cli(cli_stack: tuple[Settings, dict[str, str]]) -> None:
    settings, env = cli_stack
    first = amb("stack", "up", env=env)
    assert first.returncode == 0, first.stderr
    assert "kafka" in first.stdout and "running on" in first.stdout
    kafka_pid = int(Path(settings.run_dir / "kafka.pid").read_text())
    pids = [kafka_pid]
    prom_started = prometheus.binary() is not None
    if prom_started:
        pids.append(int(Path(settings.run_dir / "prometheus.pid").read_text()))
    else:
        assert "prometheus not installed: skipped" in first.stdout
    assert all(process.pid_alive(p) for p in pids)

    status = amb("stack", "status", "--check", env=env)
    assert status.returncode == 0, status.stdout
    assert re.search(rf"^kafka\s+running\s+{kafka_pid}\s", status.stdout, re.M)
    if prom_started:
        assert re.search(r"^prometheus\s+running\s", status.stdout, re.M)

    # Every project topic exists with the configured partitions.
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0}).list_topics(timeout=10)
    for spec in topics.project_topics(settings):
        assert len(md.topics[spec.name].partitions) == settings.kafka_partitions

    again = amb("stack", "up", env=env)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert int(Path(settings.run_dir / "kafka.pid").read_text()) == kafka_pid

    down = amb("stack", "down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(process.pid_alive(p) for p in pids)
    assert not (settings.run_dir / "kafka.pid").exists()
    assert not (settings.data_dir / "kafka").exists()
    assert process.port_free("127.0.0.1", settings.kafka_port)
    after = amb("stack", "status", env=env)
    assert re.search(r"^kafka\s+stopped", after.stdout, re.M)


@pytest.mark.kafka
def test_port_in_use_is_one_line_naming_the_setting(settings: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.kafka_port))
        squatter.listen()
        proc = amb("stack", "up", "--no-prometheus", env=env_for(settings))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "AMB_KAFKA_PORT" in lines[0] and str(settings.kafka_port) in lines[0]
    assert not (settings.run_dir / "kafka.pid").exists()


def test_missing_java_is_one_line_naming_it(settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = amb("stack", "up", env=env_for(settings, PATH=str(empty)))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "java not found" in lines[0] and "apt-get install" in lines[0]


def test_missing_maven_is_one_line_naming_it(settings: Settings, tmp_path: Path) -> None:
    only_java = tmp_path / "only-java"
    only_java.mkdir()
    java = os.path.realpath(sys.executable)  # any executable stands in: mvn is checked first
    (only_java / "java").symlink_to(java)
    env = env_for(settings, PATH=str(only_java), AMB_CACHE_DIR=str(tmp_path / "empty-cache"))
    proc = amb("stack", "install", env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "mvn not found" in lines[0] and "maven" in lines[0]


def test_unreachable_broker_gives_a_clear_error() -> None:
    (port,) = process.free_ports(1)
    with pytest.raises(AmbError) as info:
        kafka.require_broker(f"127.0.0.1:{port}", timeout=1)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "amb stack up" in message and "\n" not in message


# --- the session stack (tests/conftest.py) ---------------------------------------------------------

@pytest.mark.kafka
def test_session_stack_is_running_with_project_topics(kafka_stack: Stack, kafka_bootstrap: str) -> None:
    states = {c.name: c.state for c in kafka_stack.status()}
    assert states == {"kafka": "running"}
    kafka.require_broker(kafka_bootstrap, timeout=5)
    assert dist_for(kafka_stack.settings).installed
    from confluent_kafka.admin import AdminClient

    names = set(AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0}).list_topics(timeout=10).topics)
    assert {s.name for s in topics.project_topics(kafka_stack.settings)} <= names


@pytest.mark.kafka
def test_new_topic_factory_creates_ready_uuid_topics(new_topic: object, kafka_bootstrap: str) -> None:
    assert callable(new_topic)
    a, b = new_topic(partitions=3), new_topic()
    assert a != b and a.startswith("test-")
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0}).list_topics(timeout=10)
    assert len(md.topics[a].partitions) == 3 and len(md.topics[b].partitions) == 4
