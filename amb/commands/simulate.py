"""`amb simulate`: a realistic England-wide trust feed, to files or straight to Kafka."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click

from amb import config
from amb.errors import AmbError
from domain.events import TRUSTS
from domain.simulate import MESS_PRESETS, Mess, SimConfig

F = TypeVar("F", bound=Callable[..., Any])

HELP = """\
Simulate ambulance incidents for England's 11 ambulance trusts (or some of them), calibrated to
national figures (24,600 incidents a day; hear and treat 15.8%, see and treat 29.6%, conveyed to ED
49.9%, elsewhere 4.7%; C1/C2 response times; October 2024 handover delays; NHS 111 calls), at real
postcodes from the geography index, with the mess real feeds have on demand.

Output is in delivery order, in the trust interchange format (docs/trust-export-format.md).
`--seed` makes it byte-identical from run to run.

\b
Examples:
  amb simulate --start 2026-10-01 --days 1 --out-dir sim/          # sim/RX6.jsonl ... sim/R1F.jsonl
  amb publish --trust RX7 sim/RX7.jsonl                            # publish one trust's file
  amb simulate --days 7 --trusts RX6,RRU --mess none --out week.jsonl
  amb simulate --publish --speed 60x                               # today, an hour a minute
  amb simulate --out feed.jsonl --late-rate 0.1 --malformed-rate 0.01 --truth truth.csv
"""


def _rate(name: str) -> Callable[[F], F]:
    return click.option(f"--{name}-rate", f"{name.replace('-', '_')}_rate", type=click.FloatRange(0, 1),
                        default=None, help=f"Override the preset's {name} rate (0-1).")


@click.command("simulate", help=HELP, context_settings={"max_content_width": 100})
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="First local (Europe/London) day. Default: today.")
@click.option("--days", type=click.IntRange(1, 3660), default=1, show_default=True, help="Days to simulate.")
@click.option("--trusts", default=",".join(TRUSTS), show_default=True, metavar="ODS,...",
              help="Comma-separated trust ODS codes.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Random seed.")
@click.option("--mess", "mess_preset", type=click.Choice(sorted(MESS_PRESETS)), default="default", show_default=True,
              help="Preset of mess rates: default (a real feed) or none (clean, in order).")
@_rate("dup")
@_rate("late")
@click.option("--shuffle", type=click.FloatRange(0, 1), default=None,
              help="Override the share of events held back up to 30 min (out of order).")
@_rate("correction")
@_rate("retriage")
@_rate("unplaceable")
@_rate("malformed")
@click.option("--scale", type=click.FloatRange(min=0, max=100, min_open=True), default=1.0, show_default=True,
              help="Multiply every volume (10 = ten times national demand).")
@click.option("--no-111", "no_111", is_flag=True, help="Leave out NHS 111 calls.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every trust's events to one JSONL file ('-' for stdout).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write one <ODS>.jsonl per trust, for `amb publish --trust ODS FILE`.")
@click.option("--publish", is_flag=True, help="Publish to each trust's Kafka topic (TrustPublisher).")
@click.option("--speed", default="max", show_default=True,
              help="max (as fast as possible), realtime (by the wall clock) or Nx (e.g. 60x).")
@click.option("--locations", type=click.Choice(["index", "sample"]), default="index", show_default=True,
              help="Postcodes from the geography index (`amb geo build`) or a small built-in sample.")
@click.option("--truth", "truth_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write what really happened to each incident (CSV), for checking the platform.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(start: datetime | None, days: int, trusts: str, seed: int, mess_preset: str, dup_rate: float | None,
            late_rate: float | None, shuffle: float | None, correction_rate: float | None,
            retriage_rate: float | None, unplaceable_rate: float | None, malformed_rate: float | None,
            scale: float, no_111: bool, out_file: Path | None, out_dir: Path | None, publish: bool, speed: str,
            locations: str, truth_file: Path | None, progress: bool) -> None:
    from amb import simulate_io as sio
    from domain.simulate import Truth

    targets = [x for x in (out_file is not None, out_dir is not None, publish) if x]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --out FILE, --out-dir DIR or --publish")
    overrides = {k: v for k, v in {
        "dup": dup_rate, "late": late_rate, "shuffle": shuffle, "correction": correction_rate,
        "retriage": retriage_rate, "unplaceable": unplaceable_rate, "malformed": malformed_rate,
    }.items() if v is not None}
    mess = dataclasses.replace(Mess.preset(mess_preset), **overrides)
    trust_list = tuple(t.strip().upper() for t in trusts.split(",") if t.strip())
    first = start.date() if start else datetime.now(ZoneInfo("Europe/London")).date()
    try:
        cfg = SimConfig(start=first, days=days, trusts=trust_list, seed=seed, mess=mess, scale=scale,
                        calls_111=not no_111)
    except ValueError as exc:
        raise AmbError(str(exc)) from None
    pace = sio.parse_speed(speed)
    settings = config.load()
    pool = sio.load_pool(settings, locations, progress=progress)
    truth = Truth.empty()
    if out_file is not None:
        stats = sio.simulate_to_file(cfg, pool, out_file, speed=pace, progress=progress, truth=truth)
        where = str(out_file)
    elif out_dir is not None:
        stats = sio.simulate_to_dir(cfg, pool, out_dir, speed=pace, progress=progress, truth=truth)
        where = f"{out_dir}/ ({len(cfg.trusts)} files)"
    else:
        from amb.metrics import serve_best_effort

        serve_best_effort(settings.publisher_metrics_port, "AMB_PUBLISHER_METRICS_PORT")
        stats = sio.simulate_to_kafka(cfg, pool, settings, speed=pace, progress=progress, truth=truth)
        where = "Kafka"
    if truth_file is not None:
        sio.write_truth(truth, truth_file)
    end = date.fromordinal(first.toordinal() + days - 1)
    click.echo(
        f"simulated {stats.incidents:,} incidents and {stats.calls_111:,} NHS 111 calls, {first}..{end}, "
        f"{len(cfg.trusts)} trust(s): {stats.events:,} events ({stats.malformed:,} malformed) to {where} "
        f"in {stats.seconds:.1f} s ({stats.rate:,.0f} events/s)", err=out_file is not None and str(out_file) == "-")
    for trust, p in stats.publish.items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(p["by_reason"].items()))
        click.echo(f"  {trust}: sent {p['sent']:,}, delivered {p['delivered']:,}, rejected {p['rejected']:,}"
                   + (f" ({reasons})" if reasons else ""))
