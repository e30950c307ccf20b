"""The Prometheus alert and recording rules, their promtool unit tests, and both scrape configs.

promtool (Debian's ``prometheus`` package, installed by `make setup`) does the real checking:
``check rules`` parses every expression, ``test rules`` runs deploy/prometheus/tests/*.test.yml,
``check config`` validates the compose config and the one `amb stack up` generates. Where promtool
is missing on a machine that could install it (root with apt), these tests fail; elsewhere they
skip, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from amb import config
from amb.stack import prometheus as stack_prometheus

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROM_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*.test.yml"))
COMPOSE_CONFIG = PROM_DIR / "prometheus.compose.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
SEVERITIES = {"page", "ticket"}
TEAMS = {"platform", "operations"}


def promtool() -> str:
    """The promtool binary; a failure where it could be installed, a skip where it cannot."""
    exe = shutil.which("promtool")
    if exe:
        return exe
    if os.getuid() == 0 and shutil.which("apt-get"):
        pytest.fail("promtool not found although root and apt are available: run `make setup` "
                    "(apt-get install prometheus)", pytrace=False)
    pytest.skip("prometheus not installed (apt-get install prometheus)")


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{proc.stdout}{proc.stderr}"


def load_rules() -> list[dict[str, Any]]:
    """Every rule of every rule file, each with its group name under ``_group``."""
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [{**rule, "_group": group["name"]} for rule in group["rules"]]
    return rules


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"`", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def up_alert_job_regex(alert_name: str) -> re.Pattern[str]:
    expr = next(a["expr"] for a in alerts() if a["alert"] == alert_name)
    m = re.search(r'up\{job=~"([^"]+)"\}', expr)
    assert m, f"{alert_name} does not select up{{job=~...}}: {expr}"
    return re.compile(m.group(1))


# --------------------------------------------------------------------------------------------
def test_rule_files_exist() -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    assert TEST_FILES, f"no promtool tests in {PROM_DIR / 'tests'}"


def test_promtool_check_rules() -> None:
    assert_ok(run_promtool("check", "rules", *map(str, RULE_FILES)))


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_unit_tests(test_file: Path) -> None:
    proc = run_promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout


def test_unit_tests_load_the_shipped_rules() -> None:
    for path in TEST_FILES:
        spec = yaml.safe_load(path.read_text())
        loaded = {(path.parent / f).resolve() for f in spec["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_FILES}, f"{path.name} loads {loaded}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                counts = firing if check.get("exp_alerts") else quiet
                counts[check["alertname"]] = counts.get(check["alertname"], 0) + 1
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert not (set(firing) | set(quiet)) - set(names), "tests name alerts that do not exist"
    for name in names:
        assert firing.get(name), f"no promtool test shows {name} firing"
        assert quiet.get(name), f"no promtool test shows {name} not firing"


def test_every_recording_rule_is_tested() -> None:
    exprs = [check["expr"] for path in TEST_FILES for case in yaml.safe_load(path.read_text())["tests"]
             for check in case.get("promql_expr_test") or []]
    for rule in load_rules():
        if "record" in rule:
            assert any(re.search(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])", e) for e in exprs), \
                f"no promql_expr_test evaluates {rule['record']}"


def test_alerts_carry_severity_team_and_runbook() -> None:
    anchors = github_anchors(OPERATIONS_DOC.read_text())
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"Amb[A-Z][A-Za-z]+", name), f"{name}: alert names are Amb<CamelCase>"
        labels, notes = alert.get("labels", {}), alert.get("annotations", {})
        assert labels.get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
        assert labels.get("team") in TEAMS, f"{name}: team must be one of {TEAMS}"
        for key in ("summary", "description", "runbook_url"):
            assert notes.get(key, "").strip(), f"{name}: missing {key} annotation"
        doc, _, anchor = notes["runbook_url"].partition("#")
        assert doc == "docs/operations.md", f"{name}: runbook_url should point into docs/operations.md"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"


def test_recording_rules_follow_the_naming_convention() -> None:
    for rule in load_rules():
        if "record" in rule:
            assert re.fullmatch(r"amb:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), \
                f"{rule['record']}: recording rules are named amb:<metric>:<operation>"


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """The compose config, with its container rule path pointed at the repository's rules."""
    cfg = yaml.safe_load(COMPOSE_CONFIG.read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"], "compose rule path changed: update this test"
    cfg["rule_files"] = [str(RULES_DIR / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_promtool("check", "config", str(path))
    assert_ok(proc)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in proc.stdout + proc.stderr


def test_local_stack_config_is_valid(tmp_path: Path) -> None:
    """The config `amb stack up` writes, exactly as written, loads the shipped rules."""
    settings = config.load({}, data_dir=tmp_path)
    paths = stack_prometheus.write_config(settings)
    proc = run_promtool("check", "config", str(paths.config))
    assert_ok(proc)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in proc.stdout + proc.stderr


def test_up_alerts_match_the_jobs_both_configs_scrape() -> None:
    compose_jobs = {j["job_name"] for j in yaml.safe_load(COMPOSE_CONFIG.read_text())["scrape_configs"]}
    local_jobs = {j["job_name"] for j in stack_prometheus.config(config.load({}))["scrape_configs"]}
    for alert_name, component in (("AmbWorkerDown", "worker"), ("AmbSinkDown", "sink")):
        regex = up_alert_job_regex(alert_name)
        for where, jobs in (("compose", compose_jobs), ("local", local_jobs)):
            matched = {j for j in jobs if regex.fullmatch(j)}
            assert len(matched) == 1, f"{alert_name} matches {matched or 'no job'} in the {where} config"
            assert component in matched.pop()
