"""A watcher process for section 4: `python -m bench.watch_client PLAN.json`.

Opens one WatchJob per job id in the plan, spread over several channels, and prints
`{"ready": …}` once every stream has its snapshot. Then it waits for one more event on
each stream and prints `{"latencies": […]}` (seconds from the event's `time`) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from darkroom.config import DEV_TOKEN
from darkroom.v1 import events_service_pb2, events_service_pb2_grpc

METADATA = (("authorization", f"Bearer {DEV_TOKEN}"),)
OPEN_BATCH = 250


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def next_event(call: Any) -> events_service_pb2.JobEvent | None:
    response = await call.read()
    if isinstance(response, events_service_pb2.WatchJobResponse):
        return response.event
    return None


async def main(plan: dict[str, Any]) -> None:
    address = f"127.0.0.1:{plan['port']}"
    job_ids: list[str] = plan["job_ids"]
    # A local subchannel pool gives each channel its own connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(address, options=options) for _ in range(plan["channels"])
    ]
    stubs = [events_service_pb2_grpc.EventsServiceStub(channel) for channel in channels]
    calls: list[Any] = []
    failed: dict[str, int] = {}
    started = time.monotonic()
    for first in range(0, len(job_ids), OPEN_BATCH):
        batch = [
            stubs[(first + i) % len(stubs)].WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id),
                metadata=METADATA,
                timeout=plan["deadline_s"],
            )
            for i, job_id in enumerate(job_ids[first : first + OPEN_BATCH])
        ]
        snapshots = await asyncio.gather(*(next_event(c) for c in batch), return_exceptions=True)
        for call, snapshot in zip(batch, snapshots, strict=True):
            if isinstance(snapshot, events_service_pb2.JobEvent):
                calls.append(call)
            else:
                name = type(snapshot).__name__
                failed[name] = failed.get(name, 0) + 1
        print(
            f"{len(calls)} open after {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    emit({"ready": len(calls), "failed": failed, "open_s": time.monotonic() - started})

    latencies: list[float] = []

    async def receive(call: Any) -> None:
        try:
            event = await next_event(call)
            while event is not None and event.HasField("position"):
                event = await next_event(call)  # live queue positions: not the published event
        except grpc.aio.AioRpcError:
            return
        if event is not None:
            latencies.append(round((time.time_ns() - event.time.ToNanoseconds()) / 1e9, 6))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(receive(call) for call in calls)), plan["receive_timeout_s"]
        )
    emit({"latencies": latencies, "missing": len(calls) - len(latencies)})
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close(grace=None)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(json.loads(Path(sys.argv[1]).read_text())))
