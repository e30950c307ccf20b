"""`amb serve` over a real chDB store with test facts: scoping per identity kind, disclosure
control for everyone but the producing trust on its own row, pseudonymised incident rows,
clickhouse-connect over the ClickHouse-compatible endpoint (typed results; refusals), the audit
log, tokens, the server RBAC DDL, and `amb serve` as a process that owns the store."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from click.testing import CliRunner
from serve_data import CM, GEO_DIR, GM, NEL, dataset, places

from amb.commands import token as token_cmd
from amb.identities import RegistryFile, issue, load, load_geography, rbac_sql, revoke
from amb.serve import Service, run_catalogue_query, running
from domain.access import Identity, parse_identity
from domain.disclosure import MIN_COUNT, SPECS, SUPPRESSED
from domain.pseudonym import pseudonym
from sinks import migrate as mig
from sinks import queries
from sinks.loader import load_facts
from sinks.store import ChdbStore, quote

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(100, 132))
IDENTITIES = {
    "icb": Identity("icb", "QOP"), "icb_cm": Identity("icb", "QYG"), "rx7": Identity("trust", "RX7"),
    "rru": Identity("trust", "RRU"), "region": Identity("region", "Y62"), "national": Identity("national", "nhse"),
    "analytics": Identity("national", "analytics", incidents=True), "admin": Identity("admin", "ops"),
    "narrow": Identity("icb", "QMF", views=("handover_site_day",)),
}


@dataclass
class Env:
    store: ChdbStore
    service: Service
    url: str
    tokens: dict[str, str]
    identities: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One migrated store with the test facts and one running service for the module (chDB binds
    one directory per process)."""
    tmp = tmp_path_factory.mktemp("serve")
    store = ChdbStore(tmp / "chdb")
    mig.migrate(store)
    mig.load_reference(store)
    inc, hand = dataset()
    load_facts(store, "serve-test", inc, hand)
    path = tmp / "identities.toml"
    tokens = {name: issue(path, ident, name)[0] for name, ident in IDENTITIES.items()}
    service = Service(store, RegistryFile(path), load_geography(GEO_DIR), KEY, audit_interval=0.2)
    try:
        with running(service) as url:
            yield Env(store, service, url, tokens, path)
    finally:
        service.close()
        store.close()


