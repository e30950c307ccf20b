"""The one configuration module.

Every setting comes from an environment variable and has an embedded default that works on one
machine with nothing configured. Nothing else in the project reads ``os.environ`` for settings:
call :func:`load` (or :func:`settings`) and pass the frozen object down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amb.errors import ConfigError


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Typed, frozen settings; each field names its environment variable in ``metadata['env']``."""

    data_dir: Path = _setting(
        "AMB_DATA_DIR", Path(".amb"),
        "Working data: broker logs, pid files, geography index, chDB store. Relative paths are "
        "taken from the current directory.",
    )
    cache_dir: Path = _setting(
        "AMB_CACHE_DIR", Path.home() / ".cache" / "amb",
        "Downloads shared between clones (Kafka jars resolved by Maven).",
    )
    kafka_version: str = _setting("AMB_KAFKA_VERSION", "4.1.1", "Apache Kafka version (4.x) resolved from Maven Central.")
    kafka_host: str = _setting("AMB_KAFKA_HOST", "127.0.0.1", "Address the local broker listens on.")
    kafka_port: int = _setting("AMB_KAFKA_PORT", 9092, "Client port of the local broker.")
    kafka_controller_port: int = _setting("AMB_KAFKA_CONTROLLER_PORT", 9093, "KRaft controller port of the local broker.")
    kafka_heap: str = _setting("AMB_KAFKA_HEAP", "512m", "JVM heap (-Xmx/-Xms) for the local broker.")
    kafka_partitions: int = _setting("AMB_KAFKA_PARTITIONS", 4, "Partitions for each project topic the stack creates.")
    bootstrap_servers: str = _setting(
        "AMB_BOOTSTRAP_SERVERS", "",
        "Kafka bootstrap servers for clients. Empty means the local stack (AMB_KAFKA_HOST:AMB_KAFKA_PORT).",
    )
    kafka_secure: bool = _setting(
        "AMB_KAFKA_SECURE", False,
        "1 = the broker requires SASL/SCRAM-SHA-512 and ACLs (`amb stack up --secure`); clients log in "
        "with credentials from AMB_KAFKA_CREDENTIALS.",
    )
    kafka_credentials: Path | None = _setting(
        "AMB_KAFKA_CREDENTIALS", None,
        "Credentials store (0600 JSON) of the SASL principals. Default: AMB_DATA_DIR/security/credentials.json.",
    )
    kafka_ssl_ca: str = _setting(
        "AMB_KAFKA_SSL_CA", "", "CA certificate file for SASL_SSL in production; empty means SASL_PLAINTEXT.",
    )
    topic_prefix: str = _setting("AMB_TOPIC_PREFIX", "amb", "Prefix of every project topic name.")
    schema_registry_url: str = _setting(
        "AMB_SCHEMA_REGISTRY_URL", "",
        "Confluent Schema Registry URL. Empty means Avro single-object encoding (no registry).",
    )
    clickhouse_url: str = _setting(
        "CLICKHOUSE_URL", "",
        "ClickHouse server URL (http://user:pass@host:8123/db). Empty means embedded chDB.",
    )
    chdb_path: Path | None = _setting(
        "AMB_CHDB_PATH", None, "chDB data directory. Default: AMB_DATA_DIR/chdb.",
    )
    geo_dir: Path | None = _setting(
        "AMB_GEO_DIR", None, "Built geography index. Default: AMB_DATA_DIR/geo.",
    )
    geo_data_path: Path | None = _setting(
        "AMB_GEO_DATA_DIR", None,
        "Reference data the geography index is built from. Default: data/geo of this checkout.",
    )
    identities_file: Path | None = _setting(
        "AMB_IDENTITIES_FILE", None,
        "Analyst identities and their hashed tokens (`amb token`). Default: AMB_DATA_DIR/identities.toml.",
    )
    pseudonym_key_file: Path | None = _setting(
        "AMB_PSEUDONYM_KEY_FILE", None,
        "Deployment key for pseudonymised incident ids (created 0600). Default: AMB_DATA_DIR/pseudonym.key.",
    )
    prometheus_port: int = _setting("AMB_PROMETHEUS_PORT", 9090, "Port of the local Prometheus server.")
    publisher_metrics_port: int = _setting("AMB_PUBLISHER_METRICS_PORT", 9101, "Prometheus metrics port of `amb publish`/`amb simulate --publish` (0 = off).")
    worker_metrics_port: int = _setting("AMB_WORKER_METRICS_PORT", 9102, "Prometheus metrics port of `amb worker`.")
    sink_metrics_port: int = _setting("AMB_SINK_METRICS_PORT", 9103, "Prometheus metrics port of `amb sink`.")
    serve_port: int = _setting("AMB_SERVE_PORT", 8080, "HTTP port of `amb serve`.")
    worker_web_port: int = _setting("AMB_WORKER_WEB_PORT", 6066, "Faust's own web port for `amb worker`.")
    late_horizon_days: int = _setting("AMB_LATE_HORIZON_DAYS", 7, "How long incident state is kept after it closes, for late events.")

    # Derived locations ---------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def chdb_dir(self) -> Path:
        return self.chdb_path or self.data_dir / "chdb"

    @property
    def geo_index_dir(self) -> Path:
        return self.geo_dir or self.data_dir / "geo"

    @property
    def geo_data_dir(self) -> Path:
        return self.geo_data_path or Path(__file__).resolve().parents[1] / "data" / "geo"

    @property
    def run_dir(self) -> Path:
        """pid files and logs of processes the stack started."""
        return self.data_dir / "run"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"


