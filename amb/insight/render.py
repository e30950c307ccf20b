"""The ICB report as one self-contained HTML page (inline SVG charts, inline CSS, no scripts or
external assets) and as a terminal summary. Renders PUBLISHED figures only (after
``domain.icb_report.disclose``): a suppressed cell is ``*`` in tables and simply not drawn in charts.

SPC: the daily series are drawn as XmR charts with Making Data Count's signals when ``domain.spc``
is available (imported lazily), else as plain run charts.
"""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, cast

from domain.disclosure import SUPPRESSED
from domain.icb_report import NOTES, Context, Figures, Table
from domain.metrics import LONDON, period_label

CHART_DPI: Final = 96
ICB_COLOUR, PEER_COLOUR, REGION_COLOUR, ENGLAND_COLOUR = "#005eb8", "#aeb7bd", "#ed8b00", "#330072"
DISCLOSURE: Final = ("Disclosure control: counts of 1-7 are shown as *, and rates, means, centiles and hours lost "
                     "based on fewer than 8 records are withheld (*); further cells are suppressed where a hidden "
                     "one could be recovered from a total.")

LABELS: Final = {
    "incidents": "Incidents (A7)", "hear_and_treat": "Hear and treat", "see_and_treat": "See and treat",
    "conveyed_elsewhere": "Conveyed elsewhere", "conveyed_ed": "Conveyed to ED", "open": "Open",
    "non_conveyance_rate": "Non-conveyance", "hear_and_treat_rate": "H&T %", "see_and_treat_rate": "S&T %",
    "conveyed_elsewhere_rate": "Elsewhere %", "conveyed_ed_rate": "ED %",
    "arrivals": "Arrivals", "handovers": "Handovers", "handover_mean_min": "Handover mean (min)",
    "handover_p90_min": "Handover 90th (min)", "over_15": ">15 min", "over_30": ">30 min", "over_45": ">45 min",
    "over_60": ">60 min", "hours_lost": "Hours lost", "share_of_hours_lost": "Share of hours lost",
    "calls": "111 calls", "ambulance": "Ambulance disposition", "ambulance_share": "Share to ambulance",
    "linked": "Linked to an incident", "linked_found": "Linked incident found", "incidents_111": "Incidents from 111",
    "events_per_incident": "Events per incident", "no_created": "No incident_created", "unplaceable": "Unplaceable",
    "missing_handover": "Conveyed, no handover", "response_negative": "Arrival before clock start",
    "handover_negative": "Handover before arrival", "span_le_1h": "Updates ≤1 h", "span_1h_24h": "Updates 1-24 h",
    "span_over_24h": "Updates >24 h", "span_p90_min": "Update span 90th (min)", "catchment_icb": "Catchment ICB",
    "catchment_name": "Catchment", "cross_border": "Cross-border", "imd_decile": "IMD decile", "geo_status": "Status",
}


def label(col: str) -> str:
    if col in LABELS:
        return LABELS[col]
    if col[:2] in ("C1", "C2", "C3", "C4") and "_" in col:
        cat, what = col.split("_", 1)
        return f"{cat} {'responses' if what == 'count' else 'mean' if what == 'mean_s' else '90th'}"
    return col.replace("_", " ").capitalize()


def fmt(col: str, v: Any) -> str:
    """A published value as text: rates as %, response times as m:ss, minutes and hours to 1 dp."""
    if v is None:
        return "–"
    if v == SUPPRESSED or isinstance(v, str):
        return str(v)
    if isinstance(v, bool):
        return "yes" if v else ""
    if col == "day_ms":
        return period_label("day", int(v))
    if col.endswith("_rate") or col.endswith("_share") or col == "share_of_hours_lost":
        return f"{100 * v:.1f}%"
    if col.endswith("_s"):
        s = round(float(v))
        return f"{s // 60}:{s % 60:02d}"
    if isinstance(v, float):
        return f"{v:,.1f}" if col != "events_per_incident" else f"{v:.2f}"
    return f"{v:,}"


def _num(v: Any) -> float | None:
    return None if v is None or isinstance(v, (str, bool)) else float(v)


