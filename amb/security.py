"""Broker security: SASL/SCRAM-SHA-512 principals, their ACLs, and the client settings to use them.

One principal per trust (``trust-RX7``) and one per platform service (``worker``, ``sink``,
``serve``), plus ``admin``, the super user the stack itself acts as. Who may do what is one table,
:func:`grants`; docs/security.md prints it for people. Least privilege, deny by default
(``allow.everyone.if.no.acl.found=false``): a trust may only *write* its own events topic; it cannot
read anything, not even what it wrote.

Passwords live in one JSON credentials store, mode 0600 in a 0700 directory
(``AMB_DATA_DIR/security/credentials.json``), like an ssh key: a store others can read is refused.
The local stack generates the admin and service passwords (`amb stack up --secure`); `amb trust
add RX7` generates a trust's (printed once) or takes one on stdin.

Clients pick their credentials up with :func:`client_config` (confluent-kafka properties) or
:func:`faust_credentials` (the worker's Faust app); both return nothing when security is off, so
call sites can always apply them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from amb.config import Settings
from amb.errors import AmbError, ConfigError
from domain.events import TRUSTS

MECHANISM: Final = "SCRAM-SHA-512"
ITERATIONS: Final = 8192
"""SCRAM iterations (Kafka's minimum is 4096): each login costs the client and broker one PBKDF2."""

ADMIN: Final = "admin"
SERVICES: Final = ("worker", "sink", "serve")
TRUST_PREFIX: Final = "trust-"
CLUSTER: Final = "kafka-cluster"
MIN_PASSWORD: Final = 16

_STORE_VERSION: Final = 1


# -- principals ---------------------------------------------------------------------------------

def trust_principal(trust: str) -> str:
    """``RX7`` -> ``trust-RX7`` (an unknown ODS code is a one-line error)."""
    if trust not in TRUSTS:
        raise AmbError(f"unknown trust {trust!r}: expected an ambulance trust ODS code ({', '.join(TRUSTS)})")
    return TRUST_PREFIX + trust


def principal_trust(principal: str) -> str | None:
    """``trust-RX7`` -> ``RX7``; None for a service or the admin."""
    if principal.startswith(TRUST_PREFIX) and principal[len(TRUST_PREFIX):] in TRUSTS:
        return principal[len(TRUST_PREFIX):]
    return None


def check_principal(principal: str) -> str:
    if principal in (ADMIN, *SERVICES) or principal_trust(principal) is not None:
        return principal
    raise AmbError(f"unknown principal {principal!r}: expected {ADMIN}, {', '.join(SERVICES)} or "
                   f"{TRUST_PREFIX}<ODS> (e.g. {TRUST_PREFIX}RX7)")


# -- settings (AMB_KAFKA_SECURE etc.: read with defaults until amb.config has them) ----------------

def is_secure(settings: Settings) -> bool:
    """Whether clients must authenticate (AMB_KAFKA_SECURE)."""
    return bool(getattr(settings, "kafka_secure", False))


def credentials_path(settings: Settings) -> Path:
    """The credentials store: AMB_KAFKA_CREDENTIALS, default AMB_DATA_DIR/security/credentials.json."""
    path = getattr(settings, "kafka_credentials", None)
    return Path(path) if path else settings.data_dir / "security" / "credentials.json"


def _ssl_ca(settings: Settings) -> str:
    """A CA bundle (AMB_KAFKA_SSL_CA) means the listener is SASL_SSL; none means SASL_PLAINTEXT."""
    return str(getattr(settings, "kafka_ssl_ca", "") or "")


# -- the credentials store ------------------------------------------------------------------------

def new_password() -> str:
    """192 random bits, URL-safe (no quote or backslash: it may go into a JAAS line)."""
    return secrets.token_urlsafe(24)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AmbError(f"password too short: at least {MIN_PASSWORD} characters (a generated one has 32)")
    if any(c.isspace() or not c.isprintable() for c in password):
        raise AmbError("password must be printable characters without spaces")
    return password


class CredentialStore:
    """Principal -> password, in one JSON file that only its owner can read (0600, directory 0700).

    Every change is a locked read-modify-write with an atomic rename, so two commands never lose
    each other's updates and a crash never leaves half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, settings: Settings) -> CredentialStore:
        return cls(credentials_path(settings))

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AmbError(f"credentials store {self.path} is accessible to other users "
                           f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 600 {self.path}`")
        try:
            data = json.loads(self.path.read_text())
            principals = data["principals"]
            if not isinstance(principals, dict):
                raise TypeError("principals is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AmbError(f"credentials store {self.path} is unreadable: {exc}") from None
        return principals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from amb.stack.process import file_lock

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            yield

    def _write(self, principals: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"version": _STORE_VERSION, "mechanism": MECHANISM, "principals": dict(sorted(principals.items()))}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never widened
            os.write(fd, (json.dumps(data, indent=1) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)

    def get(self, principal: str) -> str | None:
        entry = self._read().get(principal)
        return str(entry["password"]) if entry else None

    def principals(self) -> list[str]:
        return sorted(self._read())

    def set(self, principal: str, password: str) -> None:
        check_principal(principal)
        with self._locked():
            principals = self._read()
            principals[principal] = {"password": password, "mechanism": MECHANISM,
                                     "created_ms": int(time.time() * 1000)}
            self._write(principals)

    def ensure(self, principal: str) -> tuple[str, bool]:
        """The principal's password, generated and stored if it has none; (password, created)."""
        with self._locked():
            principals = self._read()
            if principal in principals:
                return str(principals[principal]["password"]), False
        password = new_password()
        self.set(principal, password)
        return password, True

    def remove(self, principal: str) -> bool:
        with self._locked():
            principals = self._read()
            if principals.pop(principal, None) is None:
                return False
            self._write(principals)
            return True


# -- client configuration ---------------------------------------------------------------------------

def client_config(settings: Settings, principal: str, *, secure: bool | None = None,
                  password: str | None = None) -> dict[str, str]:
    """The extra confluent-kafka properties for ``principal`` ({} when security is off).

    ``security.protocol`` is SASL_SSL when AMB_KAFKA_SSL_CA names a CA bundle, else SASL_PLAINTEXT;
    the password comes from the credentials store unless given.
    """
    if not (is_secure(settings) if secure is None else secure):
        return {}
    check_principal(principal)
    if password is None:
        store = CredentialStore.of(settings)
        password = store.get(principal)
        if password is None:
            how = ("`amb trust add " + str(principal_trust(principal)) + "`" if principal_trust(principal)
                   else "`amb stack up --secure`")
            raise ConfigError(f"no Kafka credentials for {principal} in {store.path}: create them with {how}, "
                              "or point AMB_KAFKA_CREDENTIALS at the store that has them")
    ca = _ssl_ca(settings)
    conf = {"security.protocol": "SASL_SSL" if ca else "SASL_PLAINTEXT", "sasl.mechanisms": MECHANISM,
            "sasl.username": principal, "sasl.password": password}
    if ca:
        conf["ssl.ca.location"] = ca
    return conf


def faust_credentials(settings: Settings, principal: str = "worker", *, secure: bool | None = None) -> Any:
    """``broker_credentials`` for a Faust App (None when security is off): SCRAM-SHA-512 over
    aiokafka, with a TLS context trusting AMB_KAFKA_SSL_CA when it is set."""
    conf = client_config(settings, principal, secure=secure)
    if not conf:
        return None
    import ssl

    import faust

    ctx = ssl.create_default_context(cafile=conf["ssl.ca.location"]) if "ssl.ca.location" in conf else None
    return faust.SASLCredentials(username=conf["sasl.username"], password=conf["sasl.password"],
                                 mechanism=MECHANISM, ssl_context=ctx)


def salted_scram(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """A ``kafka-storage format --add-scram`` value with the salted password instead of the clear one,
    so the admin password never appears in a process's command line."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f'{MECHANISM}=[name={ADMIN},iterations={iterations},salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"]')


# -- ACLs ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    """ALLOW ``operations`` on one resource: ``kind`` topic, group or cluster; ``pattern`` literal or
    prefixed (a prefixed name matches every resource whose name starts with it)."""

    kind: str
    name: str
    pattern: str
    operations: tuple[str, ...]
    why: str = ""


def grants(settings: Settings, principal: str) -> list[Grant]:
    """What ``principal`` may do: the whole access policy (admin is a super user and has no ACLs)."""
    p = settings.topic_prefix
    events, dlq, facts = f"{p}.events.", f"{p}.dlq", f"{p}.incident-facts"
    idempotent = Grant("cluster", CLUSTER, "literal", ("IDEMPOTENT_WRITE",),
                       "idempotent producer (implied by WRITE since Kafka 3.0; explicit for older clusters)")
    trust = principal_trust(principal)
    if trust is not None:
        return [Grant("topic", events + trust, "literal", ("WRITE", "DESCRIBE"), "its own events topic only"),
                idempotent]
    if principal == "worker":
        return [
            Grant("topic", events, "prefixed", ("READ", "DESCRIBE"), "every trust's events, new trusts included"),
            Grant("group", f"{p}-worker", "prefixed", ("READ", "DESCRIBE"), "the Faust app id is its group"),
            Grant("topic", f"{p}-worker", "prefixed", ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"),
                  "Faust's own changelog, repartition and leader topics"),
            Grant("topic", facts, "literal", ("WRITE", "DESCRIBE"), "attributed facts for the sink"),
            Grant("topic", dlq, "literal", ("WRITE", "DESCRIBE"), "refused events with the reason"),
            idempotent,
        ]
    if principal == "sink":
        return [
            Grant("topic", facts, "literal", ("READ", "DESCRIBE"), "the facts it loads"),
            Grant("group", f"{p}-sink", "prefixed", ("READ", "DESCRIBE"), "its consumer group(s)"),
            Grant("topic", dlq, "literal", ("READ", "WRITE", "DESCRIBE"),
                  "facts it cannot load; reads every dead letter into the store"),
            Grant("topic", events, "prefixed", ("READ", "DESCRIBE"), "archives every accepted raw event in the store"),
            Grant("group", f"{p}-raw-archive", "literal", ("READ", "DESCRIBE"), "the raw archive's group"),
            Grant("group", f"{p}-dead-letters", "literal", ("READ", "DESCRIBE"), "the dead-letter archive's group"),
            Grant("group", f"{p}-archive", "prefixed", ("READ", "DESCRIBE"), "`amb archive` (file export)"),
            idempotent,
        ]
    if principal == "serve":
        return [
            Grant("topic", dlq, "literal", ("READ", "DESCRIBE"), "shows refused events to operators; reads, never writes"),
            Grant("group", f"{p}-dlq-reader", "prefixed", ("READ", "DESCRIBE"), "the throwaway groups of amb.dlq"),
        ]
    check_principal(principal)
    return []


_Key = tuple[str, str, str, str]  # kind, name, pattern, operation


def _keys(grant_list: Iterable[Grant]) -> set[_Key]:
    return {(g.kind, g.name, g.pattern, op) for g in grant_list for op in g.operations}


class SecurityAdmin:
    """SCRAM users and ACLs on the cluster, changed as the admin principal. Every call is time-bound."""

    def __init__(self, settings: Settings, *, bootstrap: str | None = None, timeout: float = 30.0,
                 admin_password: str | None = None) -> None:
        from confluent_kafka.admin import AdminClient

        self.settings = settings
        self.bootstrap = bootstrap or settings.bootstrap
        self.timeout = timeout
        conf = client_config(settings, ADMIN, secure=True, password=admin_password)
        self.client = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0, **conf})

    # -- users ---------------------------------------------------------------------------------
    def upsert_user(self, principal: str, password: str) -> None:
        k = _kadmin()
        upsert = k.UserScramCredentialUpsertion(
            principal, k.ScramCredentialInfo(k.ScramMechanism.SCRAM_SHA_512, ITERATIONS), password.encode())
        self._wait(self.client.alter_user_scram_credentials([upsert], request_timeout=self.timeout),
                   f"set the SCRAM credential of {principal}")

    def delete_user(self, principal: str) -> bool:
        """False if it had no credential."""
        from confluent_kafka import KafkaError

        k = _kadmin()
        futures = self.client.alter_user_scram_credentials(
            [k.UserScramCredentialDeletion(principal, k.ScramMechanism.SCRAM_SHA_512)], request_timeout=self.timeout)
        try:
            self._wait(futures, f"delete the SCRAM credential of {principal}")
        except AmbError as exc:
            if KafkaError.RESOURCE_NOT_FOUND in getattr(exc, "codes", ()):
                return False
            raise
        return True

    def users(self) -> list[str]:
        fut = self.client.describe_user_scram_credentials(request_timeout=self.timeout)
        result = self._result(fut, "list SCRAM users")
        return sorted(result)

    # -- ACLs ----------------------------------------------------------------------------------
    def acls(self, principal: str | None = None) -> list[Any]:
        """AclBindings of ``principal`` (every principal's when None)."""
        k = _kadmin()
        flt = k.AclBindingFilter(k.ResourceType.ANY, None, k.ResourcePatternType.ANY,
                                 f"User:{principal}" if principal else None, None,
                                 k.AclOperation.ANY, k.AclPermissionType.ANY)
        return list(self._result(self.client.describe_acls(flt, request_timeout=self.timeout), "describe ACLs"))

    def apply_acls(self, principal: str) -> tuple[int, int]:
        """Make ``principal``'s ACLs exactly :func:`grants`; (created, deleted). Waits until the broker
        enforces them, so a client started right after sees them."""
        want = _keys(grants(self.settings, principal))
        have = {_binding_key(b): b for b in self.acls(principal)}
        create = [_binding(principal, key) for key in sorted(want - set(have))]
        delete = [_filter_of(have[key]) for key in sorted(set(have) - want)]
        if create:
            self._wait(self.client.create_acls(create, request_timeout=self.timeout), f"create ACLs of {principal}")
        if delete:
            self._wait(self.client.delete_acls(delete, request_timeout=self.timeout), f"delete ACLs of {principal}")
        self._until(lambda: {_binding_key(b) for b in self.acls(principal)} == want, f"ACLs of {principal}")
        return len(create), len(delete)

    def delete_acls(self, principal: str) -> int:
        k = _kadmin()
        flt = k.AclBindingFilter(k.ResourceType.ANY, None, k.ResourcePatternType.ANY, f"User:{principal}", None,
                                 k.AclOperation.ANY, k.AclPermissionType.ANY)
        results = self.client.delete_acls([flt], request_timeout=self.timeout)
        deleted = sum(len(v) for v in self._wait(results, f"delete ACLs of {principal}"))
        self._until(lambda: not self.acls(principal), f"ACL removal of {principal}")
        return deleted

    def provision(self, principal: str, password: str) -> tuple[int, int]:
        """Credential, then ACLs: idempotent, so `amb stack up --secure` re-applies every principal."""
        self.upsert_user(principal, password)
        self._until(lambda: principal in self.users(), f"SCRAM credential of {principal}")
        return self.apply_acls(principal)

    def revoke(self, principal: str) -> tuple[int, bool]:
        """ACLs first (effective on the next request), then the credential (no new logins)."""
        return self.delete_acls(principal), self.delete_user(principal)

    # -- plumbing ------------------------------------------------------------------------------
    def _result(self, fut: Any, what: str) -> Any:
        from confluent_kafka import KafkaException

        try:
            return fut.result(self.timeout)
        except KafkaException as exc:
            err = exc.args[0]
            error = AmbError(f"cannot {what} on {self.bootstrap}: {_describe(err)}")
            error.codes = (err.code(),) if hasattr(err, "code") else ()  # type: ignore[attr-defined]
            raise error from None
        except TimeoutError:
            raise AmbError(f"cannot {what} on {self.bootstrap}: no answer within {self.timeout:.0f} s") from None

    def _wait(self, futures: Mapping[Any, Any], what: str) -> list[Any]:
        return [self._result(f, what) for f in futures.values()]

    def _until(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise AmbError(f"{what} not visible on {self.bootstrap} after {self.timeout:.0f} s")
            time.sleep(0.05)


def _describe(err: Any) -> str:
    text = err.str() if hasattr(err, "str") else str(err)
    name = err.name() if hasattr(err, "name") else ""
    return f"{text} ({name})" if name and name not in text else text


def _binding_key(b: Any) -> _Key:
    kind = {"TOPIC": "topic", "GROUP": "group", "BROKER": "cluster"}.get(b.restype.name, b.restype.name.lower())
    return kind, b.name, b.resource_pattern_type.name.lower(), b.operation.name


def _kadmin() -> Any:
    """confluent_kafka.admin, untyped: its stubs do not export the ACL types and refuse the None
    wildcards of AclBindingFilter that the library documents."""
    import importlib

    return importlib.import_module("confluent_kafka.admin")


def _binding(principal: str, key: _Key) -> Any:
    k = _kadmin()
    kind, name, pattern, op = key
    # librdkafka calls Kafka's CLUSTER resource type BROKER (both are type 4).
    restype = {"topic": k.ResourceType.TOPIC, "group": k.ResourceType.GROUP, "cluster": k.ResourceType.BROKER}[kind]
    return k.AclBinding(restype, name, k.ResourcePatternType[pattern.upper()], f"User:{principal}", "*",
                        k.AclOperation[op], k.AclPermissionType.ALLOW)


def _filter_of(b: Any) -> Any:
    return _kadmin().AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                      b.operation, b.permission_type)


# -- what the commands do -------------------------------------------------------------------------------

def stored_admin_password(settings: Settings) -> str:
    password = CredentialStore.of(settings).get(ADMIN)
    if password is None:
        raise ConfigError(f"no admin credential in {credentials_path(settings)}: start the local broker with "
                          "`amb stack up --secure` (it creates one), or point AMB_KAFKA_CREDENTIALS at the store")
    return password


def provision_stored(settings: Settings, *, bootstrap: str | None = None,
                     services: bool = True) -> list[tuple[str, bool, int, int]]:
    """Create the service principals' passwords if missing, then (re)apply the SCRAM credential and
    ACLs of every principal in the store. Returns (principal, password created now, ACLs created,
    ACLs deleted) per principal. What `amb stack up --secure` runs after the broker is up."""
    store = CredentialStore.of(settings)
    created: dict[str, bool] = {}
    if services:
        for service in SERVICES:
            created[service] = store.ensure(service)[1]
    admin = SecurityAdmin(settings, bootstrap=bootstrap, admin_password=stored_admin_password(settings))
    out = []
    for principal in store.principals():
        if principal == ADMIN or (principal not in SERVICES and principal_trust(principal) is None):
            continue
        password = store.get(principal)
        assert password is not None
        made, dropped = admin.provision(principal, password)
        out.append((principal, created.get(principal, False), made, dropped))
    return out


def add_trust(settings: Settings, trust: str, *, password: str | None = None,
              rotate: bool = False) -> tuple[str, str | None]:
    """Credential and ACLs for ``trust``. Returns (principal, new password or None if unchanged).

    An existing trust keeps its password (ACLs re-applied) unless ``rotate`` or a password is given.
    """
    principal = trust_principal(trust)
    store = CredentialStore.of(settings)
    admin = SecurityAdmin(settings, admin_password=stored_admin_password(settings))
    current = store.get(principal)
    new: str | None = None
    if password is not None:
        new = check_password(password)
    elif current is None or rotate:
        new = new_password()
    # The broker first, then the store: a password in the store always works on the broker.
    admin.provision(principal, new or str(current))
    if new is not None:
        store.set(principal, new)
    return principal, new


def remove_trust(settings: Settings, trust: str) -> tuple[str, int, bool, bool]:
    """Revoke ``trust``: (principal, ACLs deleted, broker credential deleted, store entry deleted)."""
    principal = trust_principal(trust)
    admin = SecurityAdmin(settings, admin_password=stored_admin_password(settings))
    deleted, had_user = admin.revoke(principal)
    return principal, deleted, had_user, CredentialStore.of(settings).remove(principal)