def call(env: Env, path: str, who: str | None = None, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    h = dict(headers or {})
    if who is not None:
        h["Authorization"] = f"Bearer {env.tokens[who]}"
    req = urllib.request.Request(env.url + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def table(env: Env, who: str, path: str) -> dict[str, Any]:
    status, _, body = call(env, path, who)
    assert status == 200, body
    out: dict[str, Any] = json.loads(body)
    return out


def exact(env: Env, metric: str, level: str, by: str = "month") -> list[tuple[Any, ...]]:
    return queries.run(env.store, queries.Query(metric, level, by))


def no_small_counts(metric: str, rows: list[dict[str, Any]]) -> None:
    spec = SPECS[metric]
    for r in rows:
        for c in spec.counts:
            v = r[c]
            assert v == SUPPRESSED or v == 0 or v >= MIN_COUNT, (c, r)
        for c, deps in spec.derived.items():
            if r[c] not in (None, SUPPRESSED):
                assert r[deps[0]] != SUPPRESSED and r[deps[0]] >= MIN_COUNT, (c, r)


def client(env: Env, who: str) -> Any:
    host, port = env.url.split("//")[1].split(":")
    return clickhouse_connect.get_client(host=host, port=int(port), username=IDENTITIES[who].login,
                                         password=env.tokens[who])


# --- authentication -------------------------------------------------------------------------------


def test_requests_without_a_valid_token_are_refused_and_audited(env: Env) -> None:
    status, headers, body = call(env, "/v1/catalogue")
    assert status == 401 and "Bearer" in headers.get("WWW-Authenticate", "")
    assert "authentication required" in json.loads(body)["error"]
    status, _, _ = call(env, "/v1/metrics/dispositions", headers={"Authorization": "Bearer amb_not-a-token"})
    assert status == 401
    # the ClickHouse endpoint answers in ClickHouse's words
    basic = base64.b64encode(b"icb_QOP:wrong").decode()
    status, headers, body = call(env, "/?query=SELECT+1", headers={"Authorization": f"Basic {basic}"})
    assert status == 401 and body.startswith(b"Code: 516. DB::Exception:") and headers["X-ClickHouse-Exception-Code"] == "516"
    # a right token under another identity's user name is refused too
    basic = base64.b64encode(f"icb_QYG:{env.tokens['icb']}".encode()).decode()
    assert call(env, "/?query=SELECT+1", headers={"Authorization": f"Basic {basic}"})[0] == 401
    env.service.audit.flush()
    rows = env.store.query("SELECT count() FROM audit_log WHERE identity = 'anonymous' AND refused AND status = 401")
    assert rows.scalar() >= 4


def test_ping_openapi_and_prometheus_need_no_token(env: Env) -> None:
    assert call(env, "/ping")[2] == b"Ok.\n"
    spec = json.loads(call(env, "/openapi.json")[2])
    assert spec["openapi"].startswith("3.") and "/v1/metrics/{metric}" in spec["paths"] and "/" in spec["paths"]
    call(env, "/v1/catalogue", "icb")
    text = call(env, "/metrics")[2].decode()
    assert 'amb_serve_requests_total{kind="icb",outcome="ok",surface="catalogue"}' in text
    assert "amb_serve_request_seconds_bucket" in text and "amb_serve_audit_rows_total" in text


# --- scoping and disclosure control -------------------------------------------------------------------


def test_the_catalogue_shows_metrics_views_and_the_callers_scope(env: Env) -> None:
    cat = table(env, "icb", "/v1/catalogue")
    assert cat["identity"] == {"id": "icb:QOP", "kind": "icb", "name": "NHS Greater Manchester Integrated Care Board"}
    assert [m["name"] for m in cat["metrics"]] == list(queries.METRICS)
    names = {v["name"] for v in cat["views"]}
    assert "non_conveyance_icb_month" in names and all(v["comment"] for v in cat["views"])
    assert cat["scope"]["fine_codes"]["lsoa"] == 1702 and cat["scope"]["incidents"]["pseudonymised"] is True
    assert cat["sql"]["user"] == "icb_QOP"
    narrow = table(env, "narrow", "/v1/catalogue")
    assert [v["name"] for v in narrow["views"]] == ["handover_site_day"]


def test_an_icb_sees_every_icbs_aggregates_with_small_counts_suppressed(env: Env) -> None:
    got = table(env, "icb", "/v1/metrics/dispositions?level=icb")
    rows = {r["code"]: r for r in got["rows"]}
    assert set(rows) == {GM, CM, NEL}
    no_small_counts("dispositions", got["rows"])
    assert rows[CM]["incidents"] == SUPPRESSED  # 6 incidents
    assert got["suppressed_cells"] > 0 and "1-7" in got["disclosure"]
    # every figure shown is the exact figure
    for r in exact(env, "dispositions", "icb"):
        shown = rows[r[0]]
        for c, v in zip(queries.TABLES["dispositions"], r, strict=True):
            assert shown[c] in (v, SUPPRESSED)


@pytest.mark.parametrize("who", ["icb", "icb_cm", "rru", "region", "national", "admin"])
@pytest.mark.parametrize("metric,level", [("dispositions", "icb"), ("dispositions", "trust"), ("response", "icb"),
                                          ("handover", "site"), ("handover", "icb"), ("response", "lsoa"),
                                          ("dispositions", "england")])
def test_no_one_but_the_producing_trust_sees_a_small_count(env: Env, who: str, metric: str, level: str) -> None:
    got = table(env, who, f"/v1/metrics/{metric}?level={level}&by=month")
    ident = IDENTITIES[who]
    others = [r for r in got["rows"] if not (ident.kind == "trust" and level == "trust" and r["code"] == ident.code)]
    no_small_counts(metric, others)


def test_the_producing_trust_sees_its_own_row_exactly_and_others_suppressed(env: Env) -> None:
    truth = {r[0]: dict(zip(queries.TABLES["dispositions"], r, strict=True)) for r in exact(env, "dispositions", "trust")}
    assert 0 < truth["RX7"]["conveyed_elsewhere"] < MIN_COUNT or 0 < truth["RX7"]["hear_and_treat"] < MIN_COUNT or \
        any(0 < v < MIN_COUNT for k, v in truth["RX7"].items() if k not in ("code", "period"))
    mine = {r["code"]: r for r in table(env, "rx7", "/v1/metrics/dispositions?level=trust")["rows"]}
    assert mine["RX7"] == truth["RX7"]
    theirs = {r["code"]: r for r in table(env, "rru", "/v1/metrics/dispositions?level=trust")["rows"]}
    assert theirs["RX7"] != truth["RX7"] and SUPPRESSED in theirs["RX7"].values()
    assert mine["RRU"] != truth["RRU"]  # RRU's small counts are hidden from RX7
    no_small_counts("dispositions", [mine["RRU"]])


def test_fine_levels_are_shown_only_inside_ones_own_area(env: Env) -> None:
    gm_lsoas = {p.lsoa for p in places(GM, 20)}
    nel_lsoas = {p.lsoa for p in places(NEL, 20)}
    icb = {r["code"] for r in table(env, "icb", "/v1/metrics/dispositions?level=lsoa")["rows"]}
    assert icb == gm_lsoas
    national = {r["code"] for r in table(env, "national", "/v1/metrics/dispositions?level=lsoa")["rows"]}
    assert gm_lsoas | nel_lsoas <= national
    region = {r["code"] for r in table(env, "region", "/v1/metrics/dispositions?level=lsoa")["rows"]}
    assert gm_lsoas <= region and not region & nel_lsoas
    status, _, body = call(env, f"/v1/metrics/dispositions?level=lsoa&code={sorted(nel_lsoas)[0]}", "icb")
    assert status == 403 and "own area" in json.loads(body)["error"]


def test_csv_shows_suppressed_cells_as_a_star(env: Env) -> None:
    status, headers, body = call(env, "/v1/metrics/dispositions?level=icb&format=csv", "icb")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    lines = body.decode().splitlines()
    assert lines[0] == ",".join(queries.TABLES["dispositions"]) and any(",*" in line for line in lines[1:])


def test_breakdown_by_imd_decile_is_suppressed_too(env: Env) -> None:
    got = table(env, "icb", "/v1/metrics/dispositions?level=england&by=month&breakdown=imd_decile")
    assert got["view"] == "dispositions_imd_month" and got["rows"]
    no_small_counts("dispositions_imd_month", got["rows"])
    status, _, _ = call(env, "/v1/metrics/dispositions?level=icb&breakdown=imd_decile", "icb")
    assert status == 400


@pytest.mark.parametrize("path,status", [
    ("/v1/metrics/nonsense", 404), ("/v1/metrics/dispositions?level=galaxy", 400),
    ("/v1/metrics/dispositions?from=yesterday", 400), ("/v1/metrics/dispositions?colour=blue", 400),
    ("/v1/metrics/dispositions?format=xml", 400), ("/v1/incidents?limit=0", 400), ("/v1/incidents?limit=x", 400),
])
def test_bad_requests_get_a_clear_4xx(env: Env, path: str, status: int) -> None:
    got, _, body = call(env, path, "analytics")
    assert got == status and json.loads(body)["error"]


# --- incident-level rows -------------------------------------------------------------------------------


def test_a_trust_reads_its_own_incidents_as_published(env: Env) -> None:
    got = table(env, "rx7", "/v1/incidents?limit=10000")
    assert got["pseudonymised"] is False and len(got["rows"]) == 126
    assert {r["trust"] for r in got["rows"]} == {"RX7"} and all(r["incident_id"] for r in got["rows"])


def test_an_icb_reads_its_geographys_incidents_pseudonymised(env: Env) -> None:
    got = table(env, "icb", "/v1/incidents?limit=10000&from=2026-05-01&to=2026-05-31")
    rows = got["rows"]
    assert got["pseudonymised"] is True and len(rows) == 120 and {r["icb"] for r in rows} == {GM}
    assert "incident_id" not in got["columns"] and got["columns"][0] == "incident_pseudonym"
    assert rows[0]["incident_pseudonym"] in {pseudonym(KEY, "RX7", f"057-{k:05d}") for k in range(120)}
    assert "057-0" not in json.dumps(rows)
    page = table(env, "icb", "/v1/incidents?limit=7&offset=7")["rows"]
    assert page == rows[7:14]


@pytest.mark.parametrize("who", ["region", "national", "admin"])
def test_others_read_no_incidents_unless_configured(env: Env, who: str) -> None:
    status, _, body = call(env, "/v1/incidents", who)
    assert status == 403 and "incident-level" in json.loads(body)["error"]


def test_a_national_identity_configured_for_incidents_reads_them_pseudonymised(env: Env) -> None:
    got = table(env, "analytics", "/v1/incidents?limit=10000")
    assert got["pseudonymised"] is True and len(got["rows"]) == 166


# --- the ClickHouse-compatible endpoint ------------------------------------------------------------------


def protected_view(env: Env, view: str) -> list[tuple[Any, ...]]:
    """The service's protected snapshot of a view (suppressed cells None), checked here to hide
    every small count and to be the view's exact figures elsewhere."""
    rows = list(env.service.snapshot(view).rows)
    res = env.store.query(f"SELECT * FROM {view}")
    truth = {tuple(r[:2]): r for r in res.rows}
    spec = SPECS[view]
    for r in rows:
        for c, v, t in zip(res.columns, r, truth[tuple(r[:2])], strict=True):
            assert v == t or (v is None and (c in spec.counts or c in spec.derived))
            if c in spec.counts:
                assert v is None or v == 0 or v >= MIN_COUNT
    return rows


def test_a_small_area_cannot_be_had_as_its_parent_less_its_siblings(env: Env) -> None:
    """CM (6 incidents) and GM are the North West's ICBs in the test data: with the region's
    figure shown, CM alone hidden would be the region less GM."""
    icbs = {r["code"]: r for r in table(env, "icb", "/v1/metrics/dispositions?level=icb")["rows"]}
    region = {r["code"]: r for r in table(env, "icb", "/v1/metrics/dispositions?level=region")["rows"]}
    parent = {GM: "E40000010", CM: "E40000010", NEL: "E40000003"}
    for col in SPECS["dispositions"].counts:
        for reg, row in region.items():
            if row[col] == SUPPRESSED:
                continue
            hidden = [c for c, p in parent.items() if p == reg and icbs[c][col] == SUPPRESSED]
            assert len(hidden) != 1, (col, reg, hidden)


def test_clickhouse_connect_reads_a_view_with_types_and_suppression(env: Env) -> None:
    c = client(env, "icb")
    res = c.query("SELECT * FROM non_conveyance_icb_month ORDER BY icb")
    assert res.column_names == tuple(env.service.views_meta()["non_conveyance_icb_month"][0])
    types = dict(zip(res.column_names, (t.name for t in res.column_types), strict=True))
    assert types["month"] == "Date" and types["incidents"] == "Nullable(Int64)"
    assert types["non_conveyance_rate"] == "Nullable(Float64)" and "String" in types["icb"]
    expected = sorted(protected_view(env, "non_conveyance_icb_month"), key=lambda r: str(r[0]))
    assert [tuple(r) for r in res.result_rows] == [tuple(r) for r in expected]
    assert any(v is None for r in res.result_rows for v in r)  # suppressed cells are NULL
    for r in res.named_results():
        for col in SPECS["non_conveyance_icb_month"].counts:
            assert r[col] is None or r[col] == 0 or r[col] >= MIN_COUNT
    c.close()


def test_clickhouse_connect_runs_joins_ctes_parameters_and_other_formats(env: Env) -> None:
    c = client(env, "national")
    res = c.query("WITH m AS (SELECT icb, incidents FROM non_conveyance_icb_month) "
                  "SELECT count() AS n, countIf(incidents IS NULL) AS hidden FROM m")
    n, hidden = res.result_rows[0]
    assert n == 3 and hidden >= 2
    res = c.query("SELECT icb FROM non_conveyance_icb_month WHERE icb = {icb:String}", parameters={"icb": GM})
    assert res.result_rows == [(GM,)]
    res = c.query("SELECT icb FROM non_conveyance_icb_month WHERE icb = %(icb)s", parameters={"icb": GM})
    assert res.result_rows == [(GM,)]
    arrow = c.query_arrow("SELECT site, day, arrivals FROM handover_site_day ORDER BY site, day")
    assert arrow.num_rows == len(protected_view(env, "handover_site_day"))
    assert c.command("SELECT count() FROM response_category_month") > 0
    c.close()
    # RowBinaryWithNamesAndTypes and JSON straight over HTTP, as curl would
    auth = {"X-ClickHouse-User": "national_nhse", "X-ClickHouse-Key": env.tokens["national"]}
    status, headers, body = call(env, "/", method="POST", headers=auth,
                                 body=b"SELECT icb, incidents FROM non_conveyance_icb_month ORDER BY icb FORMAT JSON")
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSON"
    assert [r["icb"] for r in json.loads(body)["data"]] == sorted([GM, CM, NEL])
    status, headers, body = call(env, "/?default_format=RowBinaryWithNamesAndTypes", method="POST", headers=auth,
                                 body=b"SELECT icb FROM non_conveyance_icb_month ORDER BY icb")
    assert status == 200 and body.startswith(b"\x01\x03icb")


def test_a_narrowed_identity_reads_only_its_views(env: Env) -> None:
    c = client(env, "narrow")
    assert c.command("SELECT count() FROM handover_site_day") > 0
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError, match="497"):
        c.query("SELECT * FROM non_conveyance_icb_month")
    c.close()


FORBIDDEN = [
    "SELECT * FROM incident_facts",
    "SELECT * FROM system.tables",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM numbers(3)",
    "SELECT * FROM non_conveyance_icb_month SETTINGS readonly = 0",
    "SELECT * FROM non_conveyance_icb_month; DROP TABLE incident_facts",
    "INSERT INTO audit_log SELECT * FROM audit_log",
    "SELECT * FROM non_conveyance_icb_month WHERE icb IN (SELECT icb FROM incident_changes)",
    "SELECT * FROM non_conveyance_icb_month /* */ UNION ALL SELECT * FROM `incident_facts`",
    "SELECT * FROM Python(amb_batch)",
]


@pytest.mark.parametrize("sql", FORBIDDEN)
def test_clickhouse_connect_is_refused_on_forbidden_queries(env: Env, sql: str) -> None:
    c = client(env, "icb")
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError) as err:
        c.query(sql)
    assert re.search(r"code: (497|62|164)", str(err.value))
    c.close()
    status, headers, body = call(env, "/", method="POST", body=sql.encode(),
                                 headers={"X-ClickHouse-User": "icb_QOP", "X-ClickHouse-Key": env.tokens["icb"]})
    assert status in (400, 403) and re.match(rb"Code: \d+\. DB::Exception: ", body)
    assert headers["X-ClickHouse-Exception-Code"] in ("497", "62", "164")