# ------------------------------------------------------------------------------------------ charts
_CHARTS = threading.Lock()
"""matplotlib's rcParams are global: one chart at a time (the web page renders in a thread pool)."""


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    with _CHARTS:
        matplotlib.rcParams["svg.hashsalt"] = salt  # unique element ids per chart: many SVGs share one page
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, small
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(w: float = 5.6, h: float = 2.6) -> tuple[Any, Any]:
    """A figure without pyplot (no global figure manager, safe off the main thread)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=CHART_DPI, layout="constrained")
    ax = fig.subplots()
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def bars(title: str, items: Sequence[tuple[str, float, str]], salt: str, unit: str = "",
         lines: Sequence[tuple[str, float, str]] = ()) -> str:
    """Horizontal bars (label, value, colour) with reference lines (label, value, colour)."""
    fig, ax = _figure(5.6, 0.3 * max(len(items), 3) + 0.9)
    ax.barh([i[0] for i in items], [i[1] for i in items], color=[i[2] for i in items])
    ax.invert_yaxis()
    for _name, v, colour in lines:
        ax.axvline(v, color=colour, linestyle="--", linewidth=1.2)
    refs = ", ".join(f"{name} {v:.1f}{unit}" for name, v, _c in lines)
    ax.set_title(title + (f"\n(dashed: {refs})" if refs else ""), fontsize=9, loc="left")
    ax.tick_params(labelsize=8)
    return _svg(fig, salt)


def spc_chart(title: str, days: Sequence[int], values: Sequence[float], good: str, salt: str) -> str:
    """A daily XmR chart with signals coloured (improvement blue, concern orange); a run chart
    when domain.spc is not available."""
    fig, ax = _figure()
    xs = [datetime.fromtimestamp(d / 1000, LONDON) for d in days]
    ax.plot(xs, values, color="#425563", marker="o", markersize=3, linewidth=1)
    make: Callable[..., Any] | None
    try:
        from domain.spc import xmr as make
    except ImportError:  # SPC not there yet: the series without limits
        make = None
    if make is not None and len(values) >= 2:
        chart = make(values, good)
        ax.axhline(chart.mean, color="#768692", linewidth=1)
        for lim in (chart.ucl, chart.lcl):
            ax.axhline(lim, color="#768692", linewidth=1, linestyle="--")
        for x, p in zip(xs, chart.points, strict=True):
            if p.assessment is not None:
                ax.plot([x], [p.value], marker="o", markersize=5,
                        color=ICB_COLOUR if p.assessment == "improvement" else "#ed8b00")
    ax.set_title(title, fontsize=10, loc="left")
    ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    return _svg(fig, salt)


# ------------------------------------------------------------------------------------------ tables
def _align(v: Any) -> str:
    return ' class="t"' if isinstance(v, str) and v != SUPPRESSED else ""


def html_table(t: Table, cols: Sequence[str] | None = None, highlight: Callable[[Sequence[Any]], bool] | None = None,
               names: Mapping[str, str] | None = None) -> str:
    cols = list(cols or t.columns)
    idx = [t.columns.index(c) for c in cols]
    head = "".join(f"<th>{html.escape(label(c))}</th>" for c in cols)
    body = []
    for r in t.rows:
        cls = ' class="me"' if highlight and highlight(r) else ""
        cells = "".join(f"<td{_align(r[i])}>{html.escape(fmt(c, r[i]))}</td>" for c, i in zip(cols, idx, strict=True))
        body.append(f"<tr{cls}>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(cols)}">no data in this period</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS: Final = """
