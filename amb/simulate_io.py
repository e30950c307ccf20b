"""The simulator's shell: load real locations, pace the feed, write files or publish to Kafka.

The generator itself (domain.simulate) is pure; this module gives it a LocationPool from the
geography index (cached under AMB_DATA_DIR/simulate, keyed by the index's stamp) and sends what it
yields, in delivery order, to one JSONL file, one JSONL file per trust (the trust interchange
format, which `amb publish --trust RX7 RX7.jsonl` accepts) or straight to each trust's topic through
amb.publisher.TrustPublisher.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from tqdm import tqdm

from amb.config import Settings
from amb.errors import AmbError
from domain.events import TRUSTS, format_time
from domain.simulate import (
    CATEGORY_NAMES,
    DISPOSITION_NAMES,
    SOURCE_NAMES,
    EventTable,
    LocationPool,
    SimConfig,
    Truth,
    chunks,
    imd_weight,
)
from domain.simulate.lifecycle import local_day
from domain.simulate.sample_pool import sample_pool

POOL_CACHE_VERSION = 1
LOCATION_SOURCES = ("index", "sample")


# --- locations ------------------------------------------------------------------------------

def load_pool(settings: Settings, source: str = "index", progress: bool = False, cache: bool = True) -> LocationPool:
    """Real postcodes to place incidents at: every live English postcode from the geography index
    (``index``), or the small built-in ``sample`` (no index needed). The pool built from the index
    is cached under AMB_DATA_DIR/simulate (unless ``cache`` is False), keyed by the index's stamp."""
    if source == "sample":
        return sample_pool()
    if source != "index":
        raise AmbError(f"unknown location source {source!r}: use {' or '.join(LOCATION_SOURCES)}")
    from amb.geo.index import GeoIndex, GeoIndexError

    index_dir = settings.geo_index_dir
    try:
        index = GeoIndex(index_dir)
    except GeoIndexError as exc:
        raise AmbError(f"{exc} (or use --locations sample)") from None
    stamp = str(index.manifest.get("stamp", "nostamp"))[:16]
    cache_file = settings.data_dir / "simulate" / f"location-pool-v{POOL_CACHE_VERSION}-{stamp}.npz"
    if cache and cache_file.exists():
        try:
            return _read_pool(cache_file)
        except (OSError, ValueError, KeyError):
            cache_file.unlink(missing_ok=True)
    with tqdm(total=1, desc="simulate: location pool from the geography index", disable=None if progress else True,
              leave=False) as bar:
        pcs = index.live_postcodes()
        h0 = index.hierarchies[0]  # the first vintage: site codes stay put when ICBs merge later
        icb_ods = np.asarray(h0.levels["icb"].ods, dtype=np.str_)[np.asarray(h0.parents["icb"])]
        trust_ods = np.asarray([t["ods"] for t in index.trusts], dtype=np.str_)[np.asarray(index.lsoa_trust)]
        pool = LocationPool.build(
            postcode=pcs["postcode"], easting=pcs["easting"], northing=pcs["northing"], lat=pcs["lat"],
            lon=pcs["lon"], postcode_lsoa=pcs["lsoa21_code"], lsoa_code=np.asarray(index.lsoa_codes),
            lsoa_trust=trust_ods, lsoa_icb=icb_ods, lsoa_weight=imd_weight(np.asarray(index.lsoa_imd_decile)),
        )
        bar.update()
    if cache:
        _write_pool(cache_file, pool)
    return pool


_POOL_FIELDS = ("easting", "northing", "lat", "lon", "lsoa_code", "lsoa_trust", "lsoa_icb", "lsoa_weight",
                "lsoa_start", "lsoa_count", "icb_codes")


