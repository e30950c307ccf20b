"""Broker security: SASL/SCRAM-SHA-512 per trust and per service, ACLs, `amb trust`, on a real broker.

The module starts its own secure broker (``Stack(secure=True)``) on free ports in a temporary
directory, not the session's plaintext one, and stops it at the end. The tests before it need no
broker: the access policy table, the credentials store and the generated broker settings.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from amb import security, topics
from amb.commands import stack as stack_cmd
from amb.commands import trust as trust_cmd
from amb.config import Settings
from amb.errors import AmbError, ConfigError
from amb.publisher import TrustPublisher
from amb.stack import Stack, kafka, private_settings
from domain.events import TRUSTS, Event, EventType
from domain.validation import parse_record

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # seconds: the bound on every wait for the broker below


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return private_settings(tmp_path / "data")


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


# --- the policy and the store (no broker) -----------------------------------------------------------

def test_a_trust_may_write_only_its_own_events_topic_and_read_nothing(settings: Settings) -> None:
    for ods in TRUSTS:
        grants = security.grants(settings, security.trust_principal(ods))
        topics_ = {(g.name, g.pattern): set(g.operations) for g in grants if g.kind == "topic"}
        assert topics_ == {(topics.events_topic(settings, ods), "literal"): {"WRITE", "DESCRIBE"}}
        assert not any(g.kind == "group" for g in grants), "no group: a trust never consumes"
        assert all("READ" not in g.operations for g in grants)
        assert {g.name: g.operations for g in grants if g.kind == "cluster"} == {"kafka-cluster": ("IDEMPOTENT_WRITE",)}


def test_services_get_least_privilege(settings: Settings) -> None:
    def ops(principal: str) -> dict[tuple[str, str, str], set[str]]:
        return {(g.kind, g.name, g.pattern): set(g.operations) for g in security.grants(settings, principal)}

    worker, sink, serve = ops("worker"), ops("sink"), ops("serve")
    assert worker[("topic", "amb.events.", "prefixed")] == {"READ", "DESCRIBE"}
    assert "WRITE" not in worker[("topic", "amb.events.", "prefixed")], "the worker cannot forge trust events"
    assert worker[("group", "amb-worker", "prefixed")] >= {"READ"}
    assert worker[("topic", "amb-worker", "prefixed")] >= {"CREATE", "READ", "WRITE"}  # Faust changelogs
    assert "WRITE" in worker[("topic", "amb.dlq", "literal")] and "WRITE" in worker[("topic", "amb.incident-facts", "literal")]
    assert sink[("topic", "amb.incident-facts", "literal")] == {"READ", "DESCRIBE"}
    assert sink[("group", "amb-sink", "prefixed")] >= {"READ"}
    assert "WRITE" in sink[("topic", "amb.dlq", "literal")]
    # The sink archives raw events and dead letters into the store: it reads them, never writes them.
    assert sink[("topic", "amb.events.", "prefixed")] == {"READ", "DESCRIBE"}
    assert "READ" in sink[("topic", "amb.dlq", "literal")]
    assert sink[("group", "amb-raw-archive", "literal")] >= {"READ"}
    assert not any("WRITE" in v for k, v in sink.items() if k[1].startswith("amb.events"))
    assert all("WRITE" not in v and "CREATE" not in v for v in serve.values()), "serve only reads"
    assert security.grants(settings, security.ADMIN) == [], "admin is a super user, not an ACL holder"
    with pytest.raises(AmbError, match="unknown principal"):
        security.grants(settings, "trust-XXX")
    # The prefix follows AMB_TOPIC_PREFIX.
    other = private_settings(settings.data_dir, topic_prefix="ambtest")
    assert {g.name for g in security.grants(other, "worker")} >= {"ambtest.events.", "ambtest-worker", "ambtest.dlq"}


def test_credentials_store_is_private_and_survives_concurrent_writers(tmp_path: Path) -> None:
    store = security.CredentialStore(tmp_path / "sec" / "credentials.json")
    pw, created = store.ensure("worker")
    assert created and len(pw) >= security.MIN_PASSWORD
    assert store.ensure("worker") == (pw, False)
    store.set("trust-RX7", "x" * 20)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.principals() == ["trust-RX7", "worker"]
    assert json.loads(store.path.read_text())["mechanism"] == "SCRAM-SHA-512"
    assert store.remove("trust-RX7") and not store.remove("trust-RX7")
    with pytest.raises(AmbError, match="unknown principal"):
        store.set("root", "y" * 20)
    # Many processes adding principals at once lose nothing (locked read-modify-write).
    code = ("import sys; from pathlib import Path; from amb.security import CredentialStore; "
            "CredentialStore(Path(sys.argv[1])).set(sys.argv[2], 'p' * 20)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path), f"trust-{ods}"]) for ods in TRUSTS]
    assert all(p.wait(60) == 0 for p in procs)
    assert store.principals() == sorted(["worker", *(f"trust-{ods}" for ods in TRUSTS)])
    store.path.chmod(0o644)
    with pytest.raises(AmbError, match="chmod 600"):
        store.get("worker")


def test_client_config_is_empty_when_off_and_sasl_when_on(settings: Settings) -> None:
    assert security.client_config(settings, "worker") == {}, "AMB_KAFKA_SECURE unset: plaintext as before"
    with pytest.raises(ConfigError, match=r"amb trust add RX7"):
        security.client_config(settings, "trust-RX7", secure=True)
    with pytest.raises(ConfigError, match=r"amb stack up --secure"):
        security.client_config(settings, "sink", secure=True)
    security.CredentialStore.of(settings).set("trust-RX7", "s" * 24)
    assert security.client_config(settings, "trust-RX7", secure=True) == {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "trust-RX7", "sasl.password": "s" * 24}
    assert security.faust_credentials(settings, "worker") is None
    with pytest.raises(AmbError, match="unknown trust"):
        security.trust_principal("XYZ")
    with pytest.raises(AmbError, match="too short"):
        security.check_password("short")


def test_secure_broker_properties(settings: Settings) -> None:
    plain = props(kafka.server_properties(settings))
    assert "sasl.enabled.mechanisms" not in plain and "authorizer.class.name" not in plain
    p = props(kafka.server_properties(settings, admin_password="pw-" + "a" * 29))
    assert p["listeners"] == (f"SASL_PLAINTEXT://127.0.0.1:{settings.kafka_port},"
                              f"CONTROLLER://127.0.0.1:{settings.kafka_controller_port}")
    assert p["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert p["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert p["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert p["super.users"] == "User:admin", "no anonymous super user"
    assert p["allow.everyone.if.no.acl.found"] == "false"
    assert "PLAINTEXT:PLAINTEXT" not in p["listener.security.protocol.map"]
    # The admin credential goes to `kafka-storage format` salted, never as the clear password.
    value = security.salted_scram("secret-password-1234", salt=b"0123456789abcdef")
    assert value.startswith('SCRAM-SHA-512=[name=admin,iterations=8192,salt="MDEyMzQ1Njc4OWFiY2RlZg=="')
    assert "secret-password-1234" not in value
    paths = kafka.write_config(settings, admin_password="pw-" + "a" * 29)
    assert stat.S_IMODE(paths.properties.stat().st_mode) == 0o600


# --- on a real secure broker ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(private_settings(tmp_path_factory.mktemp("amb-secure")), prometheus=False,
                  die_with_parent=True, secure=True)
    try:
        stack.up(timeout=120)
        yield stack
    finally:
        stack.down(timeout=15)


@pytest.fixture(scope="module")
def ssettings(secure_stack: Stack) -> Settings:
    return secure_stack.settings


@pytest.fixture(scope="module")
def rx7(ssettings: Settings) -> dict[str, str]:
    """trust-RX7's client properties (the trust added through the same API `amb trust add` uses)."""
    principal, password = security.add_trust(ssettings, "RX7")
    assert principal == "trust-RX7" and password is not None
    return security.client_config(ssettings, principal, secure=True)


