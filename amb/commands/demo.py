"""`amb demo`: the whole platform end to end on embedded defaults (what `make demo` runs).

Each step is the real part: the local Kafka 4 broker, the trust publisher, the Faust worker and the
ClickHouse sink into chDB, then the standard tables read back through `amb query`'s code path and
checked against the batch oracle on the same simulated events.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click

from amb import config
from amb.config import Settings
from amb.errors import AmbError

LONDON = ZoneInfo("Europe/London")


@dataclass
class DemoResult:
    """What the demo produced, for the end-to-end test."""

    day: date
    published: int
    rejected: int
    tables: dict[str, list[tuple[Any, ...]]]
    oracle_tables: dict[str, list[tuple[Any, ...]]]
    mismatches: list[str]
    seconds: dict[str, float]


def _step(msg: str) -> None:
    click.secho(f"==> {msg}", fg="cyan", err=True)


def _run_finite(settings: Settings, name: str, args: list[str], env_extra: dict[str, str] | None = None) -> None:
    """Run `amb <args>` as its own process (as it runs in production) and wait for it to finish."""
    log = settings.run_dir / f"demo-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**config.to_environ(settings), **(env_extra or {})}
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "amb.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise AmbError(f"`amb {' '.join(args)}` failed (exit {proc.returncode}); log {log}: " + " | ".join(tail))


def run_demo(settings: Settings, day: date, trusts: list[str] | None, seed: int, scale: float,
             start_stack: bool = True, prometheus: bool = True, idle_timeout: float = 10.0) -> DemoResult:
    """Simulate ``day``, publish, stream, sink and query; compare with the batch oracle."""
    from amb.simulate_io import load_pool, simulate_to_kafka
    from amb.stack import Stack
    from domain.events import TRUSTS
    from domain.simulate import Mess, SimConfig, clean_events
    from sinks import migrate as migrations
    from sinks import queries
    from sinks.store import opened

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if start_stack:
        _step("starting the local stack (Kafka 4 KRaft, Prometheus)")
        Stack(settings, prometheus=prometheus).up()
    seconds["stack"] = time.perf_counter() - t0

    _step("applying ClickHouse migrations to the embedded store (chDB)")
    t = time.perf_counter()
    with opened(settings) as store:
        migrations.migrate(store)
    seconds["migrate"] = time.perf_counter() - t

    _step(f"simulating {day} for {'all 11 trusts' if not trusts else ','.join(trusts)} with real-world mess, publishing")
    t = time.perf_counter()
    pool = load_pool(settings, "index", progress=False)
    cfg = SimConfig(start=day, days=1, trusts=tuple(trusts) if trusts else TRUSTS,
                    seed=seed, mess=Mess.preset("default"), scale=scale)
    stats = simulate_to_kafka(cfg, pool, settings, progress=sys.stderr.isatty())
    seconds["simulate_publish"] = time.perf_counter() - t
    published_at_ms = int(time.time() * 1000)
    published = sum(int(p["delivered"]) for p in stats.publish.values())
    rejected = sum(int(p["rejected"]) for p in stats.publish.values())
    click.echo(f"    published {published:,} events ({rejected:,} malformed records refused by the publisher "
               "and reported, as a trust would see them)", err=True)

    _step("running the stream worker and the sink until both are idle")
    t = time.perf_counter()
    timeout = str(idle_timeout)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen([sys.executable, "-m", "amb.cli", "worker", "--timeout", timeout, "--web-port", "0"],
                              stdout=(settings.run_dir / "demo-worker.log").open("w"), stderr=subprocess.STDOUT,
                              env=config.to_environ(settings))
    try:
        _run_finite(settings, "sink", ["sink", "--timeout", str(idle_timeout * 2.5)])
    finally:
        try:
            worker.wait(timeout=600)
        except subprocess.TimeoutExpired:
            worker.kill()
    if worker.returncode != 0:
        raise AmbError(f"the worker failed (exit {worker.returncode}); log {settings.run_dir / 'demo-worker.log'}")
    seconds["stream_and_sink"] = time.perf_counter() - t

    _step("reading the standard tables back and recomputing them with the batch oracle")
    t = time.perf_counter()
    tables: dict[str, list[tuple[Any, ...]]] = {}
    specs = _table_specs(day)
    with opened(settings) as store:
        for name, q in specs.items():
            tables[name] = [tuple(r) for r in queries.run(store, q)]
        raw = store.query("SELECT uniqExact(event_id) FROM raw_events").scalar()
        dead = store.query("SELECT count() FROM dead_letters FINAL").scalar()
    click.echo(f"    raw archive in the store: {int(raw or 0):,} distinct accepted events, {int(dead or 0):,} dead "
               "letters with their reasons (`amb report quality`, `amb rebuild --from`)", err=True)
    oracle_tables = _oracle_tables(settings, cfg, pool, specs, clean_events, published_at_ms)
    mismatches = [name for name in specs if _norm(tables[name]) != _norm(oracle_tables[name])]
    seconds["query_and_oracle"] = time.perf_counter() - t
    return DemoResult(day, published, rejected, tables, oracle_tables, mismatches, seconds)


def _table_specs(day: date) -> dict[str, Any]:
    from sinks.queries import Query

    return {
        "England: dispositions": Query("dispositions", "england", "day", None, day, day),
        "Regions: dispositions": Query("dispositions", "region", "day", None, day, day),
        "ICBs: dispositions": Query("dispositions", "icb", "day", None, day, day),
        "England: handover": Query("handover", "england", "day", None, day, day),
        "Regions: handover": Query("handover", "region", "day", None, day, day),
        "ICBs: handover": Query("handover", "icb", "day", None, day, day),
        "Hospital sites: handover": Query("handover", "site", "day", None, day, day),
        "England: response": Query("response", "england", "day", None, day, day),
    }


def _oracle_tables(settings: Settings, cfg: Any, pool: Any, specs: dict[str, Any], clean_events: Any,
                   published_at_ms: int) -> dict[str, list[tuple[Any, ...]]]:
    """The oracle over exactly what the publishers accepted: the simulator's valid events less those
    the publisher refused as more than a day in the future when it sent them (a late correction of a
    recent day can be)."""
    from domain import oracle
    from sinks.queries import oracle_table
    from streams.geo import IndexGeo

    geo = IndexGeo.load(settings.geo_index_dir)
    from domain.validation import check_event

    accepted = (e for e in clean_events(cfg, pool) if not check_event(e, now_ms=published_at_ms))
    report = oracle.compute(accepted, geo, geo)
    return {name: [tuple(r) for r in oracle_table(report, q)] for name, q in specs.items()}


def _norm(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out = []
    for r in rows:
        out.append(tuple(round(v, 6) if isinstance(v, float) else v for v in r))
    return sorted(out, key=repr)


def print_result(res: DemoResult) -> None:
    from domain.metrics import TABLES
    from sinks.queries import render

    for name, rows in res.tables.items():
        metric = "handover" if "handover" in name else "response" if "response" in name else "dispositions"
        shown = rows
        if name.startswith("Hospital sites"):
            hours_i = TABLES[metric].index("hours_lost")
            shown = sorted(rows, key=lambda r: -(r[hours_i] or 0))[:5]
            name = "Five hospital sites with most hours lost"
        click.echo(f"\n{name} ({res.day}, clock start in Europe/London)")
        click.echo(render(TABLES[metric], shown, "table"))
    click.echo("")
    if res.mismatches:
        click.secho(f"MISMATCH with the batch oracle in: {', '.join(res.mismatches)}", fg="red")
    else:
        click.secho("Every table above equals the batch oracle recomputed from the same simulated events.", fg="green")
    click.echo("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()))


NEXT_STEPS = """
Explore further:
  amb query dispositions --level lad --from {day} --to {day} --by day    # places
  amb query handover --level site --from {day} --to {day} --format csv
  amb geo lookup SW1A1AA
  amb dlq show --limit 5                                             # refused events and why
  amb live                                                           # while `amb worker` runs
  Prometheus: http://127.0.0.1:{prom}/  (amb stack status)
