"""`amb serve` with CLICKHOUSE_URL: the service reads a ClickHouse SERVER over HTTP. No server runs
here, so the test starts a tiny one: a subprocess speaking ClickHouse's HTTP interface (query in
the URL or body, ``param_*`` parameters, ``FORMAT`` clause or ``default_format``, the
``X-ClickHouse-*`` headers clickhouse-connect reads) in front of the real engine (chDB, with the
test facts), recording every request. The service's answers must be those of the embedded store,
and what it sent must be reads with bound parameters, the audit insert and the change probe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_data import GEO_DIR  # noqa: E402

from amb.identities import Registry, TokenRecord, hash_token, load_geography  # noqa: E402
from amb.serve import STORE_PROBE, Service, running  # noqa: E402
from domain.access import Identity  # noqa: E402
from domain.disclosure import MIN_COUNT, SUPPRESSED  # noqa: E402
from sinks.store import ClickHouseServerStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ICB = Identity("icb", "QOP")
TOKEN = "amb_server-test"

SERVER = r'''
import json, re, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse
sys.path.insert(0, "tests")
import chdb
from serve_data import dataset
from sinks import migrate as mig
from sinks.loader import load_facts
from sinks.store import ChdbStore

store = ChdbStore(sys.argv[1]); mig.migrate(store); mig.load_reference(store); load_facts(store, "seed", *dataset())
store.close()
conn = chdb.connect(sys.argv[1])
lock = threading.Lock()
log = open(sys.argv[2], "a", buffering=1)
FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.I)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self, method):
        u = urlparse(self.path)
        q = dict(parse_qsl(u.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode() if method == "POST" else ""
        text = "\n".join(t for t in (q.get("query", ""), body) if t)
        fmt = q.get("default_format") or "TabSeparated"
        m = FORMAT.search(text)
        if m:
            fmt, text = m.group(1), text[: m.start()]
        params = {k[6:]: v for k, v in q.items() if k.startswith("param_")}
        log.write(json.dumps({"method": method, "query": text, "params": params, "format": fmt,
                              "settings": {k: v for k, v in q.items() if k != "query" and not k.startswith("param_")}}) + "\n")
        try:
            with lock:
                res = conn.query(text, fmt, params=params)
            out = bytes(res.bytes()) if res is not None else b""
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0]
            code = re.search(r"Code: (\d+)", msg)
            self.send_response(500)
            self.send_header("X-ClickHouse-Exception-Code", code.group(1) if code else "0")
            self.end_headers()
            self.wfile.write(msg.encode())
            return
        self.send_response(200)
        for k, v in (("X-ClickHouse-Format", fmt), ("X-ClickHouse-Timezone", "UTC"),
                     ("X-ClickHouse-Server-Display-Name", "recording-fake"), ("X-ClickHouse-Query-Id", "q"),
                     ("X-ClickHouse-Summary", '{"read_rows":"0","read_bytes":"0","written_rows":"0","written_bytes":"0","total_rows_to_read":"0","result_rows":"0","result_bytes":"0","elapsed_ns":"0"}'),
                     ("Content-Length", str(len(out)))):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self): self.answer("GET")
    def do_POST(self): self.answer("POST")

srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {srv.server_address[1]}", flush=True)
srv.serve_forever()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(URL of the recording ClickHouse-speaking server, its request log)."""
    tmp = tmp_path_factory.mktemp("chserver")
    requests = tmp / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp / "chdb"), str(requests)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"port (\d+)", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        yield f"http://default:@127.0.0.1:{m.group(1)}/default", requests
    finally:
        proc.terminate()
        proc.wait(30)


def sent(requests: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in requests.read_text().splitlines()]


def get(url: str, path: str) -> dict[str, Any]:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def test_with_a_server_the_service_reads_it_with_bound_parameters_and_audits_into_it(
        server: tuple[str, Path]) -> None:
    url, requests = server
    store = ClickHouseServerStore.from_url(url)
    registry = Registry((ICB,), (TokenRecord("t", ICB.id, hash_token(TOKEN)),))
    service = Service(store, registry, load_geography(GEO_DIR), b"k" * 32, audit_interval=0, probe_interval=0.0)
    try:
        with running(service) as base:
            before = len(sent(requests))
            table = get(base, "/v1/metrics/dispositions?level=icb&by=month&from=2026-05-01&to=2026-05-31")
            assert {r["code"] for r in table["rows"]} >= {"E54000057", "E54000008", "E54000029"}
            for r in table["rows"]:
                assert all(v == SUPPRESSED or v == 0 or v >= MIN_COUNT for k, v in r.items() if k not in ("code", "period"))
            assert any(SUPPRESSED in r.values() for r in table["rows"])  # Cheshire and Merseyside's few
            # the SQL endpoint: the protected view read from the server, evaluated here
            host, port = base.split("//")[1].split(":")
            client = clickhouse_connect.get_client(host=host, port=int(port), username=ICB.login, password=TOKEN)
            res = client.query("SELECT icb, sum(incidents) AS n FROM non_conveyance_icb_month GROUP BY icb ORDER BY icb")
            client.close()
            got: dict[str, Any] = {str(r[0]): r[1] for r in res.result_rows}
            assert got["E54000029"] == 40  # North East London, shown
            assert got["E54000008"] is None and got["E54000057"] is None  # 6, and its complement in the region
            mine = sent(requests)[before:]
        # what went to the server: reads with parameters bound by the server, the audit rows, the probe
        queries_sent = [r["query"].strip() for r in mine]
        assert STORE_PROBE in queries_sent
        metric = [r for r in mine if "incident_rollup_monthly" in r["query"]]
        assert metric and all(r["params"].get("level") == "icb" and "{lo:Int64}" not in r["params"] for r in metric)
        assert all("'icb'" not in r["query"] for r in metric)  # bound, not interpolated
        assert any(q.startswith("SELECT * FROM non_conveyance_icb_month") for q in queries_sent)
        writes = [q for q in queries_sent if not q.upper().startswith(("SELECT", "DESCRIBE", "WITH"))]
        assert writes and all(q.startswith("INSERT INTO audit_log") for q in writes), writes
        assert all("icb:QOP" in q for q in writes)
        # a change on the server (merged parts) is seen by the next request's probe: caches dropped
        version = service.cache.version
        urllib.request.urlopen(urllib.request.Request(url.replace("default:@", "") .rsplit("/", 1)[0] + "/",
                                                      data=b"OPTIMIZE TABLE incident_changes FINAL", method="POST"),
                               timeout=60).read()
        time.sleep(0.05)
        service.metric(ICB, "dispositions", {"level": "icb"})
        assert service.cache.version > version
    finally:
        service.close()
        store.close()
