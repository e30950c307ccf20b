"""Analyst identities and their tokens, kept in one file (TOML or YAML), and their geography.

The file (``AMB_IDENTITIES_FILE``, default ``AMB_DATA_DIR/identities.toml``) lists identities
and tokens. A token is shown once, when issued; the file keeps only its SHA-256, so the file can
be read (and backed up, and turned into server users: :func:`rbac_sql`) without exposing any
token. ``amb token issue/revoke/list`` edit it (atomically: write and rename); a running ``amb serve``
re-reads it when it changes, so a revocation takes effect on the next request. Hand edits are welcome for ``name``,
``incidents`` (region/national/admin: may read pseudonymised incident rows) and ``views``::

    [[identity]]
    id = "icb:QOP"
    name = "NHS Greater Manchester ICB"
    incidents = false
    views = ["non_conveyance_icb_month", "handover_site_day"]   # optional; default all

    [[token]]
    id = "3f9c2a1b7d0e"           # what `amb token revoke` takes
    identity = "icb:QOP"
    sha256 = "…"                  # of the token; the token itself is never stored
    label = "alice"
    created = "2026-11-01T10:00:00Z"
    revoked = ""                  # set when revoked

Geography: an identity's own area (which LSOAs, MSOAs, LADs, SICBLs are inside its ICB or region,
or served by its trust) comes from the reference tables in ``data/geo`` (April 2024 ICBs).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import hmac
import json
import os
import secrets
import threading
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from amb.config import Settings
from amb.errors import AmbError, ConfigError
from domain.access import ADMIN, ICB, NATIONAL, REGION, TRUST, AccessError, Area, Identity, parse_identity
from domain.disclosure import VIEWS
from domain.pseudonym import KEY_BYTES

TOKEN_PREFIX = "amb_"
TOKEN_ID_HEX = 12


class IdentityError(AmbError):
    """The identities file is malformed, or a token or identity is unknown."""


def identities_path(settings: Settings) -> Path:
    """``AMB_IDENTITIES_FILE`` if the settings have it, else ``AMB_DATA_DIR/identities.toml``."""
    configured = settings.identities_file
    return Path(configured) if configured else settings.data_dir / "identities.toml"


def pseudonym_key_path(settings: Settings) -> Path:
    """The deployment's pseudonymisation key: ``AMB_PSEUDONYM_KEY_FILE`` if the settings have it,
    else ``AMB_DATA_DIR/pseudonym.key`` (created on first use, mode 0600)."""
    configured = settings.pseudonym_key_file
    return Path(configured) if configured else settings.data_dir / "pseudonym.key"


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path`` (hex), made with ``secrets`` the first time. Keep it secret and backed
    up: a new key gives every incident a new pseudonym."""
    if path.exists():
        try:
            key = bytes.fromhex(path.read_text().strip())
        except ValueError:
            raise ConfigError(f"{path} does not hold a hex pseudonymisation key") from None
        if len(key) < KEY_BYTES:
            raise ConfigError(f"{path} holds a {len(key)}-byte key; at least {KEY_BYTES} are needed")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One issued token: its hash, never the token."""

    id: str
    identity: str
    sha256: str
    label: str = ""
    created: str = ""
    revoked: str = ""

    @property
    def active(self) -> bool:
        return not self.revoked


@dataclass(frozen=True)
class Registry:
    """The identities file's content."""

    identities: tuple[Identity, ...] = ()
    tokens: tuple[TokenRecord, ...] = ()

    def identity(self, ident_id: str) -> Identity:
        for ident in self.identities:
            if ident.id == ident_id:
                return ident
        raise IdentityError(f"no identity {ident_id} in the identities file")

    def authenticate(self, token: str) -> Identity | None:
        """The identity of an active token, or None. Compares hashes in constant time."""
        digest = hash_token(token)
        found: TokenRecord | None = None
        for rec in self.tokens:
            if hmac.compare_digest(rec.sha256, digest) and rec.active:
                found = rec
        return None if found is None else self.identity(found.identity)


def _identity_from(entry: Mapping[str, Any], where: str) -> Identity:
    try:
        base = parse_identity(str(entry["id"]))
        views = entry.get("views")
        return Identity(base.kind, base.code, name=str(entry.get("name", "")),
                        incidents=bool(entry.get("incidents", False)),
                        views=None if views is None else tuple(str(v) for v in views))
    except KeyError as exc:
        raise IdentityError(f"{where}: identity entry without {exc}") from None
    except AccessError as exc:
        raise IdentityError(f"{where}: {exc}") from None