The stack is still running: stop it with `amb stack down` (add --purge to delete its data).
"""


@click.command("demo", help="""Run the platform end to end on this machine (what `make demo` calls).

Starts the local stack, simulates one day of England (about 24,000 incidents, 55,000 NHS 111 calls,
with duplicates, late, out-of-order, corrected and malformed events), publishes it per trust, runs the
stream worker and the ClickHouse sink (embedded chDB), prints England, region and ICB tables and the
hospital sites with most hours lost, and checks every table against the batch oracle.

\b
Example:
  amb demo
  amb demo --day 2026-10-01 --trusts RX6,RRU --seed 3
""")
@click.option("--day", "day_", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Local day to simulate (default: four days ago in Europe/London, so its late events are all past).")
@click.option("--trusts", default="", help="Comma-separated trust ODS codes (default: all 11).")
@click.option("--seed", type=int, default=1, show_default=True, help="Simulator seed.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply national volumes.")
@click.option("--no-stack", is_flag=True, help="Use the broker at AMB_BOOTSTRAP_SERVERS instead of starting the local stack.")
@click.option("--idle", type=float, default=8.0, show_default=True,
              help="Seconds without new input after which the worker (and, later, the sink) stop.")
def command(day_: datetime | None, trusts: str, seed: int, scale: float, no_stack: bool, idle: float) -> None:
    settings = config.load()
    # Four days back: late events (up to three days) and corrections of that day are all in the past,
    # so the day is complete and nothing is refused as future.
    day = day_.date() if day_ else (datetime.now(LONDON).date() - timedelta(days=4))
    trust_list = [t.strip().upper() for t in trusts.split(",") if t.strip()] or None
    started = time.perf_counter()
    if no_stack:
        from amb.stack.kafka import require_broker

        require_broker(settings.bootstrap)
    res = run_demo(settings, day, trust_list, seed, scale, start_stack=not no_stack, idle_timeout=idle)
    print_result(res)
    click.echo(f"Demo finished in {time.perf_counter() - started:.0f} s.")
    if not no_stack:
        click.echo(NEXT_STEPS.format(day=day, prom=settings.prometheus_port))
    if res.mismatches:
        raise AmbError("the demo's figures differ from the batch oracle")