def test_a_cte_named_like_a_table_never_reaches_the_table(env: Env) -> None:
    c = client(env, "icb")
    res = c.query("WITH incident_facts AS (SELECT 1 AS a) SELECT * FROM incident_facts")
    assert res.result_rows == [(1,)]
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError, match="(?i)unknown table|60"):
        c.query("SELECT * FROM (WITH incident_facts AS (SELECT 1 AS a) SELECT * FROM incident_facts) AS s, "
                "incident_facts")
    c.close()


def test_engine_errors_in_the_callers_sql_come_back_as_clickhouse_errors(env: Env) -> None:
    c = client(env, "icb")
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError, match="(?i)no_such_column|47"):
        c.query("SELECT no_such_column FROM non_conveyance_icb_month")
    c.close()


# --- audit --------------------------------------------------------------------------------------------


def test_every_query_is_audited_with_identity_surface_rows_and_refusals(env: Env) -> None:
    marker = f"audit-{time.time_ns()}"
    call(env, f"/v1/metrics/handover?level=site&code={marker}", "icb_cm")
    c = client(env, "icb_cm")
    c.query(f"SELECT '{marker}' AS m FROM non_conveyance_icb_month")
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError):
        c.query(f"SELECT '{marker}' FROM incident_facts")
    c.close()
    env.service.audit.flush()
    rows = env.store.query(
        "SELECT surface, refused, rows, reason, params FROM audit_log WHERE identity = 'icb:QYG' "
        "AND (position(query, {m:String}) > 0 OR position(params, {m:String}) > 0) ORDER BY at", {"m": marker}).rows
    assert [(r[0], bool(r[1])) for r in rows] == [("metric", False), ("sql", False), ("sql", True)]
    assert json.loads(rows[0][4])["code"] == marker and rows[0][2] == 0
    assert rows[1][2] == 3 and "not allowed to read incident_facts" in rows[2][3]
    # the admin reads the log over HTTP; others may not
    got = table(env, "admin", "/v1/audit?identity=icb:QYG&limit=5")
    assert got["rows"] and {r["identity"] for r in got["rows"]} == {"icb:QYG"}
    assert call(env, "/v1/audit", "icb")[0] == 403


