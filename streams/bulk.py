"""Bulk delivery of the events topics to the worker's agent, inside Faust.

Faust hands a stream one message at a time: for every message its fetch loop awaits
``wait_first(callback(message), suspend_flow.wait())`` (two tasks), the Conductor decodes it into
an Event and queues it, and the stream's iterator tracks, acks and yields it. On this 2-core
machine that path tops out near 3,800 messages/s even for an agent that does nothing with them
(bench/bench_worker.py measures it), against ~240,000/s for the same aiokafka consumer read
directly: Faust's per-message machinery, not the broker or the worker's own work, was the limit.

So the consumer here (:class:`BulkConsumer`, the aiokafka driver's consumer with one method
replaced) keeps everything Faust does around the fetch — group membership and rebalances, flow
control, table recovery from changelogs, seeks to the committed offsets — but, for the topics of a
:class:`BulkRoute`, takes the records of each fetch as they are (aiokafka ``ConsumerRecord``\\ s,
which have the ``topic``, ``partition``, ``offset``, ``key``, ``value`` and ``headers`` the batch
step reads) and hands them on in batches of up to ``batch_size`` records gathered within
``batch_within`` seconds. Every other topic (the table changelogs during recovery) goes through
Faust's own per-message path unchanged.

The route's ``deliver`` puts each batch on a Faust channel that the worker's agent iterates; once
the agent has taken it, the next batch is gathered while it works (aiokafka's record parsing then
overlaps the agent's native code), and handed over when the agent is done: one batch at the agent
and one in the making, so memory stays bounded. The routed topics are declared with
``acks=False``: Faust neither tracks nor commits them; the worker commits its own processed and
delivered offsets (streams.agents). :meth:`BulkConsumer.wait_empty`, which Faust awaits before a
rebalance revokes partitions and when it stops, first waits for the batch in flight and lets the
worker commit, so a revoked partition's next owner starts exactly where this worker stopped.

A batch in the making is dropped, not delivered, when the flow stops (a rebalance began) or the
consumer generation changes: after the rebalance every partition is sought back to its committed
offset, so those records come again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver


@dataclass
class BulkRoute:
    """Which topics go around Faust's per-message path, and where their batches go."""

    topics: frozenset[str]
    deliver: Callable[[list[Any], int], Awaitable[tuple[asyncio.Future[None], asyncio.Future[None]]]]
    """Called with each batch (in fetch order per partition) and the consumer generation it was
    fetched in; hands it to the agent and returns (started, done) futures."""
    settle: Callable[[], Awaitable[None]]
    """Awaited before partitions are revoked and at shutdown: wait for the batch in flight, commit."""
    batch_size: int = 10_000
    batch_within: float = 0.2
    batches: int = field(default=0, init=False)


class BulkConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, with the fetch loop delivering routed topics in bulk."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the worker's integration tests
        route: BulkRoute | None = getattr(self.app, "bulk_route", None)
        if route is None:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        routed = route.topics
        batch: list[Any] = []
        started = 0.0
        generation = None
        processing: asyncio.Future[None] | None = None  # the batch the agent is working on
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                timeout = 1.0 if not batch else max(0.0, started + route.batch_within - time.monotonic())
                records, active = await self._wait_next_records(timeout)
                await asyncio.sleep(0)  # let the rest of the loop in between fetches, as Faust does
                if self.should_stop:
                    break
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    batch = []  # a rebalance began: everything is sought back to its commit after it
                    generation = self.app.consumer_generation_id
                    if not self.flow_active:
                        continue
                for tp, recs in (records or {}).items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    if tp.topic in routed:
                        if not batch:
                            started = time.monotonic()
                        batch.extend(recs)
                    else:  # Faust's own path (changelogs in recovery), as its fetch loop does it
                        for record in recs:
                            read = self._read_offset.get(tp)
                            if read is None or record.offset >= read:
                                await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
                                self._read_offset[tp] = record.offset
                if batch and (len(batch) >= route.batch_size or time.monotonic() - started >= route.batch_within):
                    out, batch = batch, []
                    if processing is not None:
                        await processing  # one batch at the agent, one being gathered: memory stays bounded
                        processing = None
                    if self.flow_active and self.app.consumer_generation_id == generation:
                        route.batches += 1
                        began, done = await route.deliver(out, generation)
                        await self.wait_first(began, self.suspend_flow.wait())
                        # not begun: a rebalance began and cleared the agent's queue (the records come again)
                        processing = done if began.done() else None
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise

    async def wait_empty(self) -> None:
        route: BulkRoute | None = getattr(self.app, "bulk_route", None)
        if route is not None:
            await route.settle()
        await super().wait_empty()


class BulkTransport(aiokafka_driver.Transport):
    Consumer = BulkConsumer


class BulkApp(faust.App):
    """A Faust App whose consumer can deliver topics in bulk (set :attr:`bulk_route`)."""

    bulk_route: BulkRoute | None = None

    def _new_transport(self) -> Any:
        urls: Sequence[Any] = self.conf.broker_consumer
        if urls and str(urls[0]).split("://", 1)[0] not in ("kafka", "aiokafka"):
            return super()._new_transport()
        return BulkTransport(urls, self)
