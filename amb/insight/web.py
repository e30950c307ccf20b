"""The commissioner web page served by `amb serve` at ``/`` and ``/report/...``: sign in, pick an ICB
and a period, read its report. Server-rendered HTML (the same report code as `amb report icb`), no
external assets; the only script strips a sign-in token from the address bar.

`amb serve` routes ``GET /`` (without ClickHouse parameters) and ``GET /report/...`` here and signs
browsers in (``?token=`` once, then an HttpOnly cookie); ``ident`` is None when nobody is signed in.
Figures are fetched through the service: one audited query (surface ``web``) per report, the built
report cached until the store's data change, and published after disclosure control.

Paths: ``/`` (the picker), ``/report/icb?icb=QOP&period=2026-10`` (or ``from``/``to`` dates; also
``/report/icb/QOP``), ``format=text`` for the terminal summary.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Final

from amb.errors import AmbError
from amb.insight import BuiltReport, build_report
from amb.insight.render import CSS
from amb.insight.report import ReportError, load_reference
from domain.metrics import period_label
from sinks.store import Result

HTML: Final = "text/html; charset=utf-8"
TEXT: Final = "text/plain; charset=utf-8"
PAGE_CSS: Final = CSS + """
form.pick{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:end;padding:12px;background:#e8edee;margin:8px 0}
form.pick label{display:flex;flex-direction:column;font-size:13px}.error{color:#d5281b;font-weight:bold}
header{display:flex;justify-content:space-between;align-items:center}
"""
STRIP_TOKEN: Final = ("<script>if(location.search.indexOf('token=')>=0){var u=new URL(location.href);"
                      "u.searchParams.delete('token');history.replaceState(null,'',u.pathname+u.search);}</script>")


class ServiceSource:
    """The report's Source over the service's store (the caller has been scoped and is audited once
    per report by :func:`handle`)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.queries = 0

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        self.queries += 1
        result: Result = self.service.store.query(sql, params)
        return result


def _page(title: str, body: str, ident: Any = None) -> bytes:
    who = ""
    if ident is not None:
        name = html.escape(f"{ident.kind}:{ident.code}")
        who = f'<span>signed in as <b id="who">{name}</b> · <a href="/?token=">sign out</a></span>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<style>{PAGE_CSS}</style></head><body><main><header><b>amb · ambulance commissioner reports</b>{who}'
            f"</header>{body}</main>{STRIP_TOKEN}</body></html>\n").encode()


def signin(message: str = "") -> bytes:
    err = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return _page("Sign in", f"""<h1>Sign in</h1>{err}
<p>Paste the token you were issued (<code>amb token issue</code>).</p>
<form class="pick" id="signin" method="get" action="/"><label>Token
<input id="token" name="token" type="password" autocomplete="off" required size="40"></label>
<button type="submit">Sign in</button></form>""")


def _latest_month(service: Any) -> str:
    """The latest month with incidents (the picker's default), else this month."""
    try:
        ms = service.store.query("SELECT max(month_ms) FROM incident_facts").scalar()
    except AmbError:
        ms = None
    if ms:
        return period_label("month", int(ms))
    return date.today().strftime("%Y-%m")


def _default_icb(ident: Any, ref: Any) -> str:
    if getattr(ident, "kind", "") == "icb":
        try:
            return str(ref.resolve(ident.code))
        except ReportError:
            pass
    return ""


def picker(service: Any, ident: Any, params: Mapping[str, str]) -> str:
    ref = load_reference(service_geo_dir(service))
    chosen = params.get("icb") or _default_icb(ident, ref)
    try:
        chosen = ref.resolve(chosen) if chosen else ""
    except ReportError:
        chosen = ""
    options = "".join(
        f'<option value="{html.escape(ods or code)}"{" selected" if code == chosen else ""}>'
        f"{html.escape(name.replace('NHS ', '').replace(' Integrated Care Board', ''))} ({html.escape(ods)})</option>"
        for code, ods, name in ref.icbs())
    period = params.get("period") or ("" if params.get("from") else _latest_month(service))
    return f"""<form class="pick" id="pick" method="get" action="/report/icb">
<label>ICB<select id="icb" name="icb">{options}</select></label>
<label>Month<input id="period" name="period" type="month" value="{html.escape(period)}"></label>
<label>or from<input id="from" name="from" type="date" value="{html.escape(params.get("from", ""))}"></label>
<label>to<input id="to" name="to" type="date" value="{html.escape(params.get("to", ""))}"></label>
<button id="show" type="submit">Show report</button></form>"""


def service_geo_dir(service: Any) -> Any:
    """The geography reference folder (data/geo) the service runs with."""
    geo = getattr(service, "geography", None)
    d = getattr(geo, "data_dir", None)
    if d is not None:
        return d
    from amb import config

    return config.load().geo_data_dir


def _date(params: Mapping[str, str], name: str) -> date | None:
    v = params.get(name)
    if not v:
        return None
    try:
        return datetime.strptime(v, "%Y-%m-%d").date()
    except ValueError:
        raise ReportError(f"{name} {v!r} is not a date YYYY-MM-DD") from None


def report(service: Any, ident: Any, params: Mapping[str, str], icb: str) -> BuiltReport:
    """The built report, scoped and audited (surface ``web``), cached until the data change."""
    start, end = _date(params, "from"), _date(params, "to")
    period = None if (start or end) else (params.get("period") or None)
    geo_dir = service_geo_dir(service)
    service.scope(ident)  # a malformed or unknown identity is refused here
    query = f"report:icb:{icb}"
    audit_params = {"icb": icb, "period": period, "from": params.get("from"), "to": params.get("to")}

    def run() -> tuple[BuiltReport, int, int]:
        def build() -> BuiltReport:
            return build_report(ServiceSource(service), icb, period, start, end, geo_dir)

        built: BuiltReport = service.cache.get(("web-report", icb.upper(), period, start, end), build,
                                               lambda _b: 1000)
        rows = sum(len(t.rows) for t in built.published.values())
        hidden = sum(v == "*" for t in built.published.values() for r in t.rows for v in r)
        return built, rows, hidden

    result: BuiltReport = service._audited(ident, "web", query, audit_params, "", run)
    return result


def handle(service: Any, ident: Any, path: str, params: Mapping[str, str]) -> tuple[int, str, bytes]:
    """One request to the page: (HTTP status, content type, body)."""
    if ident is None:
        return (401 if path.startswith("/report") else 200), HTML, signin()
    parts = [p for p in path.split("/") if p]
    if parts in ([], ["report"]):
        return 200, HTML, _page("ICB reports", "<h1>ICB reports</h1>" + picker(service, ident, params), ident)
    if parts[:2] != ["report", "icb"] or len(parts) > 3:
        return 404, HTML, _page("Not found", f'<p class="error">no page {html.escape(path)}</p>'
                                + picker(service, ident, params), ident)
    icb = parts[2] if len(parts) == 3 else params.get("icb", "")
    try:
        if not icb:
            raise ReportError("choose an ICB")
        built = report(service, ident, params, icb)
    except AmbError as exc:
        status = int(getattr(exc, "status", None) or 400)
        return status, HTML, _page("ICB report", f'<p class="error" id="error">{html.escape(str(exc))}</p>'
                                   + picker(service, ident, params), ident)
    if params.get("format") == "text":
        return 200, TEXT, (built.text() + "\n").encode()
    title = f"{built.ctx.name(built.ctx.icb)}: {built.ctx.label}"
    return 200, HTML, _page(title, picker(service, ident, {**params, "icb": built.ctx.icb})
                            + f'<article id="report">{built.body()}</article>', ident)