def test_hostile_query_text_is_refused_and_still_audited(env: Env) -> None:
    marker = f"hostile-{time.time_ns()}"
    body = f"SELECT '{marker}'\x00; DROP TABLE audit_log \udcff".encode("utf-8", "surrogateescape") + b"\xff\xfe"
    status, _, _ = call(env, "/", "icb", method="POST", body=body)
    assert status == 400
    env.service.audit.flush()
    assert env.service.audit.pending() == 0
    rows = env.store.query("SELECT refused, query FROM audit_log WHERE position(query, {m:String}) > 0",
                           {"m": marker}).rows
    assert len(rows) == 1 and rows[0][0] and "\x00" in rows[0][1]
    assert env.store.query("SELECT count() FROM audit_log").scalar() > 0


def test_a_revoked_token_stops_working(env: Env) -> None:
    tok, rec = issue(env.identities, IDENTITIES["national"], "short-lived")
    assert call(env, "/v1/catalogue", headers={"Authorization": f"Bearer {tok}"})[0] == 200
    revoke(env.identities, rec.id)
    deadline = time.monotonic() + 30
    while call(env, "/v1/catalogue", headers={"Authorization": f"Bearer {tok}"})[0] != 401:
        assert time.monotonic() < deadline, "revocation never took effect"
        time.sleep(0.2)