def load(path: Path) -> Registry:
    """Read the identities file (missing = empty). ``.yaml``/``.yml`` is YAML, anything else TOML."""
    if not path.exists():
        return Registry()
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise IdentityError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'TOML'}: "
                            f"{str(exc).splitlines()[0]}") from None
    data = data or {}
    idents = [_identity_from(e, f"{path} identity {i + 1}") for i, e in enumerate(data.get("identity", []))]
    seen: set[str] = set()
    for ident in idents:
        if ident.id in seen:
            raise IdentityError(f"{path}: identity {ident.id} is listed twice")
        seen.add(ident.id)
    tokens = []
    for i, e in enumerate(data.get("token", [])):
        try:
            rec = TokenRecord(str(e["id"]), str(e["identity"]), str(e["sha256"]), str(e.get("label", "")),
                              str(e.get("created", "")), str(e.get("revoked", "")))
        except KeyError as exc:
            raise IdentityError(f"{path} token {i + 1}: missing {exc}") from None
        if rec.identity not in seen:
            raise IdentityError(f"{path} token {rec.id}: unknown identity {rec.identity}")
        tokens.append(rec)
    return Registry(tuple(idents), tuple(tokens))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string


HEADER = ("# amb analyst identities and token hashes (docs: amb/identities.py). Tokens are stored as\n"
          "# SHA-256 only; `amb token issue|revoke|list` edit this file; a running `amb serve` reloads it.\n")


def _entries(reg: Registry) -> dict[str, list[dict[str, Any]]]:
    idents = []
    for ident in reg.identities:
        e: dict[str, Any] = {"id": ident.id, "name": ident.name, "incidents": ident.incidents}
        if ident.views is not None:
            e["views"] = list(ident.views)
        idents.append(e)
    tokens = [{"id": t.id, "identity": t.identity, "sha256": t.sha256, "label": t.label,
               "created": t.created, "revoked": t.revoked} for t in reg.tokens]
    return {"identity": idents, "token": tokens}


