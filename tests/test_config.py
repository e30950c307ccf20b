"""amb.config: environment parsing, one-line errors naming the variable, derived paths."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from amb import config
from amb.config import Settings
from amb.errors import AmbError, ConfigError


def test_defaults_work_with_an_empty_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = config.load({})
    assert s.kafka_port == 9092
    assert s.kafka_controller_port == 9093
    assert s.kafka_version.startswith("4.")
    assert s.topic_prefix == "amb"
    assert s.data_dir == tmp_path.resolve() / ".amb"
    assert s.data_dir.is_absolute() and s.cache_dir.is_absolute()


def test_integers_and_paths_are_parsed(tmp_path: Path) -> None:
    s = config.load({"AMB_KAFKA_PORT": "19092", "AMB_KAFKA_PARTITIONS": "8", "AMB_DATA_DIR": str(tmp_path / "d"),
                     "AMB_CHDB_PATH": str(tmp_path / "ch"), "AMB_KAFKA_HEAP": "1g"})
    assert s.kafka_port == 19092 and isinstance(s.kafka_port, int)
    assert s.kafka_partitions == 8
    assert s.data_dir == tmp_path / "d"
    assert s.chdb_dir == tmp_path / "ch"
    assert s.kafka_heap == "1g"


def test_empty_variable_means_default(tmp_path: Path) -> None:
    s = config.load({"AMB_KAFKA_PORT": "", "AMB_TOPIC_PREFIX": "", "AMB_DATA_DIR": str(tmp_path)})
    assert s.kafka_port == 9092
    assert s.topic_prefix == "amb"


def test_relative_and_home_paths_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = config.load({"AMB_DATA_DIR": "work/data", "AMB_CACHE_DIR": "~/cache"})
    assert s.data_dir == tmp_path.resolve() / "work" / "data"
    assert s.cache_dir == (tmp_path / "home" / "cache").resolve()


def test_keyword_overrides_beat_the_environment(tmp_path: Path) -> None:
    s = config.load({"AMB_KAFKA_PORT": "19092"}, kafka_port=29092, data_dir=tmp_path)
    assert s.kafka_port == 29092


@pytest.mark.parametrize(("var", "raw"), [
    ("AMB_KAFKA_PORT", "abc"),
    ("AMB_KAFKA_PORT", "70000"),
    ("AMB_KAFKA_PORT", "0"),
    ("AMB_KAFKA_CONTROLLER_PORT", "-1"),
    ("AMB_PROMETHEUS_PORT", "9090x"),
    ("AMB_KAFKA_PARTITIONS", "four"),
    ("AMB_SERVE_PORT", "65536"),
])
def test_bad_values_raise_config_error_naming_the_variable(var: str, raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load({var: raw, "AMB_DATA_DIR": str(tmp_path)})
    message = str(info.value)
    assert var in message
    assert "\n" not in message
    assert isinstance(info.value, AmbError) and info.value.exit_code == 2


def test_derived_locations(tmp_path: Path) -> None:
    s = config.load({"AMB_DATA_DIR": str(tmp_path)})
    assert s.run_dir == tmp_path / "run"
    assert s.chdb_dir == tmp_path / "chdb"
    assert s.geo_index_dir == tmp_path / "geo"
    geo = config.load({"AMB_DATA_DIR": str(tmp_path), "AMB_GEO_DIR": str(tmp_path / "g")})
    assert geo.geo_index_dir == tmp_path / "g"


def test_bootstrap_defaults_to_the_local_broker_and_can_point_elsewhere(tmp_path: Path) -> None:
    local = config.load({"AMB_DATA_DIR": str(tmp_path), "AMB_KAFKA_HOST": "127.0.0.2", "AMB_KAFKA_PORT": "19092"})
    assert local.bootstrap == "127.0.0.2:19092"
    remote = config.load({"AMB_DATA_DIR": str(tmp_path), "AMB_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert remote.bootstrap == "k1:9092,k2:9092"


def test_topic_names_use_the_prefix(tmp_path: Path) -> None:
    assert config.load({"AMB_DATA_DIR": str(tmp_path)}).topic("dlq") == "amb.dlq"
    assert config.load({"AMB_DATA_DIR": str(tmp_path), "AMB_TOPIC_PREFIX": "ci"}).topic("dlq") == "ci.dlq"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = config.load({"AMB_DATA_DIR": str(tmp_path)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kafka_port = 1  # type: ignore[misc]


def test_every_setting_has_a_unique_documented_variable() -> None:
    rows = config.describe()
    names = [env for env, _, _ in rows]
    assert len(rows) == len(dataclasses.fields(Settings))
    assert len(set(names)) == len(names)
    for env, _default, doc in rows:
        assert env.startswith(("AMB_", "CLICKHOUSE_")), env
        assert doc.strip(), f"{env} has no help text"


def test_cli_reports_a_bad_setting_as_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amb.cli", "stack", "status"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AMB_DATA_DIR": str(tmp_path),
             "AMB_KAFKA_PORT": "not-a-port"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "AMB_KAFKA_PORT" in lines[0] and "not-a-port" in lines[0]


def test_to_environ_gives_a_child_process_the_same_settings(tmp_path: Path) -> None:
    s = config.load({"AMB_KAFKA_SECURE": "1", "AMB_KAFKA_PORT": "1234", "AMB_DATA_DIR": str(tmp_path)})
    env = config.to_environ(s, {"AMB_SCHEMA_REGISTRY_URL": "http://stale", "PATH": "/bin"})
    assert config.load(env) == s
    assert "AMB_SCHEMA_REGISTRY_URL" not in env  # unset in s: a stale parent value must not leak
    assert env["PATH"] == "/bin" and env["AMB_KAFKA_SECURE"] == "1"
