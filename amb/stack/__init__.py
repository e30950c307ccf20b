"""The local stack: a single-node Kafka 4 broker (KRaft) and, when installed, Prometheus.

One Python API used by `amb stack`, `amb demo`, the test fixtures and the benchmarks::

    stack = Stack(settings)
    stack.up()        # install (first time), start what is not running, create the topics
    stack.status()    # [ComponentStatus, ...]
    stack.down()      # stop exactly what up() started (pid files checked against /proc)

Everything lives under ``settings.data_dir`` (data) and ``settings.run_dir`` (pid files, logs,
generated configs); the Kafka jars under ``settings.cache_dir``. Two stacks with different data
dirs and ports run side by side, which is how the tests get their own broker.

``Stack(settings, secure=True)`` (`amb stack up --secure`, or AMB_KAFKA_SECURE=1) starts the broker
with SASL/SCRAM-SHA-512 and ACLs (amb.stack.kafka, amb.security): the stack then acts as the
``admin`` super user, and `up` (re)creates the service principals and every stored trust's
credential and ACLs, so `down --purge` followed by `up --secure` restores everyone's access.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amb import config, security, topics
from amb.config import Settings
from amb.errors import AmbError, ConfigError
from amb.stack import kafka, maven, process
from amb.stack import prometheus as prom

__all__ = ["ComponentStatus", "Stack", "UpReport", "private_settings"]

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ComponentStatus:
    """One component's state: ``running``, ``unhealthy`` (process alive, not answering),
    ``stopped`` or ``not installed``."""

    name: str
    state: str
    pid: int | None
    address: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("running", "not installed")


@dataclass
class UpReport:
    """What `up` did, with timings the benchmark reports."""

    kafka_pid: int = 0
    kafka_already_running: bool = False
    kafka_formatted: bool = False
    kafka_ready_s: float = 0.0
    topics_created: list[str] = field(default_factory=list)
    prometheus_pid: int | None = None
    principals: list[str] = field(default_factory=list)
    """Secure mode: the principals whose credential and ACLs `up` (re)applied."""


def _quiet(_: str) -> None:
    pass


def private_settings(data_dir: Path | str, **overrides: Any) -> Settings:
    """Settings for a private stack (tests, benchmarks): every port free right now, data under
    ``data_dir``. Only the jar cache and the Kafka version come from the environment, so a
    developer's other AMB_* variables cannot leak in; ``overrides`` win over everything."""
    ambient = config.load()
    (kafka_port, controller, prom_port, publisher, worker, sink, serve, web) = process.free_ports(8)
    values: dict[str, Any] = dict(
        data_dir=Path(data_dir), cache_dir=ambient.cache_dir, kafka_version=ambient.kafka_version,
        kafka_host="127.0.0.1", kafka_port=kafka_port, kafka_controller_port=controller,
        prometheus_port=prom_port, publisher_metrics_port=publisher, worker_metrics_port=worker,
        sink_metrics_port=sink, serve_port=serve, worker_web_port=web,
    )
    values.update(overrides)
    return config.load({}, **values)