def _write_pool(path: Path, pool: LocationPool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays: dict[str, Any] = {f: getattr(pool, f) for f in _POOL_FIELDS}
    arrays["postcode"] = np.char.encode(pool.postcode, "ascii")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _read_pool(path: Path) -> LocationPool:
    with np.load(path, allow_pickle=False) as z:
        arrays = {f: z[f] for f in _POOL_FIELDS}
        postcode = z["postcode"].astype(np.str_)
    return LocationPool(postcode=postcode, **arrays)


# --- pacing ---------------------------------------------------------------------------------

def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as possible), ``realtime`` -> 1.0, ``60x`` -> 60.0."""
    t = text.strip().lower()
    if t == "max":
        return None
    if t == "realtime":
        return 1.0
    try:
        value = float(t[:-1]) if t.endswith("x") else float("nan")
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise AmbError(f"--speed {text!r}: use max, realtime or a factor such as 60x")
    return value


@dataclass
class Pacer:
    """Releases events when their delivery time comes. ``realtime`` follows the wall clock itself
    (events already due go at once); ``Nx`` runs N times faster than real time from the first event."""

    speed: float | None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _origin: tuple[float, int] | None = None

    def sim_now(self, first_delivery: int) -> int:
        """The simulated 'now' in epoch ms."""
        if self.speed is None:
            return 2**62
        if self.speed == 1.0:
            return int(self.clock() * 1000)
        if self._origin is None:
            self._origin = (self.clock(), first_delivery)
        wall0, sim0 = self._origin
        return sim0 + int((self.clock() - wall0) * 1000 * self.speed)

    def batches(self, table: EventTable) -> Iterator[EventTable]:
        """The chunk cut into the pieces that are due, sleeping in between."""
        n = len(table)
        i = 0
        while i < n:
            now = self.sim_now(int(table.delivery[i]))
            cut = int(np.searchsorted(table.delivery, now, side="right"))
            if cut > i:
                yield table.take(slice(i, cut))
                i = cut
                continue
            wait_ms = (int(table.delivery[i]) - now) / (self.speed or 1.0)
            self.sleep(min(max(wait_ms / 1000, 0.001), 0.5))


# --- sinks ----------------------------------------------------------------------------------

class Sink(Protocol):
    def write(self, table: EventTable) -> None: ...


@dataclass
class FileSink:
    """Every trust's events in one JSONL file, in delivery order."""

    out: IO[str]
    written: int = 0

    def write(self, table: EventTable) -> None:
        if len(table):
            self.out.write("\n".join(table.lines.tolist()))
            self.out.write("\n")
            self.written += len(table)


@dataclass
class DirSink:
    """One JSONL file per trust (``RX7.jsonl``), each in delivery order."""

    files: dict[int, IO[str]]
    written: int = 0

    def write(self, table: EventTable) -> None:
        if not len(table):
            return
        for t in np.unique(table.trust).tolist():
            lines = table.lines[table.trust == t].tolist()
            out = self.files[t]
            out.write("\n".join(lines))
            out.write("\n")
        self.written += len(table)


@dataclass
class PublishSink:
    """Each trust's events through its own TrustPublisher (validated there; malformed ones rejected)."""

    publishers: dict[int, Any]
    line: int = 0
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def write(self, table: EventTable) -> None:
        for t in np.unique(table.trust).tolist():
            rows = np.flatnonzero(table.trust == t)
            records = [(self.line + int(i) + 1, json.loads(table.lines[i])) for i in rows.tolist()]
            self.publishers[t].publish_records(records)
        self.line += len(table)
        self.written += len(table)


# --- running --------------------------------------------------------------------------------

@dataclass
class RunStats:
    events: int = 0
    malformed: int = 0
    incidents: int = 0
    calls_111: int = 0
    seconds: float = 0.0
    by_trust: dict[str, int] = field(default_factory=dict)
    publish: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def run(cfg: SimConfig, pool: LocationPool, sink: Sink, *, speed: float | None = None,
        progress: bool = True, truth: Truth | None = None, pacer: Pacer | None = None) -> RunStats:
    """Generate the feed and hand it to ``sink`` in delivery order, paced by ``speed``."""
    stats = RunStats()
    truth = truth if truth is not None else Truth.empty()
    pacer = pacer or Pacer(speed)
    by_trust = np.zeros(len(TRUSTS), dtype=np.int64)
    t0 = time.perf_counter()
    with tqdm(desc="simulate", unit=" ev", unit_scale=True, disable=None if progress else True, leave=False) as bar:
        for chunk in chunks(cfg, pool, truth=truth):
            for piece in (pacer.batches(chunk) if speed is not None else (chunk,)):
                sink.write(piece)
                bar.update(len(piece))
            stats.events += len(chunk)
            stats.malformed += int((~chunk.valid).sum())
            by_trust += np.bincount(chunk.trust, minlength=len(TRUSTS))
    stats.seconds = time.perf_counter() - t0
    stats.incidents = sum(len(i) for i in truth.incidents)
    stats.calls_111 = sum(len(c.call_id) for c in truth.calls)
    stats.by_trust = {TRUSTS[i]: int(n) for i, n in enumerate(by_trust.tolist()) if n}
    return stats


