"""Every Prometheus metric of `amb worker`, declared once (names ``amb_worker_*`` for the worker's
own health, and the live operational gauges of :mod:`streams.live`).

The live gauges are not updated per event: :class:`LiveCollector` computes them from the worker's
:class:`~streams.live.LiveView` when Prometheus scrapes, so they are always consistent with each
other. Counts sum across workers (``sum by (icb) (...)``); the non-conveyance rate and the longest
wait do not (recompute the rate from ``amb_live_dispositions_today``; take ``max`` of the wait).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from streams.live import LiveView

log = logging.getLogger(__name__)

EVENTS: Final = Counter("amb_worker_events_total", "Valid events processed, by event type and trust "
                        "(duplicates included).", ["type", "trust"])
DUPLICATES: Final = Counter("amb_worker_duplicates_total", "Events whose id the incident state had "
                            "already applied (replays, re-sends).", ["trust"])
DLQ: Final = Counter("amb_worker_dlq_total", "Messages sent to the dead-letter topic, by reason code.",
                     ["reason"])
FACTS: Final = Counter("amb_worker_facts_total", "Fact messages sent to the incident-facts topic.", ["kind"])
ATTRIBUTED: Final = Counter("amb_worker_attributed_total", "Locations attributed (one vectorised call "
                            "per batch), by geography status.", ["status"])
EXPIRED: Final = Counter("amb_worker_expired_total", "Incident states dropped after the late horizon.")
BATCH_SIZE: Final = Histogram("amb_worker_batch_size", "Messages per batch handed to the agent.",
                              buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000))
BATCH_SECONDS: Final = Histogram("amb_worker_batch_seconds", "Time to process one batch (decode to send).",
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STATE_INCIDENTS: Final = Gauge("amb_worker_state_incidents", "Incident and 111-call states held in this "
                               "worker's table partitions.")
EVENT_LAG: Final = Gauge("amb_worker_event_lag_seconds", "Wall clock minus the greatest event time of "
                         "the last batch (large during a replay).")
LAST_BATCH: Final = Gauge("amb_worker_last_batch_timestamp_seconds", "When the last batch finished "
                          "(Unix time): a stuck agent shows as a growing age.")
HOLES: Final = Counter("amb_worker_offset_holes_total", "Times Faust handed the agent a message past the next "
                       "unprocessed offset of its partition; the worker seeks back and reads the skipped ones again.")
PARTITIONS: Final = Gauge("amb_worker_assigned_partitions", "Source partitions assigned to this worker.")
CONSUMER_LAG: Final = Gauge("amb_worker_consumer_lag", "Events messages not yet processed by this worker "
                            "(high watermark minus the next offset to process), per assigned events partition; "
                            "updated every 0.5 s, label sets of revoked partitions removed.",
                            ["topic", "partition"])


class ConsumerLag:
    """Keeps :data:`CONSUMER_LAG`: per assigned events partition, the high watermark minus the next
    offset this worker will process.

    The next offset is the greatest of: the worker's own next unprocessed offset (the contiguous
    run it commits, ``StreamWorker._next_offset``, passed to :meth:`update`), the offset Faust last committed or sought to for the group (after a
    rebalance hands a partition back, another worker may have gone further), and the partition's
    log start (where a group with no commit starts). High watermarks come from the consumer's fetch
    responses (cached, free) and, every ``refresh_s`` seconds or when the cache has none yet, from
    the broker: a worker far behind has paused fetching, so its cache goes stale exactly then.
    """

    def __init__(self, events_topics: Iterable[str], refresh_s: float = 10.0) -> None:
        self.events_topics = frozenset(events_topics)
        self.refresh_s = refresh_s
        self._asked: dict[tuple[str, int], tuple[int, int]] = {}  # (log start, high watermark) from the broker
        self._asked_at = float("-inf")
        self._labelled: set[tuple[str, int]] = set()

    async def update(self, consumer: Any, now: float, next_offsets: Mapping[tuple[str, int], int]
                     ) -> dict[tuple[str, int], int]:
        """Set the gauge for every assigned events partition and drop revoked ones; returns the lags."""
        tps = [tp for tp in consumer.assignment() if tp.topic in self.events_topics]
        assigned = {(tp.topic, tp.partition) for tp in tps}
        for key in self._labelled - assigned:
            CONSUMER_LAG.remove(key[0], str(key[1]))
            self._asked.pop(key, None)
        self._labelled &= assigned
        cached: dict[tuple[str, int], int] = {}
        for tp in tps:
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - revoked since assignment() was read: next tick
                high = None
            if high is not None:
                cached[(tp.topic, tp.partition)] = int(high)
        committed = getattr(consumer, "_committed_offset", {})  # Faust's own record; no public accessor
        since = now - self._asked_at
        if tps and (since >= self.refresh_s or (since >= 1.0 and assigned - set(cached) - set(self._asked))):
            self._asked_at = now
            try:
                starts = await consumer.earliest_offsets(*tps)
                highs = await consumer.highwaters(*tps)
                self._asked.update({(tp.topic, tp.partition): (int(starts.get(tp) or 0), int(highs[tp]))
                                    for tp in tps if highs.get(tp) is not None})
            except Exception as exc:  # noqa: BLE001 - a metric must not stop the worker
                log.warning("could not read the events partitions' offsets for the lag gauge: %s", exc)
        lags = {}
        for tp in tps:
            key = (tp.topic, tp.partition)
            start, asked_high = self._asked.get(key, (0, -1))
            high = max(cached.get(key, -1), asked_high)
            if high < 0:
                continue  # nothing known yet: no series rather than a wrong one
            nxt = max(next_offsets.get(key, 0), committed.get(tp) or 0, start)
            lags[key] = max(0, high - nxt)
            CONSUMER_LAG.labels(key[0], str(key[1])).set(lags[key])
            self._labelled.add(key)
        return lags


class LiveCollector:
    """Exports a LiveView as gauges, computed at scrape time."""

    def __init__(self, live: LiveView) -> None:
        self.live = live

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the names are fixed but the label values are not

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.live.snapshot()
        g = GaugeMetricFamily
        as_of = g("amb_live_as_of_seconds", "The live clock: greatest event time seen (Unix time).")
        as_of.add_metric([], snap.as_of_ms / 1000)
        yield as_of
        inc = g("amb_live_incidents_today", "Incidents with clock start today (Europe/London), by trust "
                "and ICB of the incident.", labels=["trust", "icb"])
        for (t, i), n in sorted(snap.incidents_today.items()):
            inc.add_metric([t, i], n)
        yield inc
        hour = g("amb_live_incidents_last_hour", "Incidents with clock start in the last 60 minutes.",
                 labels=["trust", "icb"])
        for (t, i), n in sorted(snap.incidents_last_hour.items()):
            hour.add_metric([t, i], n)
        yield hour
        disp = g("amb_live_dispositions_today", "Today's incidents with a disposition, by disposition.",
                 labels=["trust", "icb", "disposition"])
        for (t, i, d), n in sorted(snap.dispositions_today.items()):
            disp.add_metric([t, i, d], n)
        yield disp
        rate = g("amb_nonconveyance_rate_today", "(A17 + A55 + A54) / incidents with a disposition today, "
                 "per ICB (this worker's incidents: recompute from amb_live_dispositions_today across workers).",
                 labels=["icb"])
        for icb in sorted({i for _, i, _ in snap.dispositions_today}):
            r = snap.nonconveyance_rate(icb=icb)
            if r is not None:
                rate.add_metric([icb], r)
        yield rate
        lost = g("amb_handover_hours_lost_today", "Hours lost to handovers over 15 minutes completed today, "
                 "by ICB of the incident.", labels=["icb"])
        for icb, ms in sorted(snap.lost_ms_today_icb.items()):
            lost.add_metric([icb], ms / 3_600_000)
        yield lost
        lost_site = g("amb_hospital_hours_lost_today", "Hours lost to handovers over 15 minutes completed "
                      "today, by hospital site.", labels=["site"])
        for site, ms in sorted(snap.lost_ms_today_site.items()):
            lost_site.add_metric([site], ms / 3_600_000)
        yield lost_site
        done = g("amb_hospital_handovers_today", "Handovers completed today, by hospital site.", labels=["site"])
        for site, n in sorted(snap.handovers_today.items()):
            done.add_metric([site], n)
        yield done
        done_h = g("amb_hospital_handovers_last_hour", "Handovers completed in the last 60 minutes.",
                   labels=["site"])
        for site, n in sorted(snap.handovers_last_hour.items()):
            done_h.add_metric([site], n)
        yield done_h
        waiting = g("amb_hospital_patients_waiting", "Patients arrived at the hospital and not yet handed "
                    "over (arrived within 24 h).", labels=["site"])
        longest = g("amb_hospital_longest_wait_seconds", "Longest current wait of a patient not yet "
                    "handed over.", labels=["site"])
        for site, n in sorted(snap.waiting.items()):
            waiting.add_metric([site], n)
            longest.add_metric([site], snap.longest_wait_ms[site] / 1000)
        yield waiting
        yield longest


def register_live(live: LiveView, registry: CollectorRegistry = REGISTRY) -> LiveCollector:
    """Register the live gauges of ``live`` (once per process)."""
    collector = LiveCollector(live)
    registry.register(collector)
    return collector
