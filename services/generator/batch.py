"""Attempts that share one pipeline call: a job alone, or a micro-batch of compatible ones.

A generator of a model in `DARKROOM_BATCH_SIZES` claims, beside the job it took, further
queued jobs that share its size, steps and guidance (`darkroom.spec.BATCH_SHARED`), up to
the batch size in images, waiting at most `DARKROOM_BATCH_WAIT` for them; a job that cannot
join keeps its message for the worker's next turn. The pipeline then runs every image in
one call, each with its own prompt, seed and CPU generator, made batch-invariant
(`invariance.py`), so each job's images are byte-identical to a run alone.

Each member stays an attempt of its own: its own lease renewed and cancel flag read by its
own monitor, its own progress events, outputs and fenced commit. A member told to stop
stops counting: a cancelled one ends CANCELLED at once and one that lost its job publishes
nothing, while the call goes on for the others (its images are dropped; the call stops only
when no member wants it). The call's one timeout ends all of them alike.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import cast

import structlog
from PIL import Image

from darkroom import tracing
from darkroom.services.generator.attempt import Attempt
from darkroom.services.generator.context import PipelineWedgedError, Services, Stop
from darkroom.services.generator.pipeline import BatchPipeline, PipelineInterrupted, can_batch

log = structlog.get_logger("darkroom.generator")

Outcome = list[Image.Image] | BaseException | None


class Batch:
    """The attempts of one pipeline call (one or more)."""

    def __init__(self, services: Services, attempts: list[Attempt]) -> None:
        self.s = services
        self.attempts = attempts
        self.generated = False  # the call returned and each member has its outcome
        self._wedged = False
        self._lives: list[asyncio.Task[None]] = []

    @property
    def pipeline_alive_at(self) -> float | None:
        """The pipeline's last sign of life (monotonic) while it runs; None after."""
        times = [t for a in self.attempts if (t := a.pipeline_alive_at) is not None]
        return max(times) if times else None

    def on_step(self, step: int, total: int) -> bool:
        """Every member records the step; the call goes on while any of them wants it."""
        going = [attempt.on_step(step, total) for attempt in self.attempts]
        return any(going)

    def request_stop(self, reason: Stop) -> None:
        for attempt in self.attempts:
            attempt.request_stop(reason)

    def _call(self) -> list[list[Image.Image]]:
        requests = [attempt.request() for attempt in self.attempts]
        pipeline = self.s.pipeline
        if len(requests) == 1 or not can_batch(pipeline):
            return [pipeline.generate(requests[0], self.on_step)]
        return cast(BatchPipeline, pipeline).generate_batch(requests, self.on_step)

    async def _generate(self) -> list[list[Image.Image]] | None:
        """Run the pipeline on its thread; None when it was stopped early."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.s.executor, self._call)
        done, _ = await asyncio.wait({future}, timeout=self.s.settings.job_timeout.total_seconds())
        if not done:
            self.request_stop(Stop.TIMEOUT)
            # It stops at its next step; one that takes longer than a lease never will.
            done, _ = await asyncio.wait({future}, timeout=self.s.settings.lease.total_seconds())
            if not done:
                raise PipelineWedgedError
        try:
            return await future
        except PipelineInterrupted:
            return None

    def start(self, claimed_ns: int) -> None:
        """Start each member's life (its span from `claimed_ns`, just before its claim; its
        monitor), before the call runs."""
        loop = asyncio.get_running_loop()
        self._outcomes: asyncio.Future[tuple[list[Outcome], float, float]] = loop.create_future()
        self._lives = [
            asyncio.create_task(self._life(index, claimed_ns))
            for index in range(len(self.attempts))
        ]

    async def _life(self, index: int, claimed_ns: int) -> None:
        attempt = self.attempts[index]
        row = attempt.row
        with tracing.attempt_span(str(row.id), row.model, row.attempt, row.traceparent, claimed_ns):
            structlog.contextvars.bind_contextvars(job_id=str(row.id), attempt=row.attempt)
            log.info("attempt_started", worker_id=self.s.worker_id, batch=len(self.attempts))
            attempt.begin()
            outcomes, began, generated = await self._outcomes
            await attempt.generated(outcomes[index], began, generated)

    async def generate(self) -> None:
        """Run the call (after `start`); each member then makes its move in its own task."""
        began = time.perf_counter()
        try:
            images = await self._generate()
            outcomes: list[Outcome] = (
                [None] * len(self.attempts) if images is None else list(images)
            )
        except Exception as exc:  # noqa: BLE001 - each member classifies it
            outcomes = [exc] * len(self.attempts)
        self._outcomes.set_result((outcomes, began, time.perf_counter()))
        self._wedged = bool(outcomes) and isinstance(outcomes[0], PipelineWedgedError)
        self.generated = True

    def abandon(self) -> None:
        """The call itself was cancelled (the process is going): stop the members too."""
        for life in self._lives:
            life.cancel()

    async def finish(self) -> None:
        """Until every member made its move (stored its outputs first); a wedged pipeline
        then ends the process: its only pipeline thread is stuck for good, and its
        supervisor starts a fresh one."""
        for result in await asyncio.gather(*self._lives, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("attempt_crashed", error=repr(result))
        if self._wedged:
            log.error("pipeline_wedged", action="exiting")
            os._exit(70)

    async def run(self) -> None:
        """The whole batch, to its end (tests; a worker interleaves the steps)."""
        self.start(time.time_ns())
        await self.generate()
        await self.finish()