def test_amb_query_goes_through_the_same_path_and_is_audited(env: Env) -> None:
    q = queries.Query("dispositions", "icb", "month")
    as_icb = run_catalogue_query(env.store, IDENTITIES["icb"], q, geo_dir=GEO_DIR)
    over_http = table(env, "icb", "/v1/metrics/dispositions?level=icb&by=month")
    assert as_icb.dicts() == over_http["rows"]
    operator = run_catalogue_query(env.store, None, q, geo_dir=GEO_DIR)
    assert operator.rows == exact(env, "dispositions", "icb")
    rows = env.store.query("SELECT identity, surface FROM audit_log WHERE surface = 'cli' ORDER BY at DESC LIMIT 2").rows
    assert sorted(rows) == [("icb:QOP", "cli"), ("operator:local", "cli")]


# --- the commissioner web page hook -------------------------------------------------------------------


def test_the_web_page_hook_is_a_clear_503_until_the_page_module_exists(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amb.insight.web", None)  # as if the module were absent
    status, _, body = call(env, "/")
    assert status == 503 and b"amb.insight.web" in body
    # ClickHouse's interface is untouched: GET / with a query parameter is SQL
    status, _, body = call(env, "/?query=SELECT+1", "icb")
    assert status == 200 and body == b"1\n"


def test_the_web_page_gets_the_identity_from_header_token_parameter_or_cookie(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []

    def handle(service: Service, ident: Identity | None, path: str, params: Any) -> tuple[int, str, bytes]:
        assert service is env.service
        seen.append((ident, path, dict(params)))
        return 200, "text/html; charset=utf-8", b"<p>hello</p>"

    page = types.ModuleType("amb.insight.web")
    page.handle = handle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "amb.insight.web", page)
    status, headers, body = call(env, "/")
    assert status == 200 and body == b"<p>hello</p>" and headers["Content-Type"].startswith("text/html")
    assert seen[-1] == (None, "/", {})
    assert call(env, "/report/icb/QOP?month=2026-05", "icb")[0] == 200
    assert seen[-1] == (IDENTITIES["icb"], "/report/icb/QOP", {"month": "2026-05"})
    # ?token= signs a browser in: the identity now, and an HttpOnly SameSite=Strict cookie for later
    status, headers, _ = call(env, f"/?token={env.tokens['rx7']}&tab=handover")
    assert seen[-1] == (IDENTITIES["rx7"], "/", {"tab": "handover"})  # the token is not passed on
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"amb_token={env.tokens['rx7']};") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    call(env, "/report/x", headers={"Cookie": f"amb_token={env.tokens['rx7']}"})
    assert seen[-1][0] == IDENTITIES["rx7"]
    # a wrong token (parameter or cookie) is no identity, and the cookie is cleared
    status, headers, _ = call(env, "/?token=amb_wrong")
    assert status == 200 and seen[-1][0] is None and "amb_token=\"\"" in headers["Set-Cookie"]
    call(env, "/", headers={"Cookie": "amb_token=amb_wrong"})
    assert seen[-1][0] is None
    # ?token= (empty) signs out
    _, headers, _ = call(env, "/?token=", headers={"Cookie": f"amb_token={env.tokens['rx7']}"})
    assert seen[-1][0] is None and "Max-Age=0" in headers["Set-Cookie"]