body{font-family:Arial,Helvetica,sans-serif;margin:0;color:#212b32;background:#f0f4f5}
main{max-width:1200px;margin:0 auto;padding:16px 24px;background:#fff}
h1{color:#005eb8;margin:8px 0}h2{border-bottom:2px solid #005eb8;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #d8dde0;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#e8edee}td:first-child,th:first-child{text-align:left}
td.t{text-align:left}tr.me td{background:#e6f0fa;font-weight:bold}.note{color:#4c6272;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{max-width:100%;height:auto}
"""

STANDARD_VIEW: Final = ("name", "incidents", "non_conveyance_rate", "hear_and_treat_rate", "see_and_treat_rate",
                        "conveyed_elsewhere_rate", "conveyed_ed_rate", "C1_mean_s", "C1_p90_s", "C2_mean_s",
                        "C2_p90_s", "C3_mean_s", "C3_p90_s", "C4_mean_s", "C4_p90_s", "handovers",
                        "handover_mean_min", "handover_p90_min", "over_30", "over_60", "hours_lost")


def _col(t: Table, row: Sequence[Any], col: str) -> Any:
    return row[t.columns.index(col)]


def render_body(pub: Figures, ctx: Context, ods: str = "", scorecard: str | None = None) -> str:
    """The report's content (used inside the web page and in the standalone file)."""
    std = pub["standards"]
    icb_name = ctx.name(ctx.icb)
    out = [f'<h1 id="report-title">{html.escape(icb_name)}</h1>',
           f'<p><b>{html.escape(ctx.icb)}</b>{" (" + html.escape(ods) + ")" if ods else ""} · region '
           f'{html.escape(ctx.name(ctx.region))} · period <b>{html.escape(ctx.label)}</b> (clock start, '
           f'Europe/London) · host trust {html.escape(ctx.name(ctx.host_trust))} ({html.escape(ctx.host_trust)})</p>',
           f'<p class="note">{html.escape(DISCLOSURE)} Peers are the other ICBs of the region. '
           "Incidents count where they happened; handovers by the incident's ICB.</p>"]
    out.append("<h2>Standards against the region, England and peers</h2>")
    out.append(html_table(std, STANDARD_VIEW, lambda r: r[0] == "icb"))
    charts = []
    for col, title, unit in (("non_conveyance_rate", "Non-conveyance rate (%)", "%"),
                             ("C2_mean_s", "C2 mean response (min)", ""),
                             ("handover_mean_min", "Handover mean (min)", ""),
                             ("hours_lost", "Handover hours lost", "")):
        scale = 100.0 if unit == "%" else (1 / 60 if col.endswith("_s") else 1.0)
        items, lines = [], []
        for r in std.rows:
            v = _num(_col(std, r, col))
            if v is None:
                continue
            if r[0] in ("icb", "peer"):
                items.append((str(r[2]).replace("NHS ", "").replace(" Integrated Care Board", ""), v * scale,
                              ICB_COLOUR if r[0] == "icb" else PEER_COLOUR))
            elif col != "hours_lost":
                lines.append(("England" if r[0] == "england" else "Region", v * scale,
                              ENGLAND_COLOUR if r[0] == "england" else REGION_COLOUR))
        if items:
            charts.append(bars(title, items, f"std-{col}", unit, lines))
    out.append(f'<div class="charts">{"".join(charts)}</div>')

    out.append("<h2>Trusts serving the ICB</h2>")
    out.append(html_table(pub["trusts"], ("trust", "name", "incidents", "non_conveyance_rate", "open")))
    out.append("<h2>Where its patients are conveyed (hospital sites)</h2>")
    out.append('<p class="note">Catchment ICB: the ICB whose incidents make most of the site\'s arrivals in the '
               "period; cross-border = a site whose catchment is another ICB.</p>")
    out.append(html_table(pub["destinations"], ("site", "catchment_name", "cross_border", "arrivals", "handovers",
                                                "handover_mean_min", "handover_p90_min", "over_30", "over_60",
                                                "hours_lost")))
    hs = pub["host_split"]
    out.append(f"<h2>Host trust {html.escape(ctx.host_trust)}: handover delays by the ICB of the incident</h2>")
    out.append(html_table(hs, ("name", "handovers", "handover_mean_min", "handover_p90_min", "over_30", "over_60",
                               "hours_lost", "share_of_hours_lost"), lambda r: r[0] == ctx.icb))
    items = [(str(r[1]).replace("NHS ", "").replace(" Integrated Care Board", ""), v,
              ICB_COLOUR if r[0] == ctx.icb else PEER_COLOUR)
             for r in hs.rows if (v := _num(_col(hs, r, "hours_lost"))) is not None]
    if items:
        out.append(f'<div class="charts">{bars("Host trust hours lost by ICB", items, "host")}</div>')

    out.append("<h2>Daily statistical process control</h2>")
    out.append('<p class="note">XmR charts (Making Data Count): mean, process limits (dashed); special-cause '
               "improvement in blue, concern in orange.</p>")
    daily = pub["daily"]
    charts = []
    for col, title, good, scale in (("incidents", "Incidents", "down", 1.0),
                                    ("non_conveyance_rate", "Non-conveyance rate (%)", "up", 100.0),
                                    ("C2_mean_s", "C2 mean response (min)", "down", 1 / 60),
                                    ("handover_mean_min", "Handover mean (min)", "down", 1.0),
                                    ("hours_lost", "Handover hours lost", "down", 1.0)):
        pts = [(int(cast(int, r[0])), v * scale) for r in daily.rows if (v := _num(_col(daily, r, col))) is not None]
        if pts:
            charts.append(spc_chart(title, [p[0] for p in pts], [p[1] for p in pts], good, f"spc-{col}"))
    out.append(f'<div class="charts">{"".join(charts)}</div>')
    out.append(html_table(daily, ("day_ms", "incidents", "non_conveyance_rate", "C1_mean_s", "C2_mean_s",
                                  "handover_mean_min", "hours_lost")))

    imd = pub["imd"]
    out.append("<h2>Inequalities: by IMD decile of the incident's neighbourhood</h2>")
    out.append(f'<p class="note">IMD 2025 decile of the incident LSOA (1 = most deprived). {html.escape(NOTES["population"])}</p>')
    out.append(html_table(imd, ("imd_decile", *STANDARD_VIEW[1:])))
    items = [(f"decile {r[0]}", v * 100, ICB_COLOUR) for r in imd.rows
             if (v := _num(_col(imd, r, "non_conveyance_rate"))) is not None]
    items2 = [(f"decile {r[0]}", v, ICB_COLOUR) for r in imd.rows if (v := _num(_col(imd, r, "incidents"))) is not None]
    charts = [bars(t, i, s) for t, i, s in (("Non-conveyance rate by IMD decile (%)", items, "imd-nc"),
                                             ("Incidents by IMD decile", items2, "imd-n")) if i]
    out.append(f'<div class="charts">{"".join(charts)}</div>')

    out.append("<h2>NHS 111 and 999</h2>")
    out.append(html_table(pub["calls_111"], ("name", "calls", "ambulance", "ambulance_share", "linked",
                                             "linked_found", "incidents_111"), lambda r: r[0] == "icb"))
    out.append("<p>What happened to the incidents the ICB's 111 calls with an ambulance disposition became:</p>")
    out.append(html_table(pub["calls_111_outcomes"]))

    out.append("<h2>Data quality by trust</h2>")
    out.append(html_table(pub["quality"]))
    out.append(html_table(pub["quality_geo"]))
    notes = ("corrections",) if scorecard is not None else ("dead_letters", "corrections")
    out.append("".join(f'<p class="note">{html.escape(NOTES[k])}</p>' for k in notes))
    if scorecard is not None:
        out.append(scorecard)
    return "\n".join(out)


def render_html(pub: Figures, ctx: Context, ods: str = "", scorecard: str | None = None) -> str:
    """The whole standalone page."""
    title = html.escape(f"{ctx.name(ctx.icb)}: ambulance report {ctx.label}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><main>{render_body(pub, ctx, ods, scorecard)}</main></body></html>\n")


# ---------------------------------------------------------------------------------------- terminal
def render_text(pub: Figures, ctx: Context, ods: str = "") -> str:
    """The terminal summary: the standards table and one line per other section."""
    std = pub["standards"]
    cols = ("incidents", "non_conveyance_rate", "C1_mean_s", "C1_p90_s", "C2_mean_s", "C2_p90_s", "C3_p90_s",
            "C4_p90_s", "handover_mean_min", "handover_p90_min", "over_30", "over_60", "hours_lost")
    heads = ("area", "A7", "non-conv", "C1 mean", "C1 90th", "C2 mean", "C2 90th", "C3 90th", "C4 90th",
             "HO mean", "HO 90th", ">30", ">60", "hrs lost")
    rows = []
    for r in std.rows:
        tag = {"icb": "ICB", "region": "region", "england": "England", "peer": "peer"}[str(r[0])]
        name = str(r[2]).replace("NHS ", "").replace(" Integrated Care Board", "")
        rows.append((f"{tag}: {name}"[:38], *(fmt(c, _col(std, r, c)) for c in cols)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = [f"{ctx.name(ctx.icb)} ({ctx.icb}{', ' + ods if ods else ''}), {ctx.label}",
             "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    tr = pub["trusts"]
    lines.append("trusts: " + ", ".join(f"{r[0]} {fmt('incidents', _col(tr, r, 'incidents'))}" for r in tr.rows))
    ds = pub["destinations"]
    cross = [r for r in ds.rows if r[3] is True]
    lines.append(f"hospital sites: {len(ds.rows)} ({len(cross)} cross-border); most arrivals: "
                 + ", ".join(f"{r[0]} {fmt('arrivals', _col(ds, r, 'arrivals'))}" for r in ds.rows[:5]))
    hs = pub["host_split"]
    lines.append(f"host trust {ctx.host_trust} hours lost by ICB: " + ", ".join(
        f"{r[0]} {fmt('hours_lost', _col(hs, r, 'hours_lost'))}" for r in hs.rows))
    c = pub["calls_111"]
    lines.append("111: " + "; ".join(
        f"{r[0]} {fmt('calls', _col(c, r, 'calls'))} calls, {fmt('ambulance_share', _col(c, r, 'ambulance_share'))} "
        "to ambulance" for r in c.rows))
    q = pub["quality"]
    lines.append("quality (unplaceable / conveyed without handover): " + ", ".join(
        f"{r[0]} {fmt('unplaceable', _col(q, r, 'unplaceable'))}/{fmt('missing_handover', _col(q, r, 'missing_handover'))}"
        for r in q.rows))
    lines.append(DISCLOSURE)
    return "\n".join(lines)
