"""Load shapes: open loop at a fixed offered rate, and closed loop at a fixed concurrency."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summary_ms

Operation = Callable[[], Awaitable[Any]]


def quiet_heap() -> None:
    """Collect, then freeze what is left out of later collections: a full collection in
    the load generator stalls every operation in flight (~70 ms seen), which would count
    against the system measured. Only the bench process does this."""
    gc.collect()
    gc.freeze()


@dataclass
class LoadResult:
    """Latencies of the operations that succeeded, failures, and the time it all took."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    offered: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        code = getattr(exc, "code", None)
        if callable(code):
            name = f"{name}:{code()}"
        self.errors[name] = self.errors.get(name, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": self.elapsed,
            "throughput_per_s": self.throughput,
            **summary_ms(self.latencies),
        }


async def open_loop(operation: Operation, rate: float, seconds: float) -> LoadResult:
    """Start `rate` operations a second for `seconds`, on a clock, whatever is in flight.

    Latency runs from each operation's scheduled start, so a stall (of the system or of
    this client) counts against every operation that should have started meanwhile.
    """
    result = LoadResult(offered=max(1, round(rate * seconds)))
    quiet_heap()
    start = time.perf_counter() + 0.02
    last_done = start

    async def one(scheduled: float) -> None:
        nonlocal last_done
        try:
            await operation()
        except Exception as exc:  # noqa: BLE001 - counted, reported
            result.error(exc)
            return
        done = time.perf_counter()
        result.latencies.append(done - scheduled)
        last_done = max(last_done, done)

    tasks = []
    for index in range(result.offered):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed = max(last_done, start + result.offered / rate) - start
    return result


async def closed_loop(operation: Operation, concurrency: int, seconds: float) -> LoadResult:
    """`concurrency` loops, each starting its next operation when the last one ends."""
    result = LoadResult()
    quiet_heap()
    start = time.perf_counter()
    end = start + seconds
    last_done = start

    async def worker() -> None:
        nonlocal last_done
        while (began := time.perf_counter()) < end:
            result.offered += 1
            try:
                await operation()
            except Exception as exc:  # noqa: BLE001 - counted, reported
                result.error(exc)
                continue
            done = time.perf_counter()
            result.latencies.append(done - began)
            last_done = max(last_done, done)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = last_done - start
    return result