def simulate_to_file(cfg: SimConfig, pool: LocationPool, path: Path, **kw: Any) -> RunStats:
    """All trusts in one JSONL file (``-`` is standard output)."""
    with ExitStack() as stack:
        if str(path) == "-":
            import sys

            out: IO[str] = sys.stdout
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(path.open("w", encoding="utf-8", buffering=1 << 20))
        return run(cfg, pool, FileSink(out), **kw)


def simulate_to_dir(cfg: SimConfig, pool: LocationPool, out_dir: Path, **kw: Any) -> RunStats:
    """One ``<ODS>.jsonl`` per simulated trust in ``out_dir`` (created; existing files replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        files: dict[int, IO[str]] = {TRUSTS.index(t): stack.enter_context((out_dir / f"{t}.jsonl").open("w", encoding="utf-8", buffering=1 << 20))
                 for t in cfg.trusts}
        return run(cfg, pool, DirSink(files), **kw)


def simulate_to_kafka(cfg: SimConfig, pool: LocationPool, settings: Settings, *,
                      speed: float | None = None, **kw: Any) -> RunStats:
    """Publish each trust's events to its topic via TrustPublisher (as `amb publish` would)."""
    try:
        from amb.publisher import TrustPublisher
    except ImportError:
        raise AmbError("--publish is not available yet (amb/publisher.py is missing): use --out-dir "
                       "and `amb publish` later") from None
    last_day_end = local_day(cfg.start + timedelta(days=cfg.days))[0]
    if speed is None and last_day_end > int(time.time() * 1000) + 86_400_000:
        raise AmbError(f"the simulated period ends {format_time(last_day_end)}, more than a day from now: its "
                       "events would be rejected as future; choose an earlier --start or --speed realtime")
    with ExitStack() as stack:
        pubs = {TRUSTS.index(t): stack.enter_context(TrustPublisher(settings, t)) for t in cfg.trusts}
        stats = run(cfg, pool, PublishSink(pubs), speed=speed, **kw)
        for i, pub in pubs.items():
            pub.flush()
            stats.publish[TRUSTS[i]] = {"sent": pub.stats.sent, "delivered": pub.stats.delivered,
                                        "rejected": pub.stats.rejected, "by_reason": dict(pub.stats.by_reason)}
    return stats


# --- ground truth ---------------------------------------------------------------------------

TRUTH_COLUMNS = (
    "trust", "incident_id", "clock_start", "category", "initial_category", "source", "lsoa21_code", "icb_ods",
    "disposition", "disposition_time", "corrected", "response_at", "destination_site", "arrived_at_hospital",
    "handover_at", "clear_at",
)


def write_truth(truth: Truth, path: Path) -> int:
    """What really happened to every incident, as CSV (times ISO 8601, empty where not applicable)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def t(ms: int) -> str:
        return format_time(ms) if ms >= 0 else ""

    n = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRUTH_COLUMNS)
        for inc in truth.incidents:
            cols = zip(
                inc.incident_id.tolist(), inc.clock_start.tolist(), inc.category.tolist(),
                inc.initial_category.tolist(), inc.source.tolist(), inc.lsoa21.tolist(), inc.icb.tolist(),
                inc.disposition.tolist(), inc.disposition_time.tolist(), inc.corrected.tolist(),
                inc.response_at.tolist(), inc.destination_site.tolist(), inc.arrived_at_hospital.tolist(),
                inc.handover_at.tolist(), inc.clear_at.tolist(), strict=True)
            for (iid, cs, cat, icat, src, lsoa, icb, disp, dt, corr, resp, site, arr, hand, clr) in cols:
                w.writerow((inc.trust, iid, t(cs), CATEGORY_NAMES[cat], CATEGORY_NAMES[icat], SOURCE_NAMES[src],
                            lsoa, icb, DISPOSITION_NAMES[disp], t(dt), int(corr), t(resp), site, t(arr), t(hand),
                            t(clr)))
                n += 1
    return n
