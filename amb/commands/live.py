"""`amb live`: print the workers' live operational view (read from their Prometheus endpoints)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import click

from amb import config
from amb.errors import AmbError

HELP = """Print the live view of the running stream workers: per ICB, hospital site and trust,
today (Europe/London) and the last 60 minutes.

Reads each worker's metrics endpoint (default http://127.0.0.1:AMB_WORKER_METRICS_PORT/metrics)
and adds the workers up: counts are summed, the longest wait is the maximum, and rates are
recomputed from the summed counts. "Now" is the newest event time the workers have seen.

\b
Examples:
  amb live
  amb live --url http://127.0.0.1:9102/metrics --url http://127.0.0.1:9112/metrics
  amb live --watch 5
  amb live --json
"""

NOT_CONVEYED_TO_ED = frozenset({"hear_and_treat", "see_and_treat", "conveyed_elsewhere"})


@dataclass
class Live:
    """The merged live figures of one or more workers."""

    workers: int = 0
    as_of_s: float = 0.0
    incidents_today: Counter[tuple[str, str]] = field(default_factory=Counter)  # (trust, icb)
    incidents_last_hour: Counter[tuple[str, str]] = field(default_factory=Counter)
    dispositions_today: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    lost_hours_icb: dict[str, float] = field(default_factory=dict)
    lost_hours_site: dict[str, float] = field(default_factory=dict)
    handovers_today: Counter[str] = field(default_factory=Counter)
    handovers_last_hour: Counter[str] = field(default_factory=Counter)
    waiting: Counter[str] = field(default_factory=Counter)
    longest_wait_s: dict[str, float] = field(default_factory=dict)

    def add(self, text: str) -> None:
        """Merge one worker's metrics page."""
        from prometheus_client.parser import text_string_to_metric_families

        self.workers += 1
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                lb, v = s.labels, s.value
                name = s.name
                if name == "amb_live_as_of_seconds":
                    self.as_of_s = max(self.as_of_s, v)
                elif name == "amb_live_incidents_today":
                    self.incidents_today[(lb["trust"], lb["icb"])] += int(v)
                elif name == "amb_live_incidents_last_hour":
                    self.incidents_last_hour[(lb["trust"], lb["icb"])] += int(v)
                elif name == "amb_live_dispositions_today":
                    self.dispositions_today[(lb["trust"], lb["icb"], lb["disposition"])] += int(v)
                elif name == "amb_handover_hours_lost_today":
                    self.lost_hours_icb[lb["icb"]] = self.lost_hours_icb.get(lb["icb"], 0.0) + v
                elif name == "amb_hospital_hours_lost_today":
                    self.lost_hours_site[lb["site"]] = self.lost_hours_site.get(lb["site"], 0.0) + v
                elif name == "amb_hospital_handovers_today":
                    self.handovers_today[lb["site"]] += int(v)
                elif name == "amb_hospital_handovers_last_hour":
                    self.handovers_last_hour[lb["site"]] += int(v)
                elif name == "amb_hospital_patients_waiting":
                    self.waiting[lb["site"]] += int(v)
                elif name == "amb_hospital_longest_wait_seconds":
                    self.longest_wait_s[lb["site"]] = max(self.longest_wait_s.get(lb["site"], 0.0), v)

    def by(self, level: str) -> dict[str, dict[str, Any]]:
        """Per ICB or per trust: incidents today, last hour, with a disposition, non-conveyance rate."""
        pos = 0 if level == "trust" else 1
        out: dict[str, dict[str, Any]] = {}

        def row(code: str) -> dict[str, Any]:
            return out.setdefault(code, {"incidents_today": 0, "incidents_last_hour": 0, "with_disposition": 0,
                                         "not_conveyed_to_ed": 0})

        for k, n in self.incidents_today.items():
            row(k[pos])["incidents_today"] += n
        for k, n in self.incidents_last_hour.items():
            row(k[pos])["incidents_last_hour"] += n
        for (t, i, d), n in self.dispositions_today.items():
            r = row((t, i)[pos])
            r["with_disposition"] += n
            if d in NOT_CONVEYED_TO_ED:
                r["not_conveyed_to_ed"] += n
        for code, r in out.items():
            r["nonconveyance_rate"] = r["not_conveyed_to_ed"] / r["with_disposition"] if r["with_disposition"] else None
            if level == "icb":
                r["hours_lost_today"] = round(self.lost_hours_icb.get(code, 0.0), 2)
        return out

    def sites(self) -> dict[str, dict[str, Any]]:
        codes = set(self.waiting) | set(self.handovers_today) | set(self.lost_hours_site)
        return {s: {"waiting": self.waiting.get(s, 0), "longest_wait_s": self.longest_wait_s.get(s),
                    "handovers_today": self.handovers_today.get(s, 0),
                    "handovers_last_hour": self.handovers_last_hour.get(s, 0),
                    "hours_lost_today": round(self.lost_hours_site.get(s, 0.0), 2)} for s in sorted(codes)}

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "as_of": _iso(self.as_of_s), "icb": self.by("icb"),
                "trust": self.by("trust"), "site": self.sites()}