# --- tokens, identities file, server DDL ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_token_commands_keep_only_hashes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"identities{suffix}"
    runner = CliRunner()
    out = runner.invoke(token_cmd.command, ["issue", "--identity", "icb:qop", "--label", "alice", "--identities", str(path)])
    assert out.exit_code == 0, out.output
    tok = out.stdout.splitlines()[0]
    assert tok.startswith("amb_") and tok not in path.read_text()
    reg = load(path)
    assert reg.authenticate(tok) == reg.identity("icb:QOP") and reg.identity("icb:QOP").name.startswith("NHS Greater")
    listed = runner.invoke(token_cmd.command, ["list", "--identities", str(path)])
    assert "icb:QOP" in listed.output and "alice" in listed.output and "active" in listed.output
    bad = runner.invoke(token_cmd.command, ["issue", "--identity", "icb:QZZ", "--identities", str(path)])
    assert bad.exit_code != 0 and "QZZ" in bad.output
    rev = runner.invoke(token_cmd.command, ["revoke", reg.tokens[0].id[:6], "--identities", str(path)])
    assert rev.exit_code == 0 and "revoked" in rev.output
    assert load(path).authenticate(tok) is None


def test_the_rbac_ddl_parses_and_the_committed_file_is_current(env: Env, tmp_path: Path) -> None:
    check = CliRunner().invoke(token_cmd.command, ["ddl", "--example", "--check"])
    assert check.exit_code == 0, check.output
    text = (ROOT / "deploy" / "clickhouse" / "rbac.sql").read_text()
    path = tmp_path / "ids.toml"
    issue(path, parse_identity("trust:RX7"))
    _, rec = issue(path, parse_identity("icb:QOP"))
    revoke(path, rec.id)
    live = rbac_sql(load(path))
    assert "DROP USER IF EXISTS `icb_QOP`" in live and "CREATE USER OR REPLACE `trust_RX7`" in live
    assert "USING trust = 'RX7' TO `trust_RX7`" in live
    for ddl in (text, live):
        for stmt in ddl.split(";\n"):
            body = "\n".join(line for line in stmt.splitlines() if not line.startswith("--")).split("  --")[0].strip()
            if body:
                env.store.query(f"SELECT formatQuery({quote(body)})")  # raises on a syntax error


