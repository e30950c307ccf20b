"""The Grafana dashboards (deploy/grafana/dashboards) against what the code really exports.

No Grafana runs here, so check what would break silently in one: JSON that does not load, clashing
panel ids, datasource uids the provisioning file does not define, PromQL naming a metric no
process declares (a typo gives an empty panel, not an error), and ClickHouse SQL naming a table
the migrations do not create. Metric names come from the prometheus_client declarations in the
project's code (``Counter("amb_...", ...)``, read from the source, not from a list kept here);
the alert rules are held to the same names. PromQL syntax is checked by promtool and the
ClickHouse queries are run on an empty, migrated chDB store.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yml"
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
MIGRATIONS = sorted((ROOT / "sinks" / "migrations").glob("*.sql"))
CODE_DIRS = ("amb", "streams", "sinks", "domain")
EXPECTED = {"platform-health.json", "live-handover.json"}

# Series every Prometheus has without any process declaring them.
PROMETHEUS_BUILTINS = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})
# Metrics a panel or rule already uses that their owners have been asked to add (operations
# report to the lead). While undeclared they are reported as warnings, not failures; once the code
# declares them the warning asks for the entry to be removed. Nothing else may be undeclared.
REQUESTED = {
}
PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "Inf", "NaN",
})
# What each prometheus_client type exposes for a declared name (counters drop a given _total).
EXPOSED = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
    # custom collectors (prometheus_client.core) yield these families at scrape time
    "CounterMetricFamily": ("_total", "_created"),
    "GaugeMetricFamily": ("",),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count", "_created"),
    "SummaryMetricFamily": ("", "_sum", "_count", "_created"),
    "InfoMetricFamily": ("_info",),
    "StateSetMetricFamily": ("",),
    "GaugeHistogramMetricFamily": ("_bucket", "_gsum", "_gcount"),
    "UnknownMetricFamily": ("",),
}
CLIENT_MODULES = ("prometheus_client", "prometheus_client.core", "prometheus_client.metrics_core")
# Stand-ins for Grafana's built-in variables when the expressions are handed to promtool/chDB.
PROM_BUILTIN_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
                     "__interval_ms": "60000", "__range_ms": "3600000"}
FROM_S, TO_S = 1_767_225_600, 1_767_312_000  # 2026-01-01 .. 2026-01-02 UTC


# --- what the code declares -------------------------------------------------------------------
def _string(node: ast.AST, consts: dict[str, str]) -> str | None:
    """A string expression's value when it is built from literals and module constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return consts.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string(node.left, consts), _string(node.right, consts)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            inner = value.value if isinstance(value, ast.FormattedValue) else value
            part = _string(inner, consts)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    return None


def _metric_type(call: ast.Call, aliases: dict[str, str]) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return aliases.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in aliases:
        return func.attr if aliases[func.value.id] == "<module>" and func.attr in EXPOSED else None
    return None


def declarations(path: Path) -> Iterator[tuple[str, str]]:
    """(type, full metric name) of every prometheus_client metric a module declares."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in CLIENT_MODULES:
            aliases.update({a.asname or a.name: a.name for a in node.names if a.name in EXPOSED})
        elif isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: "<module>" for a in node.names if a.name == "prometheus_client"})
    if not aliases:
        return
    for node in ast.walk(tree):  # local aliases: g = GaugeMetricFamily
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            aliases.update({t.id: aliases[node.value.id] for t in node.targets if isinstance(t, ast.Name)})
    consts: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and (value := _string(node.value, consts)) is not None:
                    consts[target.id] = value
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (kind := _metric_type(node, aliases)) is None:
            continue
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        name_node = node.args[0] if node.args else kwargs.get("name")
        name = _string(name_node, consts) if name_node is not None else None
        assert name is not None, (f"{path.relative_to(ROOT)}:{node.lineno}: cannot read the metric name "
                                  "(declare it with a literal or a module-level constant)")
        prefix = [_string(kwargs[k], consts) or "" for k in ("namespace", "subsystem") if k in kwargs]
        yield kind, "_".join([p for p in prefix if p] + [name])


def declared_series() -> dict[str, str]:
    """Series name -> the declaring module, for every metric the project's code declares."""
    out: dict[str, str] = {}
    for directory in CODE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for kind, name in declarations(path):
                base = name.removesuffix("_total") if kind.startswith("Counter") else name
                for suffix in EXPOSED[kind]:
                    out[base + suffix] = str(path.relative_to(ROOT))
    return out