def _iso(seconds: float) -> str | None:
    if not seconds:
        return None
    from domain.events import format_time

    return format_time(int(seconds * 1000))


def fetch(urls: list[str], timeout: float = 5.0) -> Live:
    live = Live()
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                live.add(resp.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AmbError(f"cannot read worker metrics at {url}: {reason} (is `amb worker` running? "
                           "set --url or AMB_WORKER_METRICS_PORT)") from None
    return live


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    m = int(s // 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{int(s % 60):02d}s"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def render(live: Live, top: int) -> str:
    out = [f"Live view as of {_iso(live.as_of_s) or '(no events yet)'} from {live.workers} worker(s); "
           "today = Europe/London day of that instant"]
    icb = live.by("icb")
    rows = [[code, f"{r['incidents_today']:,}", f"{r['incidents_last_hour']:,}", f"{r['with_disposition']:,}",
             _pct(r["nonconveyance_rate"]), f"{r['hours_lost_today']:.1f}"]
            for code, r in sorted(icb.items(), key=lambda kv: -kv[1]["incidents_today"])[:top]]
    out += ["", _table(["ICB", "incidents today", "last 60 min", "with disposition", "non-conveyance",
                        "hours lost today"], rows)]
    sites = live.sites()
    rows = [[s, f"{r['waiting']:,}", _dur(r["longest_wait_s"]), f"{r['handovers_today']:,}",
             f"{r['handovers_last_hour']:,}", f"{r['hours_lost_today']:.1f}"]
            for s, r in sorted(sites.items(), key=lambda kv: (-kv[1]["waiting"], -kv[1]["hours_lost_today"]))[:top]]
    out += ["", _table(["hospital site", "waiting now", "longest wait", "handovers today", "last 60 min",
                        "hours lost today"], rows)]
    trust = live.by("trust")
    rows = [[t, f"{r['incidents_today']:,}", f"{r['incidents_last_hour']:,}", _pct(r["nonconveyance_rate"])]
            for t, r in sorted(trust.items())]
    out += ["", _table(["trust", "incidents today", "last 60 min", "non-conveyance"], rows)]
    return "\n".join(out)


@click.command("live", help=HELP)
@click.option("--url", "urls", multiple=True, help="A worker's metrics URL (repeat for several workers).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--watch", type=click.FloatRange(min=0.5), default=None, help="Refresh every N seconds until Ctrl-C.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows per table.")
def command(urls: tuple[str, ...], as_json: bool, watch: float | None, top: int) -> None:
    targets = list(urls) or [f"http://127.0.0.1:{config.load().worker_metrics_port}/metrics"]
    while True:
        live = fetch(targets)
        if as_json:
            click.echo(json.dumps(live.as_dict(), indent=2))
        else:
            if watch:
                click.clear()
            click.echo(render(live, top))
        if not watch:
            return
        time.sleep(watch)