# --- `amb serve` as a process ----------------------------------------------------------------------------

CLI = ("import sys, click\nfrom amb.commands import db, serve, token, audit, query\n"
       "@click.group()\ndef cli(): pass\n"
       "for m in (db, serve, token, audit, query): cli.add_command(m.command)\n"
       "cli.main(sys.argv[1:])\n")
SEED = ("import sys\nsys.path.insert(0, 'tests')\nfrom serve_data import dataset\nfrom sinks.store import ChdbStore\n"
        "from sinks.loader import load_facts\nfrom amb.identities import issue\nfrom domain.access import Identity\n"
        "s = ChdbStore(sys.argv[1] + '/chdb'); load_facts(s, 'seed', *dataset()); s.close()\n"
        "from pathlib import Path\nprint(issue(Path(sys.argv[1]) / 'identities.toml', Identity('icb', 'QYG'))[0])\n")


def test_amb_serve_owns_the_store_answers_and_stops_cleanly(tmp_path: Path) -> None:
    """And `amb query` gives the same table locally (the service's code path, in its own process)
    as through the running service (--url), as the identity or the token's identity."""
    env = {"AMB_DATA_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}

    def amb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=300)

    assert amb("db", "migrate").returncode == 0
    seeded = subprocess.run([sys.executable, "-c", SEED, str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert seeded.returncode == 0, seeded.stderr
    icb_tok = seeded.stdout.strip()
    issued = amb("token", "issue", "--identity", "admin:ops")
    assert issued.returncode == 0, issued.stderr
    tok = issued.stdout.strip()
    ask = ("query", "dispositions", "--level", "lad", "--format", "json")
    local = amb(*ask, "--identity", "icb:QYG")
    assert local.returncode == 0, local.stderr
    local_rows = json.loads(local.stdout)
    assert local_rows and any(SUPPRESSED in r.values() for r in local_rows)  # the analyst's view, not exact
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://[\d.]+:\d+)", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        url = m.group(1)
        with urllib.request.urlopen(url + "/ping", timeout=30) as r:
            assert r.read() == b"Ok.\n"
        busy = amb("audit")
        assert busy.returncode != 0 and "in use" in busy.stderr and "--url" in busy.stderr
        via = amb("audit", "--url", url, "--token", tok, "--format", "csv")
        assert via.returncode == 0, via.stderr
        assert "identity" in via.stdout.splitlines()[0]
        remote = amb(*ask, "--url", url, "--token", icb_tok)
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout) == local_rows
        assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in out
    after = amb("audit", "--format", "csv")
    assert after.returncode == 0 and "admin:ops,audit" in after.stdout
    assert "icb:QYG,cli,metric:dispositions" in after.stdout and "icb:QYG,metric,metric:dispositions" in after.stdout


# --- OpenAPI fuzz (schemathesis): no request the spec allows, or nearly allows, gets a 500 -------------

try:  # a dev extra; missing, the fuzz test fails (it does not skip)
    import schemathesis
    from schemathesis.checks import not_a_server_error
except ImportError:  # pragma: no cover
    schemathesis = None

from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402

from amb.serve import openapi_spec  # noqa: E402

if schemathesis is not None:
    SCHEMA = schemathesis.openapi.from_dict(openapi_spec())

    @SCHEMA.parametrize()
    @hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def test_openapi_fuzz_finds_no_server_errors(case: Any, env: Env) -> None:
        response = case.call(base_url=env.url, headers={"Authorization": f"Bearer {env.tokens['analytics']}"})
        if response.status_code == 503 and response.content.startswith(b"the commissioner web page (amb.insight.web) "
                                                                        b"is not installed"):
            return  # GET / without SQL is the web page, absent until amb.insight.web is written
        case.validate_response(response, checks=[not_a_server_error])
else:  # pragma: no cover
    def test_openapi_fuzz_finds_no_server_errors() -> None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]' (it is a dev extra)")