def example_events(n: int) -> list[Event]:
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        for t in EventType:
            e = parse_record(json.loads((ROOT / "schemas" / "examples" / f"{t.value}.json").read_text()), now_ms=now)
            assert isinstance(e, Event) and e.trust == "RX7"
            out.append(_fresh(e, i))
    return out


def _fresh(e: Event, i: int) -> Event:
    from dataclasses import replace

    return replace(e, event_id=str(uuid.uuid4()), incident_id=f"{e.incident_id}-{i}",
                   call_id=f"{e.incident_id}-{i}" if e.call_id is not None else None)


def produce(bootstrap: str, conf: dict[str, str], topic: str, n: int = 3) -> list[KafkaError | None]:
    """Send ``n`` messages and return each delivery's error (None = acknowledged); bounded by WAIT."""
    results: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 0,
                         "message.timeout.ms": int(WAIT * 1000), **conf})
    for i in range(n):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode(), on_delivery=lambda err, _m: results.append(err))
    assert producer.flush(WAIT + 5) == 0
    return results


def first_error_or_messages(conf: dict[str, Any], *, subscribe: list[str] | None = None,
                            assign: list[TopicPartition] | None = None,
                            done: Callable[[list[Any]], bool] = bool) -> tuple[list[Any], KafkaError | None]:
    """Poll until ``done(messages)`` or the first error, at most WAIT seconds."""
    consumer = Consumer({"auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0, **conf})
    if subscribe:
        consumer.subscribe(subscribe)
    if assign:
        consumer.assign(assign)
    got: list[Any] = []
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline and not done(got):
            msg = consumer.poll(0.25)
            if msg is None:
                continue
            if msg.error() is not None:
                return got, msg.error()
            got.append(msg)
    finally:
        consumer.close()
    return got, None


@pytest.mark.kafka
def test_a_trust_publishes_to_its_own_topic(ssettings: Settings, rx7: dict[str, str]) -> None:
    events = example_events(5)
    with TrustPublisher(ssettings, "RX7", producer_config=rx7, check_broker=False) as pub:
        assert pub.publish_events(events) == len(events)
        pub.flush(WAIT)
    assert pub.stats.failed == 0 and pub.stats.delivered == len(events), pub.stats.failures


@pytest.mark.kafka
def test_a_trust_cannot_publish_to_another_trusts_topic(ssettings: Settings, rx7: dict[str, str]) -> None:
    events = example_events(1)
    rx6 = topics.events_topic(ssettings, "RX6")
    with TrustPublisher(ssettings, "RX7", topic=rx6, producer_config=rx7, check_broker=False) as pub:
        pub.publish_events(events)
        pub.flush(WAIT)
    assert pub.stats.delivered == 0 and pub.stats.failed == len(events)
    assert list(pub.stats.failures) == ["Broker: Topic authorization failed"]
    # The same for any topic that is not its own, existing or not (no auto-creation either).
    for topic in (topics.dlq_topic(ssettings), topics.incident_facts_topic(ssettings), "amb.events.NEW"):
        errors = produce(ssettings.bootstrap, rx7, topic, n=2)
        assert [e.code() if e else None for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 2, topic


@pytest.mark.kafka
def test_a_trust_cannot_consume_any_topic_not_even_its_own(ssettings: Settings, rx7: dict[str, str]) -> None:
    own = topics.events_topic(ssettings, "RX7")
    assert produce(ssettings.bootstrap, security.client_config(ssettings, "admin", secure=True), own) == [None] * 3
    group = f"amb-steal-{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": ssettings.bootstrap, "group.id": group, **rx7}
    got, err = first_error_or_messages(conf, subscribe=[own])
    assert got == [] and err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # Even with a consumer group allowed (an admin mistake), the topic itself refuses READ.
    admin = security.SecurityAdmin(ssettings, admin_password=security.stored_admin_password(ssettings))
    admin._wait(admin.client.create_acls([security._binding("trust-RX7", ("group", group, "literal", "READ"))]),
                "test ACL")
    try:
        got, err = first_error_or_messages(conf, assign=[TopicPartition(own, p, 0) for p in range(4)])
        assert got == [] and err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    finally:
        # Re-applying the policy removes what is not in it.
        assert admin.apply_acls("trust-RX7") == (0, 1)


@pytest.mark.kafka
def test_a_wrong_password_fails_at_once_and_says_so(ssettings: Settings, rx7: dict[str, str]) -> None:
    bad = {**rx7, "sasl.password": "not-the-password-at-all"}
    started = time.monotonic()
    with pytest.raises(AmbError) as info:
        kafka.require_broker(ssettings.bootstrap, timeout=WAIT, config=bad)
    assert time.monotonic() - started < WAIT, "an authentication failure is not waited out"
    message = str(info.value)
    assert "SASL authentication failed" in message and "trust-RX7" in message and "invalid credentials" in message
    assert "\n" not in message and "not-the-password" not in message
    # A client without credentials is told the broker may need them, instead of "start the stack".
    with pytest.raises(AmbError, match="AMB_KAFKA_SECURE"):
        kafka.require_broker(ssettings.bootstrap, timeout=2)
    kafka.require_broker(ssettings.bootstrap, timeout=WAIT, config=rx7)  # the right password logs in


@pytest.mark.kafka
def test_the_worker_reads_every_trusts_events_but_cannot_write_them(ssettings: Settings, rx7: dict[str, str]) -> None:
    admin_conf = security.client_config(ssettings, "admin", secure=True)
    rx6 = topics.events_topic(ssettings, "RX6")
    assert produce(ssettings.bootstrap, rx7, topics.events_topic(ssettings, "RX7"), n=2) == [None, None]
    assert produce(ssettings.bootstrap, admin_conf, rx6, n=2) == [None, None]
    worker = security.client_config(ssettings, "worker", secure=True)
    conf = {"bootstrap.servers": ssettings.bootstrap, "group.id": f"amb-worker-{uuid.uuid4().hex[:8]}", **worker}
    both = {rx6, topics.events_topic(ssettings, "RX7")}
    got, err = first_error_or_messages(conf, subscribe=topics.events_topics(ssettings),
                                       done=lambda msgs: {m.topic() for m in msgs} >= both)
    assert err is None and {m.topic() for m in got} >= both
    assert [e.code() if e else None for e in produce(ssettings.bootstrap, worker, rx6, n=1)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED]
    assert produce(ssettings.bootstrap, worker, topics.incident_facts_topic(ssettings), n=1) == [None]
    sink = security.client_config(ssettings, "sink", secure=True)
    # The sink archives raw events into the store: it reads them (its own group), never writes them.
    got, err = first_error_or_messages({"bootstrap.servers": ssettings.bootstrap, "group.id": "amb-raw-archive", **sink},
                                       subscribe=[rx6], done=lambda msgs: len(msgs) >= 2)
    assert err is None and {m.topic() for m in got} == {rx6}
    assert [e.code() if e else None for e in produce(ssettings.bootstrap, sink, rx6, n=1)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED]
    got, err = first_error_or_messages({"bootstrap.servers": ssettings.bootstrap, "group.id": "not-a-sink-group", **sink},
                                       subscribe=[rx6])
    assert got == [] and err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED


FAUST_APP = textwrap.dedent('''
    """A minimal Faust app as the worker principal: group amb-worker, a changelogged table, facts out."""
    import os, sys
    from pathlib import Path
    import faust
    from amb import config, security

    settings = config.load({}, data_dir=Path(sys.argv[1]), kafka_port=int(sys.argv[2]))
    app = faust.App("amb-worker", broker=f"kafka://127.0.0.1:{settings.kafka_port}",
                    broker_credentials=security.faust_credentials(settings, "worker", secure=True),
                    store="memory://", datadir=sys.argv[3], web_enabled=False, topic_partitions=4,
                    consumer_auto_offset_reset="earliest")
    source = app.topic("amb.events.RX7", key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    facts = app.topic("amb.incident-facts", key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    seen = app.Table("security-test-seen", default=int, partitions=4)

    @app.agent(source)
    async def count(stream):
        async for key, value in stream.items():
            seen[key] += 1
            await facts.send(key=key, value=value)
            print("FAUST-CONSUMED", flush=True)
            os._exit(0)

    if __name__ == "__main__":
        sys.argv[1:] = ["worker", "-l", "warn", "--without-web"]
        app.main()
''')


@pytest.mark.kafka
def test_faust_runs_as_the_worker_principal(ssettings: Settings, rx7: dict[str, str], tmp_path: Path) -> None:
    assert produce(ssettings.bootstrap, rx7, topics.events_topic(ssettings, "RX7"), n=1) == [None]
    script = tmp_path / "faust_app.py"
    script.write_text(FAUST_APP)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(ssettings.data_dir), str(ssettings.kafka_port),
                           str(tmp_path / "faust")], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAUST-CONSUMED" in proc.stdout + proc.stderr
    names = set(Consumer({"bootstrap.servers": ssettings.bootstrap, "group.id": "x", "log_level": 0,
                          **security.client_config(ssettings, "admin", secure=True)}).list_topics(timeout=WAIT).topics)
    assert "amb-worker-security-test-seen-changelog" in names, "Faust created its changelog under its prefix"


def cli_env(settings: Settings) -> dict[str, str]:
    env = {"AMB_DATA_DIR": str(settings.data_dir), "AMB_CACHE_DIR": str(settings.cache_dir),
           "AMB_KAFKA_VERSION": settings.kafka_version}
    for field in ("kafka_port", "kafka_controller_port", "prometheus_port", "publisher_metrics_port",
                  "worker_metrics_port", "sink_metrics_port", "serve_port"):
        env["AMB_" + field.upper()] = str(getattr(settings, field))
    return env


@pytest.mark.kafka
def test_amb_trust_add_list_remove(ssettings: Settings) -> None:
    runner = CliRunner()  # click 8.2+: result.stdout and result.stderr kept apart
    env = cli_env(ssettings)
    added = runner.invoke(trust_cmd.command, ["add", "rx8"], env=env)
    assert added.exit_code == 0, added.output
    password = added.stdout.strip()
    assert "\n" not in password and len(password) >= security.MIN_PASSWORD, "only the password is on stdout"
    assert security.CredentialStore.of(ssettings).get("trust-RX8") == password
    conf = security.client_config(ssettings, "trust-RX8", secure=True)
    assert produce(ssettings.bootstrap, conf, topics.events_topic(ssettings, "RX8"), n=1) == [None]

    again = runner.invoke(trust_cmd.command, ["add", "RX8"], env=env)
    assert again.exit_code == 0 and again.stdout == "" and "already exists" in again.stderr

    chosen = "chosen-by-the-trust-" + uuid.uuid4().hex
    given = runner.invoke(trust_cmd.command, ["add", "RX9", "--password-stdin"], input=chosen + "\n", env=env)
    assert given.exit_code == 0 and given.stdout == ""
    assert security.CredentialStore.of(ssettings).get("trust-RX9") == chosen
    kafka.require_broker(ssettings.bootstrap, timeout=WAIT,
                         config=security.client_config(ssettings, "trust-RX9", secure=True))

    listed = runner.invoke(trust_cmd.command, ["list"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["admin"][1] == "super"
    assert rows["trust-RX8"][1:5] == ["trust", "yes", "yes", "3"]
    assert {"worker", "sink", "serve", "trust-RX9"} <= set(rows)

    removed = runner.invoke(trust_cmd.command, ["remove", "RX8"], env=env)
    assert removed.exit_code == 0, removed.output
    assert "3 ACLs deleted" in removed.stdout and "SCRAM credential deleted" in removed.stdout
    assert security.CredentialStore.of(ssettings).get("trust-RX8") is None
    with pytest.raises(AmbError, match="SASL authentication failed"):
        kafka.require_broker(ssettings.bootstrap, timeout=WAIT, config=conf)
    bad = runner.invoke(trust_cmd.command, ["add", "XYZ"], env=env)
    assert bad.exit_code != 0 and "unknown trust" in str(bad.exception)


@pytest.mark.kafka
def test_stack_up_secure_is_idempotent_and_refuses_to_switch_mode(secure_stack: Stack) -> None:
    runner = CliRunner()
    env = cli_env(secure_stack.settings)
    again = runner.invoke(stack_cmd.command, ["up", "--secure", "--no-prometheus"], env=env)
    assert again.exit_code == 0, again.output
    assert "already running" in again.output and "SASL/SCRAM-SHA-512" in again.output
    plain = runner.invoke(stack_cmd.command, ["up", "--no-prometheus"], env=env)
    assert isinstance(plain.exception, ConfigError) and "already running with --secure" in str(plain.exception)
    status = runner.invoke(stack_cmd.command, ["status"], env=env)
    assert "running" in status.output and "SASL/SCRAM" in status.output
    assert {c.name: c.state for c in secure_stack.status()} == {"kafka": "running"}