def client_default_series() -> set[str]:
    """process_* and python_* series prometheus_client's default registry exports."""
    from prometheus_client import REGISTRY

    return {s.name for family in REGISTRY.collect() for s in family.samples
            if s.name.startswith(("process_", "python_"))}


def recorded_series() -> set[str]:
    return {rule["record"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


@pytest.fixture(scope="module")
def known_series() -> set[str]:
    return set(declared_series()) | client_default_series() | recorded_series() | PROMETHEUS_BUILTINS


def undeclared(names: set[str], known: set[str], where: str) -> set[str]:
    """Names neither known nor requested; requested ones still missing are warned about."""
    unknown = names - known
    for name in sorted(unknown & set(REQUESTED)):
        warnings.warn(f"{where} uses {name}, requested but not declared yet ({REQUESTED[name]})", stacklevel=2)
    return unknown - set(REQUESTED)


# --- PromQL and SQL scanning ------------------------------------------------------------------
def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"\boffset\s+-?\w+", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        if not m.group(2) and m.group(1) not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def _strip_sql(sql: str) -> str:
    sql = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", sql)


def sql_relations(sql: str) -> set[str]:
    """Tables and views a query reads (FROM/JOIN targets that are not subqueries, CTEs or functions)."""
    s = _strip_sql(sql)
    ctes = set(re.findall(r"\b(\w+)\s+AS\s*\(", s, flags=re.I))
    names = set()
    for m in re.finditer(r"\b(?:FROM|JOIN)\s+(?!\()([`\"]?[\w.]+[`\"]?)(?![\w.`\"])(?!\s*\()", s, flags=re.I):
        name = m.group(1).strip('`"').split(".")[-1]
        if name not in ctes:
            names.add(name)
    return names


def created_relations() -> set[str]:
    created = set()
    for path in MIGRATIONS:
        up = _strip_sql(path.read_text().split("-- down")[0])
        created |= set(re.findall(
            r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|(?:MATERIALIZED\s+)?VIEW|DICTIONARY)\s+"
            r"(?:IF\s+NOT\s+EXISTS\s+)?[`\"]?(\w+)", up, flags=re.I))
    return created


# --- dashboards -------------------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) pairs, each target's datasource resolved from the panel's when unset."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource")
            yield panel, {**target, "datasource": ds}


def provisioned() -> dict[str, str]:
    """Datasource uid -> type from the provisioning file."""
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return {s["uid"]: s["type"] for s in sources}


def variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Dashboard variable -> the value used to check queries (its 'All' value)."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        out[var["name"]] = var.get("allValue") or ".*"
    return out


def substitute(text: str, values: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {text!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, text)


def prom_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every Prometheus target and query variable."""
    out = []
    for panel, target in targets(dashboard):
        if target["datasource"]["type"] == "prometheus":
            out.append((f"panel {panel['id']} {panel.get('title')!r} {target['refId']}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query" and var["datasource"]["type"] == "prometheus":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def clickhouse_sql(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"panel {panel['id']} {panel.get('title')!r} {target['refId']}", target["rawSql"])
            for panel, target in targets(dashboard)
            if target["datasource"]["type"] == "grafana-clickhouse-datasource"]


def clickhouse_macros(sql: str) -> str:
    """Expand the ClickHouse plugin's time macros as it would for a fixed range."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 rf"\1 >= toDateTime({FROM_S}) AND \1 <= toDateTime({TO_S})", sql)
    sql = re.sub(r"\$__dateFilter\((\w+)\)",
                 rf"\1 >= toDate(toDateTime({FROM_S})) AND \1 <= toDate(toDateTime({TO_S}))", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({FROM_S})").replace("$__toTime", f"toDateTime({TO_S})")
    return sql.replace("$__interval_s", "60")


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe:
        return exe
    if os.getuid() == 0 and shutil.which("apt-get"):
        pytest.fail("promtool not found although root and apt are available: run `make setup` "
                    "(apt-get install prometheus)", pytrace=False)
    pytest.skip("prometheus not installed (apt-get install prometheus)")


# --- tests ------------------------------------------------------------------------------------
def test_the_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} >= EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    assert dash["title"] and dash["uid"] and len(dash["uid"]) <= 40
    assert 36 <= dash["schemaVersion"] <= 41, "export with a Grafana 10/11 schema version"
    assert dash.get("id") is None, "provisioned dashboards carry no database id"
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in all_panels(dash):
        assert panel.get("title"), f"panel {panel['id']} has no title"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"panel {panel['id']} is wider than the grid"
        for other in all_panels(dash):
            g2 = other["gridPos"]
            overlap = (other["id"] < panel["id"] and grid["x"] < g2["x"] + g2["w"] and g2["x"] < grid["x"] + grid["w"]
                       and grid["y"] < g2["y"] + g2["h"] and g2["y"] < grid["y"] + grid["h"])
            assert not overlap, f"panels {other['id']} and {panel['id']} overlap"
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['id']} {panel['title']!r} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"panel {panel['id']}: duplicate refIds"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_datasources_are_provisioned(path: Path) -> None:
    sources = provisioned()
    dash = load(path)
    used = [t["datasource"] for _, t in targets(dash)]
    used += [v["datasource"] for v in dash.get("templating", {}).get("list", []) if "datasource" in v]
    for ds in used:
        assert isinstance(ds, dict), f"datasource {ds!r} should be {{type, uid}}"
        assert ds["uid"] in sources, f"datasource uid {ds['uid']} is not in {DATASOURCES.name}"
        assert sources[ds["uid"]] == ds["type"], f"{ds['uid']} is a {sources[ds['uid']]}, not {ds['type']}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_promql_uses_declared_metrics(path: Path, known_series: set[str]) -> None:
    problems = []
    for where, expr in prom_exprs(load(path)):
        names = promql_metric_names(expr)
        assert names, f"{path.name} {where}: no metric in {expr!r}"
        if unknown := undeclared(names, known_series, f"{path.name} {where}"):
            problems.append(f"{where}: {', '.join(sorted(unknown))}")
    assert not problems, (f"{path.name} selects metrics no prometheus_client declaration in "
                          f"{', '.join(CODE_DIRS)}/ (nor a recording rule) defines:\n" + "\n".join(problems))


def test_alert_rules_use_declared_metrics(known_series: set[str]) -> None:
    problems = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = f"{path.name} {rule.get('alert') or rule.get('record')}"
                if unknown := undeclared(promql_metric_names(rule["expr"]), known_series, name):
                    problems.append(f"{name}: {', '.join(sorted(unknown))}")
    assert not problems, "rules select metrics the code does not declare:\n" + "\n".join(problems)


def test_requested_metrics_are_not_declared_yet(known_series: set[str]) -> None:
    for name in sorted(set(REQUESTED) & known_series):
        warnings.warn(f"{name} is declared now: remove it from REQUESTED in {Path(__file__).name}", stacklevel=1)


def test_promql_parses(tmp_path: Path) -> None:
    """Every dashboard expression, as a recording rule, passes `promtool check rules`."""
    exe = promtool()
    rules = []
    for path in DASHBOARDS:
        dash = load(path)
        values = {**PROM_BUILTIN_VARS, **variables(dash)}
        for i, (_, expr) in enumerate(prom_exprs(dash)):
            rules.append({"record": f"grafana:{path.stem.replace('-', '_')}:q{i}", "expr": substitute(expr, values)})
    rule_file = tmp_path / "dashboards.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([exe, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_clickhouse_queries_read_migrated_relations(path: Path) -> None:
    created = created_relations()
    assert created, "no CREATE statements found in sinks/migrations"
    for where, sql in clickhouse_sql(load(path)):
        relations = sql_relations(sql)
        assert relations, f"{path.name} {where}: reads no table"
        unknown = relations - created
        assert not unknown, f"{path.name} {where}: {sorted(unknown)} is not created by sinks/migrations"


RUN_QUERIES = """
import json, sys
from pathlib import Path
from sinks import migrate
from sinks.store import ChdbStore

queries = json.load(sys.stdin)
errors = {}
with ChdbStore(Path(sys.argv[1])) as store:
    migrate.migrate(store)
    for where, sql in queries:
        try:
            store.query(sql)
        except Exception as exc:
            errors[where] = str(exc)
print(json.dumps(errors))
"""


def test_clickhouse_queries_run_on_the_migrated_store(tmp_path: Path) -> None:
    """Each query runs, on empty tables, against a chDB store built by the real migrations (in a
    child process: chDB binds one data directory per process)."""
    queries = []
    for path in DASHBOARDS:
        dash = load(path)
        values = variables(dash)
        queries += [(f"{path.name} {where}", substitute(clickhouse_macros(sql), values))
                    for where, sql in clickhouse_sql(dash)]
    assert queries, "no ClickHouse panels"
    proc = subprocess.run([sys.executable, "-c", RUN_QUERIES, str(tmp_path / "chdb")], input=json.dumps(queries),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not errors, "\n".join(f"{k}: {v}" for k, v in errors.items())


# --- the scanners themselves ------------------------------------------------------------------
def test_promql_scanner() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(amb_sink_insert_seconds_bucket{job=~"a|b"}[$__rate_interval])))'
            ' / on (job) group_left (x) amb:sink_consumer_lag:sum offset 5m and hour() >= 8 unless up == bool 0')
    assert promql_metric_names(expr) == {"amb_sink_insert_seconds_bucket", "amb:sink_consumer_lag:sum", "up"}
    assert promql_metric_names('topk(5, sum(x_total{a="by (y)"}) without (b))') == {"x_total"}