# --- the result cache ------------------------------------------------------------------------------------


def test_the_cache_serves_a_stale_entry_briefly_while_one_rebuild_runs_then_the_new_one() -> None:
    from amb.serve import Cache

    cache = Cache(max_stale=60)
    builds: list[int] = []

    def build(value: int) -> Any:
        def go() -> int:
            builds.append(value)
            return value
        return go

    assert cache.get("k", build(1), lambda _v: 1) == 1
    assert cache.get("k", build(99), lambda _v: 1) == 1 and builds == [1]  # a hit
    cache.invalidate()
    assert cache.get("k", build(2), lambda _v: 1) == 1  # stale, and a rebuild starts
    deadline = time.monotonic() + 30
    while cache.get("k", build(3), lambda _v: 1) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert builds == [1, 2]
    cache.close()
    strict = Cache(max_stale=0)
    assert strict.get("k", build(1), lambda _v: 1) == 1
    strict.invalidate()
    assert strict.get("k", build(2), lambda _v: 1) == 2  # no staleness allowed: rebuilt at once


def test_a_cached_table_reads_nested_cached_tables_fresh_not_stale() -> None:
    from amb.serve import Cache

    cache = Cache(max_stale=60)
    data = {"v": 1}

    def outer() -> int:
        return 10 * cache.get("inner", lambda: data["v"], lambda _v: 1)

    assert cache.get("outer", outer, lambda _v: 1) == 10
    data["v"] = 2
    cache.invalidate()
    cache.get("outer", outer, lambda _v: 1)  # stale answer; the rebuild must see inner's new value
    deadline = time.monotonic() + 30
    while cache.get("outer", outer, lambda _v: 1) != 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
