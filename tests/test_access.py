"""Identities, scopes and the SQL guard. Every attack in ATTACKS is refused; every query in
PERMITTED passes, and what the engine is given reads nothing but the permitted views."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.access import (
    ACCESS_DENIED,
    SYNTAX_ERROR,
    Area,
    Identity,
    IncidentAccess,
    SQLRefused,
    check_sql,
    parse_identity,
    scope,
    tokenize,
)
from domain.access import AccessError as _AccessError
from domain.disclosure import VIEWS

NC = "non_conveyance_icb_month"
HS = "handover_site_day"
PERMITTED_VIEWS = frozenset({NC, HS})

ATTACKS = [
    "FORMAT JSON", " format TSV ;",  # nothing but a FORMAT clause (found by hypothesis)
    # other tables, other databases, system tables, in every quoting and case
    "SELECT * FROM incident_facts",
    "SELECT * FROM default.incident_facts",
    "SELECT * FROM system.users",
    "SELECT * FROM system . users",
    "SELECT * FROM `system`.`users`",
    'SELECT * FROM "system"."users"',
    "sElEcT * fRoM SyStEm.TaBlEs",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    'SELECT * FROM "incident_facts"',
    "SELECT * FROM `incident_facts`",
    "SELECT * FROM Non_Conveyance_Icb_Month",
    "SELECT * FROM `non_conveyance_icb_month.x`",
    "SELECT * FROM response_category_month",
    # table functions
    "SELECT * FROM file('/etc/passwd', 'CSV', 'line String')",
    "SELECT * FROM FILE('/etc/passwd')",
    "SELECT * FROM `file`('/etc/passwd')",
    "SELECT * FROM url('http://example.org/x', CSV)",
    "SELECT * FROM remote('10.0.0.1', default.incident_facts)",
    "SELECT * FROM remoteSecure('h', db.t, 'u', 'p')",
    "SELECT * FROM s3('https://b/k', 'CSV')",
    "SELECT * FROM hdfs('hdfs://h/f', 'CSV')",
    "SELECT * FROM python(x)",
    "SELECT * FROM Python(amb_batch)",
    "SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('h', 'db', 't', 'u', 'p')",
    "SELECT * FROM jdbc('ds', 't')",
    "SELECT * FROM odbc('dsn', 't')",
    "SELECT * FROM input('a String')",
    "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'a String')",
    "SELECT * FROM cluster('c', default, incident_facts)",
    "SELECT * FROM numbers(10)",
    "SELECT * FROM generateRandom('a Int8')",
    "SELECT * FROM values('a Int8', 1)",
    "SELECT * FROM merge(currentDatabase(), '.*')",
    "SELECT * FROM view(SELECT * FROM incident_facts)",
    "SELECT * FROM dictionary('d')",
    "SELECT * FROM '/etc/passwd'",
    f"SELECT * FROM {NC}, 'data.csv'",
    "SELECT * FROM {t:String}",
    "SELECT * FROM {t:Identifier}",
    f"SELECT * FROM {NC} WHERE icb = {{x:Identifier}}",
    # functions that reach outside the query
    "SELECT file('/etc/passwd')",
    "SELECT `file`('/etc/passwd')",
    "SELECT dictGet('d', 'a', toUInt64(1))",
    "SELECT dictGetString('d', 'a', toUInt64(1))",
    "SELECT \"dictGet\"('d', 'a', 1)",
    "SELECT joinGet('incident_facts', 'trust', 'x')",
    "SELECT hasColumnInTable('default', 'incident_facts', 'trust')",
    "SELECT getSetting('readonly')",
    f"SELECT * FROM {NC} WHERE sleep(3) = 0",
    f"SELECT * FROM {NC} WHERE sleepEachRow(1) = 0",
    "SELECT currentDatabase()",
    # settings, writes, DDL and other statements
    f"SELECT * FROM {NC} SETTINGS readonly = 0",
    f"SELECT * FROM {NC} settings max_threads=1",
    "SET readonly = 0",
    f"SELECT * FROM {NC} INTO OUTFILE '/tmp/x'",
    f"SELECT * FROM {NC} FORMAT Template",
    f"SELECT * FROM {NC} FORMAT CapnProto",
    f"SELECT * FROM {NC} FORMAT JSON FORMAT CSV",
    f"SELECT * FROM (SELECT * FROM {NC} FORMAT JSON)",
    f"INSERT INTO incident_facts SELECT * FROM {NC}",
    "ALTER TABLE incident_facts DELETE WHERE 1",
    "ALTER TABLE incident_facts UPDATE trust = 'x' WHERE 1",
    "CREATE TABLE x ENGINE = Memory AS SELECT 1",
    "CREATE VIEW v AS SELECT * FROM incident_facts",
    "DROP TABLE incident_facts",
    "TRUNCATE TABLE incident_facts",
    "OPTIMIZE TABLE incident_facts FINAL",
    "KILL QUERY WHERE 1",
    "SYSTEM SHUTDOWN",
    "GRANT ALL ON *.* TO x",
    "REVOKE ALL ON *.* FROM x",
    "ATTACH TABLE x",
    "DETACH TABLE incident_facts",
    "RENAME TABLE incident_facts TO x",
    "EXCHANGE TABLES incident_facts AND x",
    "SHOW TABLES",
    "SHOW CREATE TABLE incident_facts",
    "DESCRIBE incident_facts",
    "DESC incident_facts",
    "EXPLAIN SELECT * FROM incident_facts",
    "EXISTS TABLE incident_facts",
    "USE system",
    "WATCH x",
    "BACKUP TABLE incident_facts TO Disk('backups', 'x.zip')",
    "DELETE FROM incident_facts WHERE 1",
    "UPDATE incident_facts SET trust = 'x' WHERE 1",
    # multiple statements
    f"SELECT * FROM {NC}; DROP TABLE incident_facts",
    "SELECT 1; SELECT 2",
    f"SELECT * FROM {NC};;",
    # comments hiding things
    f"SELECT * FROM {NC} -- harmless\n, incident_facts",
    "SELECT * FROM /* comment */ incident_facts",
    f"SELECT * FROM {NC} # x\n UNION ALL SELECT * FROM incident_facts",
    f"SELECT * FROM {NC} /* unterminated",
    f"SELECT * FROM {NC}/**/,/**/incident_facts",
    # strings hiding things
    "SELECT 'a\\' FROM incident_facts",
    "SELECT 'unterminated FROM incident_facts",
    "SELECT * FROM \"non_conveyance_icb_month",
    # subqueries, CTEs, unions, joins
    f"SELECT * FROM {NC} WHERE icb IN (SELECT icb FROM incident_facts)",
    f"SELECT * FROM {NC} WHERE icb IN incident_facts",
    f"SELECT * FROM {NC} WHERE icb NOT IN system.tables",
    f"SELECT * FROM {NC} WHERE icb GLOBAL IN incident_facts",
    "SELECT (SELECT count() FROM incident_changes)",
    "SELECT exists(SELECT 1 FROM incident_facts)",
    "SELECT * FROM (SELECT * FROM incident_facts)",
    "SELECT * FROM ((SELECT * FROM incident_facts))",
    "WITH x AS (SELECT * FROM incident_facts) SELECT * FROM x",
    "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM incident_facts) SELECT * FROM r",
    f"WITH a AS (SELECT * FROM {NC}), b AS (SELECT * FROM incident_facts) SELECT * FROM a, b",
    f"SELECT icb FROM {NC} UNION ALL SELECT name FROM system.tables",
    "SELECT 1 UNION ALL SELECT * FROM incident_facts",
    f"(SELECT * FROM {NC}) UNION ALL (SELECT * FROM incident_facts)",
    f"SELECT * FROM {NC} JOIN incident_facts ON 1 = 1",
    f"SELECT * FROM {NC} AS a, incident_facts",
    f"SELECT * FROM {NC} AS a GLOBAL ANY LEFT JOIN incident_facts AS b USING icb",
    f"SELECT * FROM {NC} PASTE JOIN incident_facts",
    f"SELECT * FROM {NC} ARRAY JOIN [1] AS x JOIN incident_facts USING x",
    f"SELECT * FROM {NC} LEFT JOIN (SELECT * FROM incident_facts) USING (icb)",
    f"SELECT * FROM {NC} SAMPLE 1/2 OFFSET 1/2, incident_facts",
    f"SELECT * FROM {NC} FINAL, incident_facts",
    f"SELECT * FROM {NC} CROSS JOIN numbers(3)",
    # lexical tricks
    "SELECT * FROM \uff53ystem.tables",
    "SELECT 1\x00; DROP TABLE incident_facts",
    "SELECT $$x$$",
    "SELECT (1",
    "SELECT 1)",
    "",
    "   -- only a comment",
    ";",
    f"SELECT * FROM {NC} WHERE 1abc",
    f"SELECT * FROM {NC} WHERE @x",
    "SELECT * FROM",
]

PERMITTED = [
    f"SELECT * FROM {NC}",
    f"select icb, sum(incidents) from {NC} n where month >= '2026-01-01' group by icb order by icb desc",
    f"SELECT * FROM `{NC}`",
    f'SELECT * FROM "{NC}" AS n',
    f"SeLeCt * FrOm {NC} LiMiT 5",
    f"SELECT * FROM {NC};",
    f"SELECT * FROM {NC} FORMAT Native",
    f"SELECT * FROM {NC} FORMAT RowBinaryWithNamesAndTypes;",
    f"SELECT * FROM {NC} -- a comment\n WHERE incidents > 10 /* another */",
    f"SELECT * FROM {NC} WHERE icb = {{icb:String}} AND month >= {{m:Date}}",
    f"WITH x AS (SELECT * FROM {HS}) SELECT * FROM x JOIN {NC} USING day",
    f"WITH a AS (SELECT icb FROM {NC}), b AS (SELECT site FROM {HS}) SELECT * FROM a, b",
    f"SELECT icb FROM {NC} UNION ALL SELECT site FROM {HS}",
    f"SELECT * FROM {NC} AS a JOIN {HS} AS b ON a.month = b.day",
    f"SELECT * FROM (SELECT icb, incidents FROM {NC}) WHERE incidents > 10",
    f"SELECT * FROM {NC} WHERE icb IN (SELECT icb FROM {NC} WHERE incidents > 100)",
    f"SELECT * FROM {NC} WHERE icb IN {NC}",
    f"SELECT extract(YEAR FROM month), trim(BOTH ' ' FROM icb), substring(icb FROM 1 FOR 3) FROM {NC}",
    f"SELECT position(icb IN 'E54') FROM {NC}",
    "SELECT version(), timezone()",
    "SELECT 1 AS check",
    f"SELECT count() FROM {NC}",
    f"SELECT icb, sum(incidents) OVER (PARTITION BY icb ORDER BY month) FROM {NC}",
    f"SELECT arrayMap(x -> x + 1, [1, 2]), (1, 2).1, [1][1], 1::Int32 FROM {NC}",
    f"SELECT icb, count() FROM {NC} GROUP BY icb WITH TOTALS",
    f"SELECT month FROM {NC} ORDER BY month WITH FILL",
    f"SELECT icb FROM {NC} LIMIT 1 BY icb",
    f"SELECT * FROM {NC} ARRAY JOIN [1, 2] AS a, [3, 4] AS b",
    f"SELECT * EXCEPT (icb) FROM {NC}",
    f"SELECT CASE WHEN incidents > 8 THEN 'many' ELSE 'few' END, CAST(incidents AS Int64), "
    f"month + INTERVAL 1 DAY FROM {NC}",
    f"SELECT 'it''s -- not a comment', 'a\\'b', \"icb\" FROM {NC}",
    "WITH incident_facts AS (SELECT 1 AS a) SELECT * FROM incident_facts",
    f"SELECT format('{{}}-{{}}', icb, toString(month)) FROM {NC}",
    f"SELECT * FROM {NC} /* /* nested */ ; DROP TABLE x */ WHERE 1",
    f"SELECT * FROM {NC} WHERE icb = 'x' OR 1 = 1 --",
]


@pytest.mark.parametrize("sql", ATTACKS)
def test_every_attack_is_refused(sql: str) -> None:
    with pytest.raises(SQLRefused) as err:
        check_sql(sql, PERMITTED_VIEWS)
    assert err.value.code in (ACCESS_DENIED, SYNTAX_ERROR, 164, 73)
    assert str(err.value)


def _substitute(sql: str) -> str:
    return check_sql(sql, PERMITTED_VIEWS).render({v: f"SELECT 1 AS snapshot_of_{v}" for v in PERMITTED_VIEWS})


@pytest.mark.parametrize("sql", PERMITTED)
def test_permitted_queries_pass_and_the_rendering_reads_only_the_substitutes(sql: str) -> None:
    checked = check_sql(sql, PERMITTED_VIEWS)
    assert checked.views <= PERMITTED_VIEWS
    rendered = _substitute(sql)
    # every view reference was replaced: the rendering passes the guard with NO view permitted
    again = check_sql(rendered, frozenset())
    assert again.views == frozenset()
    for table in ("incident_facts", NC, HS):
        for t in tokenize(rendered):
            if t.kind in ("word", "ident") and t.value == table:
                # a view name may survive only as the alias of its substitute or a column qualifier
                assert table != "incident_facts"


def test_the_view_substitute_keeps_the_callers_alias_or_takes_the_view_name() -> None:
    assert _substitute(f"SELECT n.icb FROM {NC} n") == f"SELECT n.icb FROM (SELECT 1 AS snapshot_of_{NC}) n"
    assert _substitute(f"SELECT {NC}.icb FROM {NC}") == (
        f"SELECT {NC}.icb FROM (SELECT 1 AS snapshot_of_{NC}) AS `{NC}`")
    assert _substitute(f"SELECT 1 WHERE 'E54' IN {NC}") == f"SELECT 1 WHERE 'E54' IN (SELECT 1 AS snapshot_of_{NC})"


def test_comments_never_reach_the_engine_and_strings_are_requoted() -> None:
    out = _substitute(f"SELECT 'x''y' /* DROP */ FROM {NC} -- tail\n")
    assert "DROP" not in out and "tail" not in out and "'x\\'y'" in out


def test_a_cte_used_outside_its_with_cannot_reach_a_real_table_of_that_name() -> None:
    sql = "SELECT * FROM (WITH incident_facts AS (SELECT 1 AS a) SELECT * FROM incident_facts) AS s, incident_facts"
    out = _substitute(sql)
    assert not re.search(r"(?<![\w`])incident_facts\b", out), out
    assert out.count("`__amb_cte_0_incident_facts`") == 3


def test_format_and_parameters_are_reported() -> None:
    c = check_sql(f"SELECT * FROM {NC} WHERE icb = {{icb:String}} FORMAT JSONEachRow;", PERMITTED_VIEWS)
    assert c.format == "JSONEachRow" and c.params == {"icb"}
    assert "FORMAT" not in c.render({NC: "SELECT 1"})


def test_refusals_name_what_may_be_read() -> None:
    with pytest.raises(SQLRefused, match="views you may read are handover_site_day, non_conveyance_icb_month"):
        check_sql("SELECT * FROM incident_facts", PERMITTED_VIEWS)


# --- fuzz: fragments of attacks and permitted queries glued together -----------------------------

FRAGMENTS = [
    "SELECT", "*", "FROM", NC, HS, "incident_facts", "system.tables", ",", "(", ")", "WHERE", "1",
    "=", "'x'", "--", "\n", "/*", "*/", "#", "`", '"', "'", "UNION ALL", "JOIN", "ON", "IN", "WITH",
    "AS", "x", "file('f')", "numbers(3)", ";", "FORMAT", "JSON", "SETTINGS", "INTO OUTFILE", "\\",
    "{p:String}", "ARRAY JOIN", "extract(", "position(", "exists(", ".", "\x00", "$", "GLOBAL",
]


@settings(deadline=None, max_examples=2000)
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=16))
def test_glued_fragments_are_refused_cleanly_or_read_only_permitted_views(parts: list[str]) -> None:
    sql = " ".join(parts)
    try:
        checked = check_sql(sql, PERMITTED_VIEWS)
    except SQLRefused:
        return
    assert checked.views <= PERMITTED_VIEWS
    rendered = checked.render({v: "SELECT 1" for v in checked.views})
    # the engine's text passes the guard again with no view permitted: no table is left in it
    try:
        check_sql(rendered, frozenset())
    except SQLRefused as exc:
        # only a CTE name the guard renamed may be unknown to the engine; never a real table
        assert "__amb_cte_" in str(exc), (sql, rendered, exc)


# --- identities and scopes ------------------------------------------------------------------------

GM = Area({"icb": frozenset({"E54000057"}), "region": frozenset({"E40000010"}),
           "lsoa": frozenset({"E01005000"}), "msoa": frozenset({"E02001000"})})


def test_identities_parse_and_validate() -> None:
    assert parse_identity("icb:qop") == Identity("icb", "QOP")
    assert parse_identity("trust:rx7").id == "trust:RX7"
    assert parse_identity("region:Y56").id == "region:Y56"
    assert parse_identity("national:NHSE").id == "national:nhse"
    for bad in ("icb", "icb:", "icb:E54000057", "trust:QOP", "region:London", "king:x", "admin:a b"):
        with pytest.raises(_AccessError):
            parse_identity(bad)
    with pytest.raises(_AccessError, match="not an analyst view"):
        Identity("icb", "QOP", views=("incident_facts",))


def test_coarse_levels_for_everyone_fine_levels_inside_ones_own_area() -> None:
    icb = scope(Identity("icb", "QOP"), GM)
    assert icb.allows("icb", "E54000008") and icb.allows("england", "E92000001") and icb.allows("site", "RXX01")
    assert icb.allows("lsoa", "E01005000") and not icb.allows("lsoa", "E01000001")
    assert not icb.allows("msoa", "unknown")
    national = scope(Identity("national", "nhse"), Area())
    assert national.allows("lsoa", "E01000001") and national.allows("lsoa", "unknown")


def test_only_a_trust_on_its_own_trust_row_is_exempt_from_disclosure_control() -> None:
    rx7 = scope(Identity("trust", "RX7"), Area())
    assert rx7.exempt("trust", "RX7")
    assert not rx7.exempt("trust", "RX8") and not rx7.exempt("icb", "RX7")
    for ident in (Identity("icb", "QOP"), Identity("national", "nhse"), Identity("admin", "ops")):
        assert not scope(ident, GM).exempt("trust", "RX7")


def test_incident_rows_trust_own_icb_pseudonymised_others_only_when_configured() -> None:
    assert scope(Identity("trust", "RX7"), Area()).incidents == IncidentAccess("trust", frozenset({"RX7"}), False)
    assert scope(Identity("icb", "QOP"), GM).incidents == IncidentAccess("icb", frozenset({"E54000057"}), True)
    assert scope(Identity("region", "Y62"), GM).incidents is None
    assert scope(Identity("national", "nhse"), Area()).incidents is None
    assert scope(Identity("region", "Y62", incidents=True), GM).incidents == IncidentAccess(
        "region", frozenset({"E40000010"}), True)
    assert scope(Identity("national", "nhse", incidents=True), Area()).incidents == IncidentAccess(
        None, frozenset(), True)


def test_views_default_to_all_and_can_be_narrowed() -> None:
    assert scope(Identity("icb", "QOP"), GM).views == frozenset(VIEWS)
    assert scope(Identity("icb", "QOP", views=(NC,)), GM).views == {NC}