def dump(reg: Registry, path: Path) -> None:
    """Write atomically (temporary file + rename), in the format the suffix says."""
    data = _entries(reg)
    if path.suffix in (".yaml", ".yml"):
        text = HEADER + yaml.safe_dump(data, sort_keys=False)
    else:
        parts = [HEADER]
        for table, entries in data.items():
            for e in entries:
                parts.append(f"\n[[{table}]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in e.items()))
        text = "".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def issue(path: Path, ident: Identity, label: str = "") -> tuple[str, TokenRecord]:
    """Add a token for ``ident`` (adding the identity if new); returns the token, shown once."""
    reg = load(path)
    idents = list(reg.identities)
    if not any(i.id == ident.id for i in idents):
        idents.append(ident)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = hash_token(token)
    rec = TokenRecord(digest[:TOKEN_ID_HEX], ident.id, digest, label, _now())
    dump(Registry(tuple(idents), (*reg.tokens, rec)), path)
    return token, rec


def revoke(path: Path, token_id: str | None = None, identity: str | None = None) -> list[TokenRecord]:
    """Revoke one token (by id or id prefix) or every token of an identity; returns what changed."""
    if (token_id is None) == (identity is None):
        raise IdentityError("give a token id or --identity (not both)")
    reg = load(path)
    if token_id is not None:
        hits = [t for t in reg.tokens if t.id.startswith(token_id) and t.active]
        if len(hits) > 1:
            raise IdentityError(f"token id {token_id} is ambiguous: {', '.join(t.id for t in hits)}")
        if not hits:
            raise IdentityError(f"no active token {token_id}")
    else:
        hits = [t for t in reg.tokens if t.identity == identity and t.active]
        if not hits:
            raise IdentityError(f"no active token for {identity}")
    when = _now()
    ids = {t.id for t in hits}
    tokens = tuple(replace(t, revoked=when) if t.id in ids else t for t in reg.tokens)
    dump(Registry(reg.identities, tokens), path)
    return [replace(t, revoked=when) for t in hits]


class RegistryFile:
    """The identities file as a running service sees it: re-read whenever its mtime or size has
    changed (one stat per request), so a new token works and a revoked one fails at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._reg = Registry()
        self.get(force=True)

    def _stat(self) -> tuple[int, int, int] | None:
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        return None

    def get(self, force: bool = False) -> Registry:
        stamp = self._stat()
        with self._lock:
            if force or stamp != self._stamp:
                self._reg = load(self.path)
                self._stamp = stamp
            return self._reg


# --- geography ----------------------------------------------------------------------------------

_FINE = ("lsoa", "msoa", "lad", "sicbl")
_GEO_COLUMNS = {"lsoa": "lsoa21_code", "msoa": "msoa21_code", "lad": "lad_code", "sicbl": "sicbl_code",
                "icb": "icb_code", "region": "region_code"}


def _read_csv(path: Path) -> Iterator[dict[str, str]]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", newline="") as f:
            yield from csv.DictReader(f)
    else:
        with path.open(newline="") as f:
            yield from csv.DictReader(f)


@dataclass
class Geography:
    """Reference areas by ODS code: what is inside each ICB and region, and each trust's served area."""

    icb: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    region: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    trust: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    names: dict[str, str] = field(default_factory=dict)
    parents: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    """level -> code -> {coarser level: the one area containing it} (only where it is one area)."""

    def area(self, ident: Identity) -> Area:
        """The identity's own area, as the store codes it (ONS codes; trust ODS)."""
        table = {ICB: self.icb, REGION: self.region, TRUST: self.trust}.get(ident.kind)
        if table is None:
            return Area()
        if ident.code not in table:
            raise IdentityError(f"{ident.id}: no {ident.kind} with ODS code {ident.code} in the reference geography")
        codes = {lvl: frozenset(v) for lvl, v in table[ident.code].items()}
        if ident.kind == TRUST:
            codes["trust"] = frozenset({ident.code})
        return Area(codes)

    def check(self, ident: Identity) -> None:
        self.area(ident)


def load_geography(geo_dir: Path) -> Geography:
    """Read ``lsoa21_geography.csv.gz`` and ``ambulance_trust_lsoa21.csv.gz`` (about 0.3 s)."""
    g = Geography()
    lsoa_areas: dict[str, dict[str, str]] = {}
    path = geo_dir / "lsoa21_geography.csv.gz"
    if not path.exists():
        raise ConfigError(f"no {path.name} in {geo_dir}: set AMB_GEO_DATA_DIR to the reference data")
    for r in _read_csv(path):
        areas = {lvl: r[col] for lvl, col in _GEO_COLUMNS.items()}
        lsoa_areas[r["lsoa21_code"]] = areas
        for key, table in ((r["icb_ods"], g.icb), (r["region_ods"], g.region)):
            for lvl, code in areas.items():
                table[key][lvl].add(code)
        g.names.setdefault(f"icb:{r['icb_ods']}", r["icb_name"])
        g.names.setdefault(f"region:{r['region_ods']}", r["region_name"])
    order = ("lsoa", "msoa", "lad", "sicbl", "icb", "region")
    above: dict[str, dict[str, dict[str, set[str]]]] = {lvl: defaultdict(lambda: defaultdict(set)) for lvl in order}
    for areas in lsoa_areas.values():
        for k, lvl in enumerate(order):
            for up in order[k + 1:]:
                above[lvl][areas[lvl]][up].add(areas[up])
    g.parents = {lvl: {code: {up: next(iter(v)) for up, v in ups.items() if len(v) == 1}
                       for code, ups in codes.items()} for lvl, codes in above.items()}
    served = geo_dir / "ambulance_trust_lsoa21.csv.gz"
    if served.exists():
        for r in _read_csv(served):
            served_areas = lsoa_areas.get(r["lsoa21_code"])
            if served_areas:
                for lvl, code in served_areas.items():
                    g.trust[r["trust_ods"]][lvl].add(code)
    trusts = geo_dir / "ambulance_trusts.csv"
    if trusts.exists():
        for r in _read_csv(trusts):
            g.names.setdefault(f"trust:{r['trust_ods']}", r["trust_name"])
    return g


# --- ClickHouse server users, roles and row policies ------------------------------------------------

FACT_TABLES = ("incident_facts", "incident_changes", "handover_facts", "handover_changes", "call_facts",
               "call_changes")
ROLLUP_TABLES = tuple(f"{f}_rollup_{g}" for f in ("incident", "handover") for g in ("hourly", "daily", "monthly"))
AUDIT_TABLE = "audit_log"


def _q(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _s(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rbac_sql(reg: Registry, database: str = "default", source: str = "the identities file") -> str:
    """Users, roles, grants and row policies for a ClickHouse server, from the same identities and
    token hashes ``amb serve`` uses (``IDENTIFIED WITH sha256_hash``: the same tokens log in).

    Trusts may read their own incident rows (and their own trust-level rollups) directly: they
    produced them, so no disclosure control applies. ICB, region and national analysts get no
    direct grants on data: their figures must pass disclosure control and pseudonymisation, which
    ``amb serve`` applies (its ClickHouse-compatible endpoint speaks the same protocol). Admins read
    the audit log. Service roles: ``amb_serve`` (read all, write the audit log), ``amb_sink``
    (load facts). Regenerate and re-apply after every ``amb token`` change: identities without an
    active token are dropped, so revocation removes server access too."""
    db = _q(database)
    out = [
        f"-- GENERATED by `amb token ddl` from {source}.",
        "-- Do not edit: re-generate and re-apply after every `amb token` change.",
        "-- Needs ClickHouse 24.9+ (several sha256_hash methods per user). Apply with a user that has",
        "-- ACCESS MANAGEMENT, e.g. clickhouse-client --multiquery < deploy/clickhouse/rbac.sql",
        "",
        "-- Roles",
    ]
    roles = ("amb_trust", "amb_analyst", "amb_admin", "amb_serve", "amb_sink")
    out += [f"CREATE ROLE IF NOT EXISTS {r};" for r in roles]
    out += ["", "-- Service roles"]
    out.append(f"GRANT SELECT ON {db}.* TO amb_serve;")
    out.append(f"GRANT INSERT ON {db}.{AUDIT_TABLE} TO amb_serve;")
    for t in FACT_TABLES:
        out.append(f"GRANT SELECT, INSERT ON {db}.{t} TO amb_sink;")
    for t in ROLLUP_TABLES:
        out.append(f"GRANT INSERT ON {db}.{t} TO amb_sink;  -- through the materialised views")
    out.append(f"GRANT SELECT ON {db}.schema_migrations TO amb_sink;")
    out.append(f"GRANT SELECT ON {db}.{AUDIT_TABLE} TO amb_admin;")
    out += ["", "-- Trusts read their own facts and their own trust-level rollups (row policies below)"]
    for t in FACT_TABLES + ROLLUP_TABLES:
        out.append(f"GRANT SELECT ON {db}.{t} TO amb_trust;")
    out += ["", "-- The service and the sink see every row of the tables that carry row policies"]
    for t in FACT_TABLES + ROLLUP_TABLES:
        out.append(f"CREATE ROW POLICY OR REPLACE amb_service ON {db}.{t} FOR SELECT USING 1 TO amb_serve, amb_sink;")
    out += ["", "-- Users: one per identity with an active token (user = kind_code, e.g. icb_QOP; password = token)"]
    active: dict[str, list[str]] = defaultdict(list)
    for tok in reg.tokens:
        if tok.active:
            active[tok.identity].append(tok.sha256)
    role_of = {TRUST: "amb_trust", ICB: "amb_analyst", REGION: "amb_analyst", NATIONAL: "amb_analyst",
               ADMIN: "amb_admin"}
    for ident in sorted(reg.identities, key=lambda i: i.id):
        user = _q(ident.login)
        hashes = active.get(ident.id)
        if not hashes:
            out.append(f"DROP USER IF EXISTS {user};  -- no active token")
            continue
        methods = ", ".join(f"sha256_hash BY {_s(h)}" for h in hashes)
        role = role_of[ident.kind]
        out.append(f"CREATE USER OR REPLACE {user} IDENTIFIED WITH {methods} "
                   f"DEFAULT DATABASE {db} SETTINGS readonly = 1;")
        out.append(f"GRANT {role} TO {user};")
        out.append(f"SET DEFAULT ROLE {role} TO {user};")
        if ident.kind == TRUST:
            policy = f"amb_trust_{ident.code}"
            for t in FACT_TABLES:
                out.append(f"CREATE ROW POLICY OR REPLACE {policy} ON {db}.{t} FOR SELECT "
                           f"USING trust = {_s(ident.code)} TO {user};")
            for t in ROLLUP_TABLES:
                out.append(f"CREATE ROW POLICY OR REPLACE {policy} ON {db}.{t} FOR SELECT "
                           f"USING level = 'trust' AND code = {_s(ident.code)} TO {user};")
    return "\n".join(out) + "\n"


def views_of(ident: Identity) -> tuple[str, ...]:
    return VIEWS if ident.views is None else ident.views


def describe(reg: Registry) -> Iterable[tuple[str, str, str, str, str]]:
    """(token id, identity, label, created, state) for `amb token list`."""
    for t in reg.tokens:
        yield t.id, t.identity, t.label, t.created, f"revoked {t.revoked}" if t.revoked else "active"
