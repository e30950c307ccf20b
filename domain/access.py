"""Who may see what (domain.md "Disclosure control"), and the guard on analysts' SQL.

Identities are ``kind:code``: ``trust:RX7`` (an ambulance trust, ODS code), ``icb:QOP`` (an ICB,
ODS code), ``region:Y56`` (an NHS England region, ODS code), ``national:<label>`` (NHS England
analysts) and ``admin:<label>`` (the platform's operators: token management and the audit log).

What each may see:

- aggregates at the coarse levels (England, region, ICB, trust, hospital site) for every code:
  published-style figures, always after disclosure control;
- aggregates at the fine levels (SICBL, LAD, MSOA, LSOA) only inside its own geography (an ICB's
  or region's area; a trust's served area); national and admin everywhere;
- disclosure control for everyone, except a trust reading its own row at trust level;
- incident-level rows: a trust its own (as published, with incident ids); an ICB those in its
  geography, pseudonymised (domain.pseudonym); region, national and admin only when their
  identity is configured with ``incidents = true``, pseudonymised, within their area;
- SQL: one read-only SELECT over the analyst views it is allowed (default: all of them).

The SQL guard (:func:`check_sql`) tokenises the text itself and then REWRITES it from its own
tokens: comments are dropped, strings and quoted names are re-quoted canonically, and the engine
is given that rendering, never the caller's text, so the engine sees exactly what the guard saw.
It refuses anything but a single SELECT (WITH, UNION, subqueries allowed), any table that is not
a permitted view or one of the query's own CTEs, other databases, every table function, a list
of functions that reach outside the query (dictGet, joinGet, file, url, ...), SETTINGS, SET,
INTO OUTFILE, FORMAT other than an allowed one, and multiple statements. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from domain.disclosure import VIEWS

TRUST, ICB, REGION, NATIONAL, ADMIN = "trust", "icb", "region", "national", "admin"
KINDS: Final = (TRUST, ICB, REGION, NATIONAL, ADMIN)
_CODE_RULES: Final[Mapping[str, tuple[str, str]]] = {
    TRUST: (r"R[A-Z0-9]{1,4}", "an ambulance trust ODS code such as RX7"),
    ICB: (r"Q[A-Z0-9]{2}", "an ICB ODS code such as QOP"),
    REGION: (r"Y[0-9]{2}", "an NHS England region ODS code such as Y56"),
    NATIONAL: (r"[a-z0-9][a-z0-9_.-]{0,39}", "a lower-case label such as nhse"),
    ADMIN: (r"[a-z0-9][a-z0-9_.-]{0,39}", "a lower-case label such as ops"),
}

COARSE_LEVELS: Final = ("england", "region", "icb", "trust", "site")
FINE_LEVELS: Final = ("sicbl", "lad", "msoa", "lsoa")


class AccessError(ValueError):
    """An identity is malformed or asked for something it may not see."""


@dataclass(frozen=True)
class Identity:
    """One analyst identity. ``incidents``: region/national/admin may read pseudonymised incident
    rows only when this is set; ``views``: the analyst views it may query (None = all)."""

    kind: str
    code: str
    name: str = ""
    incidents: bool = False
    views: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AccessError(f"unknown identity kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        pattern, what = _CODE_RULES[self.kind]
        if not re.fullmatch(pattern, self.code):
            raise AccessError(f"{self.kind} identity code {self.code!r} is not {what}")
        unknown = set(self.views or ()) - set(VIEWS)
        if unknown:
            raise AccessError(f"identity {self.id}: {', '.join(sorted(unknown))} is not an analyst view "
                              f"({', '.join(VIEWS)})")

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.code}"

    @property
    def login(self) -> str:
        """The user name for ClickHouse-protocol logins (HTTP Basic forbids ':' in user names)."""
        return f"{self.kind}_{self.code}"


def parse_identity(text: str) -> Identity:
    """``icb:QOP`` -> Identity(kind='icb', code='QOP'). Codes of trusts, ICBs and regions are
    upper-cased; labels lower-cased."""
    kind, sep, code = text.strip().partition(":")
    if not sep or not code:
        raise AccessError(f"identity {text!r} is not KIND:CODE (e.g. icb:QOP, trust:RX7, region:Y56, national:nhse)")
    kind = kind.lower()
    code = code.lower() if kind in (NATIONAL, ADMIN) else code.upper()
    return Identity(kind, code)


@dataclass(frozen=True)
class Area:
    """An identity's own geography as the store codes it (ONS codes; trust ODS): the codes at
    each level inside it. Built by the shell from the reference geography."""

    codes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def at(self, level: str) -> frozenset[str]:
        return self.codes.get(level, frozenset())


EVERYWHERE: Final = Area()


@dataclass(frozen=True)
class IncidentAccess:
    """Incident-level rows an identity may read: rows with ``column`` in ``values`` (column None =
    all rows), pseudonymised or not."""

    column: str | None
    values: frozenset[str]
    pseudonymised: bool


@dataclass(frozen=True)
class Scope:
    """What one identity may see; :func:`scope` builds it."""

    identity: Identity
    area: Area
    everywhere: bool

    def allows(self, level: str, code: str) -> bool:
        """May this identity see the aggregate row (level, code)?"""
        if self.everywhere or level in COARSE_LEVELS:
            return True
        return code in self.area.at(level)

    def exempt(self, level: str, code: str) -> bool:
        """Is this row the identity's own data (shown without disclosure control)?"""
        return self.identity.kind == TRUST and level == "trust" and code == self.identity.code

    @property
    def views(self) -> frozenset[str]:
        return frozenset(VIEWS if self.identity.views is None else self.identity.views)

    @property
    def incidents(self) -> IncidentAccess | None:
        ident = self.identity
        if ident.kind == TRUST:
            return IncidentAccess(TRUST, frozenset({ident.code}), pseudonymised=False)
        if ident.kind == ICB:
            return IncidentAccess(ICB, self.area.at(ICB), pseudonymised=True)
        if not ident.incidents:
            return None
        if ident.kind == REGION:
            return IncidentAccess(REGION, self.area.at(REGION), pseudonymised=True)
        return IncidentAccess(None, frozenset(), pseudonymised=True)

    @property
    def admin(self) -> bool:
        return self.identity.kind == ADMIN