class Stack:
    """Start, inspect and stop the local stack described by ``settings``."""

    def __init__(self, settings: Settings, *, prometheus: bool = True, echo: Echo = _quiet,
                 die_with_parent: bool = False, secure: bool | None = None) -> None:
        """``die_with_parent``: processes this object starts get SIGTERM when this Python process
        dies (test sessions, benchmarks); off for `amb stack up`, whose processes outlive it.
        ``secure``: start the broker with SASL/SCRAM and ACLs (None: AMB_KAFKA_SECURE)."""
        self.settings = settings
        self.secure = security.is_secure(settings) if secure is None else secure
        self.with_prometheus = prometheus
        self.die_with_parent = die_with_parent
        self.echo = echo
        self.kafka_paths = kafka.Paths(settings)
        self.prom_paths = prom.Paths(settings)

    # ------------------------------------------------------------------------------------
    def install(self) -> maven.KafkaDist:
        """Jars from Maven Central, then the JVM class-data archive; both cached, both once."""
        dist = maven.install(self.settings, echo=self.echo)
        kafka.ensure_cds(dist, self.settings, echo=self.echo)
        return dist

    def kafka_pid(self) -> int | None:
        return process.owned_pid(self.kafka_paths.pid, self.kafka_paths.marker)

    def prometheus_pid(self) -> int | None:
        return process.owned_pid(self.prom_paths.pid, self.prom_paths.marker)

    @property
    def kafka_address(self) -> str:
        return f"{kafka.advertised_host(self.settings.kafka_host)}:{self.settings.kafka_port}"

    def admin_config(self) -> dict[str, str]:
        """confluent-kafka properties to act as the stack's admin ({} when the broker is not secure)."""
        secure = kafka.configured_secure(self.kafka_paths) if self.kafka_pid() is not None else self.secure
        return security.client_config(self.settings, security.ADMIN, secure=secure)

    def _admin_password_for_start(self) -> str | None:
        """The admin password a broker about to start is configured with (None: not secure)."""
        paths = self.kafka_paths
        if not self.secure:
            if kafka.formatted_secure(paths):
                self.echo(f"note: the Kafka data in {paths.data} was set up for --secure; starting without "
                          "authentication (`amb stack up --secure` turns it back on)")
            return None
        if kafka.formatted(paths) and not kafka.formatted_secure(paths):
            raise ConfigError(
                f"the Kafka data in {paths.data} was formatted without --secure, and the admin credential can "
                "only be added when storage is formatted: run `amb stack down --purge` (deletes the local "
                "broker's data), then `amb stack up --secure`")
        store = security.CredentialStore.of(self.settings)
        if kafka.formatted(paths):
            password = store.get(security.ADMIN)
            if password is None:
                raise ConfigError(
                    f"the Kafka data in {paths.data} has an admin credential that is not in {store.path}: run "
                    "`amb stack down --purge` (deletes the local broker's data), then `amb stack up --secure`")
            return password
        return store.ensure(security.ADMIN)[0]

    # ------------------------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> UpReport:
        """Start whatever is not running yet; idempotent. Raises AmbError/ConfigError (one line)."""
        s = self.settings
        report = UpReport()
        maven.require_tool("java", maven.JAVA_HINT)
        dist = self.install()
        with process.file_lock(s.run_dir / "stack.lock"):
            kafka_pid = self.kafka_pid()
            prom_exe = prom.binary() if self.with_prometheus else None
            prom_pid = self.prometheus_pid() if prom_exe else None
            self._check_ports(kafka_pid is None, prom_exe is not None and prom_pid is None)

            if kafka_pid is not None:
                if kafka.configured_secure(self.kafka_paths) != self.secure:
                    now, asked = ("with", "without") if not self.secure else ("without", "with")
                    raise ConfigError(f"kafka is already running {now} --secure (pid {kafka_pid}); to start it "
                                      f"{asked}, run `amb stack down` first")
                report.kafka_already_running = True
                report.kafka_ready_s = kafka.wait_ready(s, kafka_pid, self.kafka_paths, timeout, self.admin_config())
                self.echo(f"kafka {dist.version}: already running on {self.kafka_address} (pid {kafka_pid})")
            else:
                admin_password = self._admin_password_for_start()
                paths = kafka.write_config(s, admin_password)
                report.kafka_formatted = kafka.format_storage(
                    dist, s, paths, security.salted_scram(admin_password) if admin_password else None)
                started = time.monotonic()
                kafka_pid = kafka.start(dist, s, paths, die_with_parent=self.die_with_parent)
                try:
                    kafka.wait_ready(s, kafka_pid, paths, timeout, self.admin_config())
                except AmbError:
                    process.terminate(kafka_pid, timeout=10)
                    paths.pid.unlink(missing_ok=True)
                    raise
                report.kafka_ready_s = time.monotonic() - started
                self.echo(f"kafka {dist.version}: running on {self.kafka_address} (pid {kafka_pid}, "
                          f"ready in {report.kafka_ready_s:.1f} s; log {paths.log})")
            report.kafka_pid = kafka_pid

            specs = topics.project_topics(s)
            if self.secure:
                report.topics_created = topics.ensure_topics(self.kafka_address, specs, self.admin_config())
            else:
                report.topics_created = topics.ensure_topics(self.kafka_address, specs)
            self.echo(f"topics: {len(specs)} ready ({len(report.topics_created)} created): "
                      f"{s.topic('events.<ODS>')} x{len(specs) - 2}, {topics.dlq_topic(s)}, "
                      f"{topics.incident_facts_topic(s)}")
            if s.bootstrap_servers and s.bootstrap_servers != self.kafka_address:
                self.echo(f"note: AMB_BOOTSTRAP_SERVERS={s.bootstrap_servers} points clients at another cluster")
            if self.secure:
                self._security_up(report)

            report.prometheus_pid = self._prometheus_up(prom_exe, prom_pid)
        return report

    def _security_up(self, report: UpReport) -> None:
        rows = security.provision_stored(self.settings, bootstrap=self.kafka_address)
        report.principals = [r[0] for r in rows]
        store = security.credentials_path(self.settings)
        self.echo(f"security: SASL/SCRAM-SHA-512 and ACLs on {self.kafka_address}; admin is the super user; "
                  f"principals: {', '.join(report.principals)} (credentials in {store})")
        new = [r[0] for r in rows if r[1]]
        if new:
            self.echo(f"security: created credentials for {', '.join(new)}; add a trust with `amb trust add <ODS>`")

    def _check_ports(self, kafka_starts: bool, prometheus_starts: bool) -> None:
        s = self.settings
        checks: list[tuple[str, str, int]] = []
        if kafka_starts:
            checks += [("AMB_KAFKA_PORT", s.kafka_host, s.kafka_port),
                       ("AMB_KAFKA_CONTROLLER_PORT", s.kafka_host, s.kafka_controller_port)]
            if s.kafka_port == s.kafka_controller_port:
                raise ConfigError(f"AMB_KAFKA_PORT and AMB_KAFKA_CONTROLLER_PORT are both {s.kafka_port}: "
                                  "give the controller its own port")
        if prometheus_starts:
            checks.append(("AMB_PROMETHEUS_PORT", "127.0.0.1", s.prometheus_port))
        for env, host, port in checks:
            if not process.port_free(host, port):
                raise ConfigError(f"port {port} on {host} is already in use by another process: "
                                  f"stop it or set {env} to a free port")

    def _prometheus_up(self, exe: str | None, pid: int | None) -> int | None:
        s = self.settings
        if not self.with_prometheus:
            return None
        if exe is None:
            self.echo(f"prometheus not installed: skipped ({prom.INSTALL_HINT})")
            return None
        url = f"http://127.0.0.1:{s.prometheus_port}"
        if pid is not None:
            self.echo(f"prometheus: already running on {url} (pid {pid})")
            return pid
        paths = prom.write_config(s)
        pid = prom.start(s, paths, exe, die_with_parent=self.die_with_parent)
        deadline = time.monotonic() + 30
        while not prom.ready(s, timeout=0.5):
            if not process.pid_alive(pid) or time.monotonic() > deadline:
                last = process.tail(paths.log, 1)
                process.terminate(pid, timeout=5)
                paths.pid.unlink(missing_ok=True)
                raise AmbError(f"prometheus did not start: {last[0].strip() if last else 'no output'} "
                               f"(log: {paths.log})")
            time.sleep(0.1)
        self.echo(f"prometheus: running on {url} (pid {pid}; scraping "
                  f"{', '.join(prom.scrape_targets(s)) or 'itself only'})")
        return pid

    # ------------------------------------------------------------------------------------
    def down(self, purge: bool = False, timeout: float = 30.0) -> list[str]:
        """Stop what `up` started (Prometheus first, then Kafka). ``purge`` also deletes their data.

        Returns one line per component, e.g. ``kafka: stopped (pid 123)``.
        """
        lines = []
        with process.file_lock(self.settings.run_dir / "stack.lock"):
            for name, paths, pid in (("prometheus", self.prom_paths, self.prometheus_pid()),
                                     ("kafka", self.kafka_paths, self.kafka_pid())):
                if pid is None:
                    lines.append(f"{name}: not running")
                else:
                    killed = process.terminate(pid, timeout=timeout)
                    lines.append(f"{name}: stopped (pid {pid}{', killed after timeout' if killed else ''})")
                paths.pid.unlink(missing_ok=True)
                if purge and paths.data.exists():
                    shutil.rmtree(paths.data)
                    lines.append(f"{name}: deleted {paths.data}")
        for line in lines:
            self.echo(line)
        return lines

    # ------------------------------------------------------------------------------------
    def status(self) -> list[ComponentStatus]:
        s = self.settings
        out = []
        pid = self.kafka_pid()
        addr = self.kafka_address
        if pid is not None:
            secure = kafka.configured_secure(self.kafka_paths)
            try:
                conf = self.admin_config()
            except AmbError as exc:  # e.g. the credentials store was removed under a running broker
                out.append(ComponentStatus("kafka", "unhealthy", pid, addr, str(exc)))
                conf = None
            if conf is not None:
                n = kafka.probe(addr, 3.0, conf)
                mode = ", SASL/SCRAM + ACLs" if secure else ""
                out.append(ComponentStatus("kafka", "running" if n is not None else "unhealthy", pid, addr,
                                           f"{s.kafka_version}, {n} topics{mode}" if n is not None
                                           else f"not answering; see {self.kafka_paths.log}"))
        else:
            busy = process.port_open(s.kafka_host, s.kafka_port)
            out.append(ComponentStatus("kafka", "stopped", None, addr,
                                       "port in use by another process" if busy else ""))
        url = f"http://127.0.0.1:{s.prometheus_port}"
        if not self.with_prometheus:
            pass
        elif prom.binary() is None and self.prometheus_pid() is None:
            out.append(ComponentStatus("prometheus", "not installed", None, url, prom.INSTALL_HINT))
        else:
            pid = self.prometheus_pid()
            if pid is None:
                out.append(ComponentStatus("prometheus", "stopped", None, url))
            else:
                healthy = prom.ready(s)
                out.append(ComponentStatus("prometheus", "running" if healthy else "unhealthy", pid, url,
                                           "" if healthy else f"not ready; see {self.prom_paths.log}"))
        return out

    def logs(self, component: str) -> list[Path]:
        if component == "kafka":
            return kafka.log_paths(self.settings)
        if component == "prometheus":
            return [self.prom_paths.log]
        raise AmbError(f"unknown component {component!r}: kafka or prometheus")
