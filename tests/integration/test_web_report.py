"""The commissioner web page in a real headless browser (Debian's chromium, driven over the DevTools
protocol): sign in with a token, pick an ICB and a month, read its report. No console errors, the
chosen ICB's published figures on the page, and a screenshot that is not blank.

Skipped, loudly, only where chromium is not installed (`apt-get install -y chromium`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import ICB, PERIOD, built_store, context, oracle_figures

from amb.identities import RegistryFile, issue, load_geography
from amb.insight.render import fmt
from amb.serve import Service, running
from domain.access import Identity
from domain.disclosure import SUPPRESSED
from domain.icb_report import disclose
from sinks.store import ChdbStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GEO_DIR = Path(__file__).resolve().parents[2] / "data" / "geo"
KEY = bytes(range(32))

if CHROMIUM is None:  # pragma: no cover - depends on the machine
    print("\n" + "!" * 100 + "\nSKIPPING the web page browser test: chromium is not installed "
          "(apt-get install -y chromium)\n" + "!" * 100)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Service]]:
    """(base URL of a running `amb serve` over the simulated store, an ICB analyst's token)."""
    tmp = tmp_path_factory.mktemp("web")
    ids = tmp / "identities.toml"
    token = issue(ids, Identity("icb", "QRL"), "web-test")[0]
    store = ChdbStore(built_store(tmp_path_factory))  # the report tests' store, when they ran first
    service = Service(store, RegistryFile(ids), load_geography(GEO_DIR), KEY, audit_interval=0.2)
    try:
        with running(service) as url:
            yield url, token, service
    finally:
        service.close()
        store.close()


class Browser:
    """One headless chromium and a DevTools session on its page; records console errors."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0
        self.errors: list[str] = []
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        mid = self.n
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=90)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        self.events.append(msg)
        if m == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails']}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")

    async def until_loaded(self, start: int) -> None:
        """Wait for a Page.loadEventFired after event index ``start``."""
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]):
            self._event(await self.ws.receive_json(timeout=90))

    async def go(self, url: str) -> None:
        start = len(self.events)
        await self.call("Page.navigate", url=url)
        await self.until_loaded(start)

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def submit(self, form_js: str) -> None:
        start = len(self.events)
        await self.js(form_js)
        await self.until_loaded(start)


@contextlib.contextmanager
def chromium() -> Iterator[str]:
    """A headless chromium with remote debugging on a free port; yields its page's websocket URL."""
    assert CHROMIUM is not None
    profile = tempfile.mkdtemp(prefix="amb-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,2000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def visit(base: str, token: str, out: Path) -> dict[str, Any]:
    import aiohttp

    with chromium() as ws_url:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
            b = Browser(ws)
            for domain in ("Page", "Runtime", "Log"):
                await b.call(f"{domain}.enable")
            await b.go(base + "/")
            signin = await b.js("!!document.getElementById('signin')")
            await b.submit(f"document.getElementById('token').value = {json.dumps(token)};"
                           "document.getElementById('signin').submit()")
            signed_in = await b.js("document.getElementById('who') && document.getElementById('who').textContent")
            address = await b.js("location.href")
            await b.submit("document.getElementById('icb').value = 'QRL';"
                           "document.getElementById('period').value = '';"
                           f"document.getElementById('from').value = '{PERIOD.start}';"
                           f"document.getElementById('to').value = '{PERIOD.end}';"
                           "document.getElementById('pick').submit()")
            title = await b.js("document.getElementById('report-title').textContent")
            icb_row = await b.js("Array.from(document.querySelector('#report tr.me').cells).map(c => c.textContent)")
            charts = await b.js("document.querySelectorAll('#report svg').length")
            shot = await b.call("Page.captureScreenshot", format="png")
            png = base64.b64decode(shot["data"])
            out.write_bytes(png)
            await asyncio.sleep(0.2)  # let late console messages arrive
            with contextlib.suppress(asyncio.TimeoutError):
                while True:
                    b._event(await ws.receive_json(timeout=0.5))
            return {"signin": signin, "who": signed_in, "address": address, "title": title, "icb_row": icb_row,
                    "charts": charts, "png": png, "errors": b.errors}


def test_sign_in_pick_an_icb_and_read_its_report_in_a_real_browser(site: tuple[str, str, Service],
                                                                  tmp_path: Path) -> None:
    base, token, service = site
    got = asyncio.run(visit(base, token, tmp_path / "report.png"))
    assert got["errors"] == []
    assert got["signin"] is True
    assert got["who"] == "icb:QRL"
    assert "token=" not in got["address"]  # the token does not stay in the address bar
    assert got["title"] == "NHS Hampshire and Isle of Wight Integrated Care Board"
    assert got["charts"] >= 5
    # the ICB's row shows its published figures (the oracle's, after disclosure control)
    pub = disclose(oracle_figures())["standards"]
    row = next(r for r in pub.rows if r[0] == "icb")
    for col in ("incidents", "non_conveyance_rate", "C2_mean_s", "handover_mean_min", "hours_lost"):
        shown = fmt(col, row[pub.columns.index(col)])
        assert shown != SUPPRESSED and shown in got["icb_row"], col
    assert context().icb == ICB
    # not blank: many colours, and plenty of non-white pixels
    from PIL import Image

    img = Image.open(io.BytesIO(got["png"])).convert("RGB")
    assert img.size[0] >= 800
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50
    white = max((n for n, c in colours if c == (255, 255, 255)), default=0)
    assert white < 0.95 * img.size[0] * img.size[1]
    # the report was fetched through the service: audited as the analyst, on the web surface
    service.audit.flush()
    audited = service.store.query("SELECT identity, query, refused FROM audit_log WHERE surface = 'web'").rows
    assert ("icb:QRL", "report:icb:QRL", False) in [tuple(r) for r in audited]


def test_without_a_token_the_report_is_refused_with_the_sign_in_form(site: tuple[str, str, Service]) -> None:
    base, _, _ = site
    try:
        urllib.request.urlopen(f"{base}/report/icb?icb=QRL&period=2026-10", timeout=30)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as e:
        assert e.code == 401
        assert b'id="signin"' in e.read()


def test_the_page_answers_bad_requests_with_a_clear_status_and_the_picker(site: tuple[str, str, Service]) -> None:
    from amb.insight.web import handle

    _, _, service = site
    ident = Identity("icb", "QRL")
    assert handle(service, None, "/", {})[0:2] == (200, "text/html; charset=utf-8")
    status, _, body = handle(service, ident, "/", {})
    assert status == 200 and b'<option value="QRL" selected>' in body and b'value="2026-10"' in body
    status, _, body = handle(service, ident, "/report/icb", {"icb": "QZZ", "period": "2026-10"})
    assert status == 400 and b"unknown ICB &#x27;QZZ&#x27;" in body and b'id="pick"' in body
    status, _, body = handle(service, ident, "/report/icb/QRL", {"from": "2026-10-05", "to": "2026-10-01"})
    assert status == 400 and b"is after" in body
    assert handle(service, ident, "/report/nothing", {})[0] == 404
    status, ctype, body = handle(service, ident, "/report/icb/QRL", {"from": "2026-10-01", "to": "2026-10-02",
                                                                     "format": "text"})
    assert status == 200 and ctype.startswith("text/plain")
    assert body.decode().startswith("NHS Hampshire and Isle of Wight Integrated Care Board (E54000042, QRL)")