def scope(identity: Identity, area: Area) -> Scope:
    """The scope of an identity whose own geography is ``area`` (ignored for national/admin)."""
    return Scope(identity, area, everywhere=identity.kind in (NATIONAL, ADMIN))


# ============================================================================ the SQL guard

ACCESS_DENIED: Final = 497
SYNTAX_ERROR: Final = 62
READONLY: Final = 164
UNKNOWN_FORMAT: Final = 73
ERROR_NAMES: Final[Mapping[int, str]] = {
    ACCESS_DENIED: "ACCESS_DENIED", SYNTAX_ERROR: "SYNTAX_ERROR", READONLY: "READONLY",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
}

ALLOWED_FORMATS: Final = frozenset({
    "Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes",
    "TabSeparated", "TabSeparatedWithNames", "TabSeparatedWithNamesAndTypes", "TabSeparatedRaw",
    "TSV", "TSVWithNames", "TSVWithNamesAndTypes", "TSVRaw", "CSV", "CSVWithNames",
    "CSVWithNamesAndTypes", "JSON", "JSONCompact", "JSONEachRow", "JSONCompactEachRow",
    "JSONStrings", "Arrow", "ArrowStream", "Parquet", "Pretty", "PrettyCompact", "Values", "Null",
})
"""Output formats a caller may ask for (none reads files or takes a schema from the server)."""

_FORBIDDEN_WORDS: Final = frozenset({
    "insert", "update", "delete", "alter", "create", "drop", "truncate", "rename", "attach",
    "detach", "optimize", "grant", "revoke", "kill", "system", "set", "settings", "into",
    "outfile", "infile", "exchange", "undrop", "backup", "restore", "watch",
})
"""Statement and clause words that never belong in a read-only SELECT (bare words only; the
first word must be SELECT or WITH, which rules out SHOW, DESCRIBE, EXPLAIN and the like)."""

TABLE_FUNCTIONS: Final = frozenset({
    "file", "filecluster", "url", "urlcluster", "remote", "remotesecure", "cluster",
    "clusterallreplicas", "s3", "s3cluster", "gcs", "oss", "cosn", "hdfs", "hdfscluster",
    "azureblobstorage", "azureblobstoragecluster", "iceberg", "icebergs3", "icebergazure",
    "icebergHDFS".lower(), "iceberglocal", "icebergcluster", "icebergs3cluster", "deltalake",
    "deltalakecluster", "deltalakelocal", "deltalakeazure", "hudi", "hudicluster", "python",
    "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "input", "executable",
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom", "generateseries",
    "generate_series", "values", "view", "viewifpermitted", "viewexplain", "merge",
    "mergetreeindex", "mergetreeanalyzeindexes", "mergetreeparts", "mergetreeprojection",
    "dictionary", "null", "loop", "fuzzjson", "fuzzquery", "format", "arrowflight",
    "arrowflightcluster", "ytsaurus", "prometheusquery", "prometheusqueryrange", "timeseriesdata",
    "timeseriestags", "timeseriesmetrics", "timeseriesselector", "paimon", "paimons3",
    "paimonazure", "paimonhdfs", "paimonlocal", "hive", "kafka", "nats", "rabbitmq",
    "filesystem", "primes",
})
"""Table functions (lower case): refused in table position, and as functions anywhere except
``format`` (a string function too)."""