def _convert(name: str, raw: str, typ: Any, env: str) -> Any:
    typ_s = str(typ)
    try:
        if typ_s in ("bool", "<class 'bool'>"):
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ_s in ("int", "<class 'int'>"):
            return int(raw)
        if "Path" in typ_s:
            return Path(raw).expanduser() if raw else None
        return raw
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {typ_s} (setting {name})") from None


def load(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``), then keyword overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        var = f.metadata["env"]
        if var in env and env[var] != "":
            values[f.name] = _convert(f.name, env[var], f.type, var)
    values.update(overrides)
    s = Settings(**values)
    # Resolve relative directories once, so child processes started elsewhere agree on them.
    s = dataclasses.replace(
        s, data_dir=s.data_dir.expanduser().resolve(), cache_dir=s.cache_dir.expanduser().resolve()
    )
    _check(s)
    return s


#: Most fact messages per sink load (`amb sink --batch-size`, `amb serve --sink-batch-size`). Each
#: load costs about half a second in chDB whatever its size (15 statements: lookups, staging,
#: changes with their rollup views, facts), so a backlog loads 2x faster in batches of 100,000
#: than of 20,000 (bench/bench_sink.py); light load still loads each --batch-seconds' worth at once.
#: Memory: the batch's messages and their Arrow columns, a few hundred bytes to a kilobyte each.
SINK_BATCH_MESSAGES = 100_000


# Ports that must be real; the metrics/web ports may be 0, meaning "off" (or "any free port" for Faust).
_REQUIRED_PORTS = ("kafka_port", "kafka_controller_port", "prometheus_port", "serve_port")
_OPTIONAL_PORTS = ("publisher_metrics_port", "worker_metrics_port", "sink_metrics_port", "worker_web_port")


def _env_name(name: str) -> str:
    return str(Settings.__dataclass_fields__[name].metadata["env"])


def _check(s: Settings) -> None:
    for name in _REQUIRED_PORTS:
        port = getattr(s, name)
        if not 0 < port < 65536:
            raise ConfigError(f"{_env_name(name)}={port} is not a TCP port (1-65535)")
    for name in _OPTIONAL_PORTS:
        port = getattr(s, name)
        if not 0 <= port < 65536:
            raise ConfigError(f"{_env_name(name)}={port} is not a TCP port (0 = off, or 1-65535)")
    if s.kafka_partitions < 1:
        raise ConfigError(f"AMB_KAFKA_PARTITIONS={s.kafka_partitions} must be at least 1")
    if s.late_horizon_days < 1:
        raise ConfigError(f"AMB_LATE_HORIZON_DAYS={s.late_horizon_days} must be at least 1")


def to_environ(s: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment under which a child process's :func:`load` gives exactly ``s``: ``base``
    (default ``os.environ``) with every setting written out, and unset ones removed."""
    env = dict(os.environ if base is None else base)
    for f in dataclasses.fields(Settings):
        var, value = f.metadata["env"], getattr(s, f.name)
        if value is None or value == "":
            env.pop(var, None)
        elif isinstance(value, bool):
            env[var] = "1" if value else "0"
        else:
            env[var] = str(value)
    return env


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting: used by `amb config`."""
    rows = []
    for f in dataclasses.fields(Settings):
        rows.append((f.metadata["env"], str(f.default), f.metadata["doc"]))
    return rows
