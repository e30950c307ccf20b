"""Commissioner insight: the ICB report (``report``, ``render``, ``web``), SPC series and forecasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from domain.icb_report import Context, Figures, disclose

if TYPE_CHECKING:
    from amb.insight.report import Period


@dataclass(frozen=True)
class BuiltReport:
    """One ICB's report: the raw figures, the published (disclosure-controlled) ones and how to show them."""

    ctx: Context
    period: Period
    ods: str
    raw: Figures
    published: Figures
    scorecard: str | None = None
    """The data-quality scorecard section (HTML), from the raw archive; None if not built."""

    def html(self) -> str:
        from amb.insight.render import render_html

        return render_html(self.published, self.ctx, self.ods, self.scorecard)

    def body(self) -> str:
        from amb.insight.render import render_body

        return render_body(self.published, self.ctx, self.ods, self.scorecard)

    def text(self) -> str:
        from amb.insight.render import render_text

        return render_text(self.published, self.ctx, self.ods)


def build_report(source: object, icb: str, period: str | None, start: date | None, end: date | None,
                 geo_data_dir: Path) -> BuiltReport:
    """The report for ``icb`` (ODS or ONS code) over a month (``period``) or ``start``..``end``,
    from any :class:`amb.insight.report.Source` (a store, or the service's audited fetch)."""
    from amb.insight import report as rep

    ref = rep.load_reference(geo_data_dir)
    code = ref.resolve(icb)
    per = rep.Period.parse(period, start, end)
    ctx = ref.context(code, per)
    raw = rep.figures(source, ctx)  # type: ignore[arg-type]
    ods = next((o for o, c in ref.areas.ods.items() if c == code), "")
    from amb.insight.quality import scorecard_html

    return BuiltReport(ctx, per, ods, raw, disclose(raw), scorecard_html(source, ctx.lo_ms, ctx.hi_ms))  # type: ignore[arg-type]