_DENIED_FUNCTIONS: Final = (TABLE_FUNCTIONS - {"format", "values", "null"}) | frozenset({
    "joinget", "joingetornull", "hascolumnintable", "getsetting", "getsettingordefault",
    "getmacro", "getserverport", "getclienthttpheader", "serveruuid", "hostname", "fqdn",
    "filesystemavailable", "filesystemcapacity", "filesystemunreserved", "currentdatabase",
    "currentschemas", "currentuser", "current_user", "currentprofiles", "currentroles",
    "enabledroles", "defaultroles", "sleep", "sleepeachrow", "evalmlmethod", "modelevaluate",
    "catboostevaluate", "naivebayesclassifier", "globalvariable", "addresstoline",
    "addresstolinewithinlines", "addresstosymbol", "demangle", "trap", "showcertificate",
    "getosKernelversion".lower(), "zookeepersessionuptime", "transactionid",
    "transactionlatestsnapshot", "transactionoldestsnapshot", "buildid", "uptime", "tcpport",
    "displayname", "initialqueryid", "queryid", "connectionid", "shardnum", "shardcount",
    "gettypeserializationstreams", "filecontents", "database", "schema",
})
_DENIED_PREFIXES: Final = ("dictget", "dicthas", "dictisin", "joinget", "s3", "hdfs", "azure", "iceberg",
                           "deltalake", "hudi", "paimon", "remote", "cluster", "url", "file", "mysql",
                           "postgres", "mongo", "jdbc", "odbc", "executable", "timeseries")

# Functions whose parentheses hold FROM (or IN) as syntax, not a table.
_SYNTAX_FROM: Final = frozenset({"extract", "trim", "substring", "substr", "overlay", "position"})
# Words that end the FROM clause of the current (sub)query.
_FROM_ENDS: Final = frozenset({
    "where", "prewhere", "group", "order", "limit", "having", "union", "except", "intersect",
    "window", "qualify", "select",
})
# Words after a table that are not its alias.
_NOT_ALIAS: Final = frozenset({
    "where", "prewhere", "final", "sample", "join", "left", "right", "inner", "outer", "full",
    "cross", "any", "all", "asof", "semi", "anti", "global", "array", "on", "using", "group",
    "order", "limit", "having", "union", "except", "intersect", "window", "qualify", "settings",
    "format", "paste", "natural", "offset", "into", "with", "fetch",
})


class SQLRefused(Exception):  # noqa: N818 (the name says what happened)
    """A SQL text the guard will not run; ``code`` is the ClickHouse error code to report."""

    def __init__(self, message: str, code: int = ACCESS_DENIED) -> None:
        super().__init__(message)
        self.code = code

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, "ACCESS_DENIED")


@dataclass(frozen=True)
class Token:
    """``kind``: word (bare), ident (quoted identifier, ``value`` decoded), string, number, param,
    op. ``text`` is the canonical rendering the engine is given."""

    kind: str
    text: str
    value: str
    pos: int


