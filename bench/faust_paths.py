"""How fast Faust hands the events topics to an agent that does nothing with them, by path.

    python bench/faust_paths.py --bootstrap HOST:PORT --prefix PREFIX --n N --mode stream|bulk

``stream``: Faust's per-message stream, ``stream.take_events(10_000, within=0.2)`` (what the
worker used before streams.bulk). ``bulk``: streams.bulk's consumer, records of each fetch in
batches of 10,000 through a channel. Both read every ``PREFIX.events.*`` topic from the start as
a new consumer group and print one line, ``<mode> <messages/s>``, timed from the first batch to
the N-th message. bench/bench_worker.py runs it in a subprocess for both modes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--mode", choices=("stream", "bulk"), required=True)
    args = ap.parse_args()

    from confluent_kafka.admin import AdminClient

    from streams.bulk import BulkApp, BulkRoute

    names = sorted(t for t in AdminClient({"bootstrap.servers": args.bootstrap}).list_topics(timeout=10).topics
                   if t.startswith(f"{args.prefix}.events."))
    datadir = tempfile.mkdtemp(prefix="amb-fp-")
    app = BulkApp(f"bench-{args.mode}-{uuid.uuid4().hex[:6]}", broker=f"kafka://{args.bootstrap}", store="memory://",
                  web_enabled=False, consumer_auto_offset_reset="earliest", datadir=datadir, broker_max_poll_records=10_000,
                  consumer_max_fetch_size=4 * 1024 * 1024, stream_buffer_maxsize=16_384, worker_redirect_stdouts=False)
    source = app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       acks=args.mode == "stream")
    seen = {"n": 0, "t0": 0.0}

    def count(k: int) -> None:
        if not seen["t0"]:
            seen["t0"] = time.perf_counter()
        seen["n"] += k
        if seen["n"] >= args.n:
            rate = seen["n"] / (time.perf_counter() - seen["t0"])
            os.write(1, f"{args.mode} {rate:.0f}\n".encode())  # fd 1: Faust's worker redirects sys.stdout
            shutil.rmtree(datadir, ignore_errors=True)  # os._exit skips every clean-up
            os._exit(0)

    if args.mode == "stream":
        @app.agent(source)
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(10_000, within=0.2):
                count(len(events))
    else:
        channel = app.channel()
        app.topics.add(source)

        async def deliver(records: list[Any], generation: int) -> tuple[Any, Any]:
            done = asyncio.get_running_loop().create_future()
            await channel.put((records, done))  # type: ignore[arg-type]
            return done, done

        async def settle() -> None:
            return None

        app.bulk_route = BulkRoute(frozenset(names), deliver, settle)

        @app.agent(channel)
        async def agent(stream: Any) -> None:
            async for records, done in stream:
                count(len(records))
                done.set_result(None)

    sys.argv = [sys.argv[0], "worker", "-l", "error", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