def test_sql_scanner() -> None:
    sql = """WITH t AS (SELECT 1) SELECT * FROM amb.handover_site_day AS h
             LEFT JOIN (SELECT x FROM imd_lsoa21 FINAL) AS d ON d.x = h.site  -- FROM comment
             JOIN t ON 1 WHERE s = 'FROM nowhere' AND y IN (SELECT 1 FROM numbers(3))"""
    assert sql_relations(sql) == {"handover_site_day", "imd_lsoa21"}


def test_declaration_scanner(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from prometheus_client import Counter, Histogram as H\nimport prometheus_client as pc\n"
        "PREFIX = 'amb_worker'\n"
        "A = Counter('amb_a_total', 'a', ['trust'])\nB = H(f'{PREFIX}_batch_size', 'b')\n"
        "C = pc.Gauge('lag', 'c', namespace='amb', subsystem='sink')\n"
        "from prometheus_client.core import GaugeMetricFamily\n"
        "def collect():\n    g = GaugeMetricFamily\n    yield g('amb_live_x', 'x', labels=['icb'])\n"
    )
    assert sorted(declarations(module)) == [
        ("Counter", "amb_a_total"), ("Gauge", "amb_sink_lag"), ("GaugeMetricFamily", "amb_live_x"),
        ("Histogram", "amb_worker_batch_size")]