_WS = " \t\n\r\f\v"
_OPS: Final = ("<=>", "->", "::", "||", "<=", ">=", "!=", "<>", "==", "(", ")", "[", "]", ",", ".", ";",
               "*", "+", "-", "/", "%", "=", "<", ">", "?", ":")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+|[pP][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAM = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([A-Za-z0-9_(), ']+?)\s*\}")


def _quoted(sql: str, i: int, q: str) -> tuple[str, int]:
    """Body of a quoted token starting at ``i`` (the opening quote) as written, and the index after
    it. Backslash escapes the next character; a doubled quote is one quote (ClickHouse rules)."""
    j, n = i + 1, len(sql)
    body: list[str] = []
    while j < n:
        ch = sql[j]
        if ch == "\\":
            if j + 1 >= n:
                break
            body.append(sql[j : j + 2])
            j += 2
            continue
        if ch == q:
            if j + 1 < n and sql[j + 1] == q:
                body.append("\\" + q)
                j += 2
                continue
            return "".join(body), j + 1
        body.append(ch)
        j += 1
    raise SQLRefused(f"unterminated {'string' if q == chr(39) else 'quoted name'} starting at position {i}",
                     SYNTAX_ERROR)


def tokenize(sql: str) -> list[Token]:
    """Significant tokens of ``sql`` (comments and whitespace dropped)."""
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in _WS:
            i += 1
            continue
        if sql.startswith("--", i) or ch == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise SQLRefused(f"unterminated comment starting at position {i}", SYNTAX_ERROR)
            i = j
            continue
        if ch == "'":
            body, j = _quoted(sql, i, "'")
            out.append(Token("string", "'" + body + "'", body, i))
            i = j
            continue
        if ch in ('"', "`"):
            body, j = _quoted(sql, i, ch)
            name = body.replace("\\" + ch, ch)
            if "\\" in name or "`" in name or any(ord(c) < 32 for c in name) or not name:
                raise SQLRefused(f"quoted name at position {i} has characters the guard does not allow")
            out.append(Token("ident", "`" + name + "`", name, i))
            i = j
            continue
        prev = out[-1] if out else None
        after_name = prev is not None and (prev.kind in ("word", "ident", "number") or prev.text in (")", "]"))
        m = _NUMBER.match(sql, i)
        if m and not (ch == "." and after_name):
            end = m.end()
            if end < n and (sql[end].isalnum() or sql[end] == "_"):
                raise SQLRefused(f"malformed number at position {i}", SYNTAX_ERROR)
            out.append(Token("number", m.group(0), m.group(0), i))
            i = end
            continue
        m = _WORD.match(sql, i)
        if m:
            out.append(Token("word", m.group(0), m.group(0).lower(), i))
            i = m.end()
            continue
        if ch == "{":
            m = _PARAM.match(sql, i)
            if not m:
                raise SQLRefused(f"unexpected '{{' at position {i} (query parameters are {{name:Type}})",
                                 SYNTAX_ERROR)
            if "identifier" in m.group(2).lower():
                raise SQLRefused("Identifier query parameters are not allowed: tables are named in the text")
            out.append(Token("param", "{" + m.group(1) + ":" + m.group(2) + "}", m.group(1), i))
            i = m.end()
            continue
        for op in _OPS:
            if sql.startswith(op, i):
                out.append(Token("op", op, op, i))
                i += len(op)
                break
        else:
            raise SQLRefused(f"unexpected character {ch!r} at position {i}", SYNTAX_ERROR)
    return out


_SPACED: Final = frozenset({"from", "as", "in", "join", "on", "using", "and", "or", "where", "select",
                            "by", "with", "having", "when", "then", "else", "over", "union", "all"})


def render_tokens(tokens: Iterable[Token]) -> str:
    """Canonical SQL text of tokens: spaces between tokens except around '.' and before a call's
    '(' (so nothing can merge into a comment or another token). A '.' beside a number keeps its
    space: glued, ``1 . x`` would read back as the number ``1.`` followed by ``x``."""
    parts: list[str] = []
    prev: Token | None = None
    for t in tokens:
        if prev is not None:
            call = prev.kind == "ident" or (prev.kind == "word" and prev.value not in _SPACED)
            tight = ((t.text == "." and prev.kind != "number") or (prev.text == "." and t.kind != "number")
                     or (t.text == "(" and call))
            if not tight:
                parts.append(" ")
        parts.append(t.text)
        prev = t
    return "".join(parts)


@dataclass
class _Frame:
    kind: str  # root | group | func | subquery
    func: str = ""
    in_from: bool = False
    array_join: bool = False
    in_with: bool = False
    expect_table: bool = False
    start: int = 0


@dataclass(frozen=True)
class CheckedSQL:
    """A SQL text the guard accepted: its tokens, the permitted views it reads (and where), its
    CTE names (and where they are defined and read), query parameters and the FORMAT it asked
    for (removed from the text)."""

    tokens: tuple[Token, ...]
    views: frozenset[str]
    view_refs: tuple[tuple[int, bool], ...]  # (token index, in an IN clause)
    ctes: frozenset[str]
    cte_refs: frozenset[int]
    params: frozenset[str]
    format: str | None

    def render(self, views: Mapping[str, str]) -> str:
        """The SQL to run: each view reference replaced by ``(views[name]) AS name`` (the alias
        kept when the caller gave one), CTE names made unique so that a name used outside its
        WITH cannot reach a real table, no FORMAT, no trailing ';'."""
        refs = dict(self.view_refs)
        unique = {name: f"__amb_cte_{k}_{name}" for k, name in enumerate(sorted(self.ctes))}
        out: list[Token] = []
        toks = self.tokens
        for k, t in enumerate(toks):
            nxt = toks[k + 1] if k + 1 < len(toks) else None
            if k in refs:
                out.append(Token("op", "(" + views[_name(t)] + ")", "", t.pos))
                aliased = nxt is not None and (
                    nxt.kind == "ident" or (nxt.kind == "word" and nxt.value not in _NOT_ALIAS))
                if not refs[k] and not aliased:
                    name = _name(t)
                    out += [Token("word", "AS", "as", t.pos), Token("ident", f"`{name}`", name, t.pos)]
                continue
            qualifier = t.kind in ("word", "ident") and nxt is not None and nxt.text == "."
            if (k in self.cte_refs or qualifier) and t.kind in ("word", "ident") and _name(t) in unique:
                new = unique[_name(t)]
                out.append(Token("ident", f"`{new}`", new, t.pos))
                continue
            out.append(t)
        return render_tokens(out)


def _name(t: Token) -> str:
    """The identifier a word or quoted name stands for (bare words keep their case: table names
    are case-sensitive)."""
    return t.text if t.kind == "word" else t.value


def check_sql(sql: str, permitted: Iterable[str]) -> CheckedSQL:
    """Accept one read-only SELECT over ``permitted`` views, or raise :class:`SQLRefused`."""
    allowed = frozenset(permitted)
    toks = tokenize(sql)
    if toks and toks[-1].text == ";":
        toks = toks[:-1]
    if not toks:
        raise SQLRefused("empty query", SYNTAX_ERROR)
    for t in toks:
        if t.text == ";":
            raise SQLRefused("multi-statements are not allowed: send one SELECT", SYNTAX_ERROR)
    # FORMAT name, only as the last clause of the whole query
    fmt: str | None = None
    if len(toks) >= 2 and toks[-2].kind == "word" and toks[-2].value == "format":
        if toks[-1].kind not in ("word", "ident"):
            raise SQLRefused("FORMAT needs a format name", SYNTAX_ERROR)
        fmt = _name(toks[-1])
        if fmt not in ALLOWED_FORMATS:
            raise SQLRefused(f"format {fmt} is not allowed; use one of {', '.join(sorted(ALLOWED_FORMATS))}",
                             UNKNOWN_FORMAT)
        toks = toks[:-2]
    if not toks:
        raise SQLRefused("empty query (only a FORMAT clause)", SYNTAX_ERROR)
    first = toks[0]
    if not (first.text == "(" or (first.kind == "word" and first.value in ("select", "with"))):
        raise SQLRefused(f"only SELECT queries are allowed (got {first.text[:30]!r})", READONLY)

    # CTE names: `name AS (` right after WITH or after a comma inside a WITH list
    ctes: set[str] = set()
    cte_refs: set[int] = set()
    stack: list[_Frame] = [_Frame("root")]
    views: set[str] = set()
    refs: list[tuple[int, bool]] = []
    params: set[str] = set()
    n = len(toks)

    def nxt(k: int) -> Token | None:
        return toks[k + 1] if k + 1 < n else None

    def table_at(k: int, in_clause: bool) -> None:
        t = toks[k]
        if t.kind not in ("word", "ident"):
            what = "a file path" if t.kind == "string" else repr(t.text[:30])
            raise SQLRefused(f"only views can be read: {what} is not a table you may read")
        name = _name(t)
        after = nxt(k)
        if after is not None and after.text == ".":
            raise SQLRefused(f"other databases are not allowed ({name}.…): read the analyst views by name")
        if after is not None and after.text == "(":
            raise SQLRefused(f"table functions are not allowed ({name}(...))")
        if t.kind == "word" and t.value in _FORBIDDEN_WORDS | {"select", "with", "from", "where"}:
            raise SQLRefused(f"expected a view name, got {t.text}", SYNTAX_ERROR)
        if name in ctes:
            cte_refs.add(k)
            return
        if name not in allowed:
            hint = ", ".join(sorted(allowed)) or "none"
            raise SQLRefused(f"not allowed to read {name}: views you may read are {hint}")
        views.add(name)
        refs.append((k, in_clause))

    k = 0
    while k < n:
        t = toks[k]
        f = stack[-1]
        if f.expect_table:
            f.expect_table = False
            if t.text == "(":
                following = nxt(k)
                if following is None or not (following.text == "(" or (
                        following.kind == "word" and following.value in ("select", "with"))):
                    raise SQLRefused("a parenthesis in FROM must hold a SELECT", SYNTAX_ERROR)
                stack.append(_Frame("subquery", start=k))
                k += 1
                continue
            table_at(k, False)
            k += 1
            continue
        if t.kind == "param":
            params.add(t.value)
        elif t.kind in ("word", "ident"):
            following = nxt(k)
            if following is not None and following.text == "(":
                fname = _name(t).lower()
                if fname in _DENIED_FUNCTIONS or (
                        fname.startswith(_DENIED_PREFIXES) and fname not in ("urlencode", "urldecode")):
                    raise SQLRefused(f"function {_name(t)} is not allowed")
            if t.kind == "word":
                w = t.value
                if w in _FORBIDDEN_WORDS:
                    raise SQLRefused(f"{t.text.upper()} is not allowed: only a read-only SELECT may run", READONLY)
                if w == "format" and not (following is not None and following.text == "("):
                    raise SQLRefused("FORMAT may only end the query", UNKNOWN_FORMAT)
                if w == "with" and not (following is not None and following.kind == "word"
                                        and following.value in ("totals", "rollup", "cube", "fill", "ties")):
                    f.in_with = True
                    j = k + 1
                    if following is not None and following.kind == "word" and following.value == "recursive":
                        j += 1
                    _cte_at(toks, j, ctes, cte_refs)
                elif w == "select":
                    f.in_with = False
                    f.in_from = False
                    f.array_join = False
                elif w == "from":
                    if not (f.kind == "func" and f.func in _SYNTAX_FROM):
                        f.in_from = True
                        f.array_join = False
                        f.expect_table = True
                elif w == "join":
                    prev = toks[k - 1] if k else None
                    if prev is not None and prev.kind == "word" and prev.value == "array":
                        f.array_join = True
                    else:
                        f.array_join = False
                        f.expect_table = True
                elif w in _FROM_ENDS:
                    f.in_from = False
                    f.array_join = False
                elif w == "in" and not (f.kind == "func" and f.func == "position"):
                    target = nxt(k)
                    if target is not None and target.kind in ("word", "ident"):
                        after = nxt(k + 1)
                        if after is not None and after.text == "(":
                            pass  # a function call (checked when reached)
                        elif target.kind == "word" and target.value in ("select",):
                            pass
                        else:
                            table_at(k + 1, True)
                            k += 2
                            continue
        elif t.text == "(":
            prev = toks[k - 1] if k else None
            if prev is not None and prev.kind in ("word", "ident") and not (
                    prev.kind == "word" and prev.value in _FROM_ENDS | {"in", "as", "and", "or", "not", "on",
                                                                        "using", "by", "from", "join", "with"}):
                stack.append(_Frame("func", func=_name(prev).lower(), start=k))
            else:
                stack.append(_Frame("group", start=k))
        elif t.text == ")":
            if len(stack) == 1:
                raise SQLRefused(f"unbalanced ')' at position {t.pos}", SYNTAX_ERROR)
            stack.pop()
        elif t.text == "," and f.in_from and not f.array_join:
            f.expect_table = True
        elif t.text == "," and f.in_with:
            _cte_at(toks, k + 1, ctes, cte_refs)
        k += 1
    if len(stack) != 1:
        raise SQLRefused("unbalanced '(': the query ends inside parentheses", SYNTAX_ERROR)
    if stack[0].expect_table:
        raise SQLRefused("the query ends where a view name was expected", SYNTAX_ERROR)
    return CheckedSQL(tuple(toks), frozenset(views), tuple(refs), frozenset(ctes), frozenset(cte_refs),
                      frozenset(params), fmt)


def _cte_at(toks: list[Token], j: int, ctes: set[str], cte_refs: set[int]) -> None:
    """Record ``name AS (`` at ``j`` as a CTE (a WITH item that defines a table)."""
    if j + 2 < len(toks) and toks[j].kind in ("word", "ident") and toks[j + 1].kind == "word" \
            and toks[j + 1].value == "as" and toks[j + 2].text == "(":
        ctes.add(_name(toks[j]))
        cte_refs.add(j)
