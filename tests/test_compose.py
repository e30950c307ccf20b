"""docker-compose.yml cannot run here (no Docker engine), so check its structure against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from amb import config
from amb.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PROJECT_SERVICES = ("migrate", "worker", "sink", "serve")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_every_component_is_declared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "clickhouse", "prometheus", "grafana", *PROJECT_SERVICES):
        assert name in services, f"service {name} missing"


def test_kafka_is_official_image_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert int(tag.split(".")[0]) >= 4
    env = _env(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(env).upper()
    for extra in ("kafka-2", "kafka-3"):
        assert compose["services"][extra]["profiles"] == ["scale"]


def test_project_services_use_known_settings(compose: dict[str, Any]) -> None:
    known = {env for env, _default, _doc in config.describe()} | {"AMB_PSEUDONYM_KEY"}
    for name in PROJECT_SERVICES:
        env = _env(compose["services"][name])
        unknown = {k for k in env if (k.startswith("AMB_") or k.startswith("CLICKHOUSE")) and k not in known}
        assert not unknown, f"{name} sets variables the config module does not read: {unknown}"
        bootstrap = env["AMB_BOOTSTRAP_SERVERS"]
        host, port = bootstrap.split(":")
        assert host in compose["services"], f"{name} points at unknown broker host {host}"
        assert f"PLAINTEXT://{host}:{port}" in _env(compose["services"][host])["KAFKA_ADVERTISED_LISTENERS"]
        assert "@clickhouse:8123/" in env["CLICKHOUSE_URL"]
        # The settings the compose file passes must parse.
        config.load(env)


def test_project_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    for name in PROJECT_SERVICES:
        words = compose["services"][name]["command"]
        group: click.Command = cli
        for word in words:
            assert isinstance(group, click.Group), f"{name}: {words} goes past a command"
            sub = group.commands.get(word)
            assert sub is not None, f"{name}: `amb {' '.join(words)}` is not a command"
            group = sub


def test_metrics_ports_agree_with_scrape_config(compose: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.compose.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]
    }
    for service, var in (("worker", "AMB_WORKER_METRICS_PORT"), ("sink", "AMB_SINK_METRICS_PORT"), ("serve", "AMB_SERVE_PORT")):
        port = _env(compose["services"][service])[var]
        assert targets[f"amb-{service}"] == f"{service}:{port}"
    serve_ports = compose["services"]["serve"]["ports"]
    assert any(p.endswith(":" + _env(compose["services"]["serve"])["AMB_SERVE_PORT"]) for p in serve_ports)


def test_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing path {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "AMB_PSEUDONYM_KEY"):
        assert re.search(r"\$\{" + secret + r"[:}]", text), f"{secret} is not taken from the environment"
    assert "password: amb" not in text.lower()


def test_dockerfile_copies_existing_paths() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    for match in re.finditer(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        for src in match.group(1).split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
