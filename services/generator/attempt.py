"""One claimed attempt of one job: run the pipeline, report, store, finish with fencing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from datetime import timedelta

import grpc
import structlog
from PIL import Image

from darkroom import events, metrics
from darkroom.models import JobRecord
from darkroom.process import raise_if_cancelled
from darkroom.services.generator.context import PipelineWedgedError, Services, Stop
from darkroom.services.generator.failures import Kind, PermanentError, classify
from darkroom.services.generator.outputs import LeaseLostError, store_images
from darkroom.services.generator.pipeline import GenerationRequest
from darkroom.services.generator.progress import StepProgress
from darkroom.spec import Spec

log = structlog.get_logger("darkroom.generator")
# The least time between two lease renewals while steps come in: it bounds how soon a
# cancellation is noticed (plus one tick of the monitor and one step).
BEAT_EVERY = 0.25
# While a step takes longer than this, the lease is renewed (and the cancel flag read) this
# often all the same, so a cancel is noticed within about a second even on slow steps.
CANCEL_CHECK = 1.0


class Attempt:
    """The attempt `row.attempt` of job `row.id`, which this worker has just claimed."""

    def __init__(self, services: Services, row: JobRecord) -> None:
        self.s = services
        self.row = row
        self.job_id: uuid.UUID = row.id
        self.number: int = row.attempt
        self.stop_reason: Stop | None = None
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self.progress = StepProgress(row.steps, services.settings.progress_rate)
        self._finished = False
        self._wake = asyncio.Event()  # the first step, or the end of the attempt
        self._monitor_task: asyncio.Task[None] | None = None
        self.concluded = False  # its move is made (a cancel noticed mid-batch)
        # The pipeline's last sign of life (monotonic), while it generates; None after.
        self.pipeline_alive_at: float | None = time.monotonic()

    # Called on the pipeline thread after every denoising step. It only records the step:
    # the monitor looks at it on its own clock. Waking the event loop for every step cost
    # the pipeline more than the step's event was worth (the loop's thread then takes the
    # GIL from the pipeline's, and its Redis and database replies wake it again). The first
    # step does wake it: that step's lease check stops an attempt that lost its job before
    # it stores anything, and the first progress event goes out at once.
    def on_step(self, step: int, total: int) -> bool:
        self.pipeline_alive_at = time.monotonic()
        if self.progress.record(step, total):
            self._loop.call_soon_threadsafe(self._wake.set)
        return not self._stop.is_set()

    def request_stop(self, reason: Stop) -> None:
        """Interrupt the pipeline at its next step (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop.set()

    async def _beat(self, step: int | None) -> None:
        row = await self.s.lifecycle.heartbeat(
            self.job_id, self.number, self.s.settings.lease, step
        )
        if row is None:
            self.request_stop(Stop.LOST)
        elif row.cancel_requested:
            self.request_stop(Stop.CANCEL)

    def _progress_due(self, *, final: bool = False) -> list[events.JobEvent]:
        """The progress events due (see `StepProgress.due`)."""
        total = self.progress.total
        return [
            events.progress(self.job_id, self.number, step, total)
            for step in self.progress.due(final=final)
        ]

    async def _publish_progress(self) -> None:
        """Publish the progress events due, in one round trip."""
        if due := self._progress_due():
            await self.s.lifecycle.publish(*due)

    async def _monitor(self) -> None:
        """Renew the lease, record and publish progress, and notice cancellation.

        It wakes on a clock, `1 / progress_rate` apart (at most `BEAT_EVERY`), and on the
        first step, not on every step. Progress goes out through a token bucket
        (`progress_rate` a second, as many in a burst), so short jobs report every step and
        long fast ones are coalesced. The database write that renews the lease, records the
        step and reads the cancel flag happens at most every `BEAT_EVERY` while steps come
        in (and every heartbeat interval without them): one write per step would compete
        with the pipeline for the CPU.
        """
        settings = self.s.settings
        tick = min(1 / settings.progress_rate, BEAT_EVERY)
        # The claim has just set the lease; the first step renews it at once all the same.
        beaten, beaten_step = time.monotonic() - BEAT_EVERY, 0
        while not self._finished:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            raise_if_cancelled()  # the suppressed timeout may have been our cancellation
            self._wake.clear()
            if self._finished:
                return
            now, step = time.monotonic(), self.progress.latest
            due = now - beaten >= min(settings.heartbeat_interval.total_seconds(), CANCEL_CHECK)
            if due or (step > beaten_step and now - beaten >= BEAT_EVERY):
                try:
                    await self._beat(step or None)
                    beaten, beaten_step = now, step
                except Exception as exc:  # noqa: BLE001 - keep going; the lease says how long
                    raise_if_cancelled()
                    log.warning("heartbeat_failed", error=repr(exc))
                    continue
                if self.stop_reason is Stop.LOST:
                    return
                if self.stop_reason is Stop.CANCEL:
                    # Ended at once: the pipeline stops at its next step (or, in a batch,
                    # goes on for the other jobs while this one's images are dropped).
                    await self._conclude_stop()
                    return
            await self._publish_progress()

    def request(self) -> GenerationRequest:
        return GenerationRequest.for_spec(Spec.of(self.row))

    def begin(self) -> None:
        """The pipeline is about to run this attempt's request: watch it."""
        self._monitor_task = asyncio.create_task(self._monitor())

    async def generated(
        self, outcome: list[Image.Image] | BaseException | None, began: float, generated: float
    ) -> None:
        """The pipeline call ended (images, an error, or None when stopped early): make the
        attempt's move, storing the images first (the output path, which a worker runs
        while its pipeline already runs the next job)."""
        await self._stop_monitor()
        self.pipeline_alive_at = None
        if self.concluded:
            return
        if isinstance(outcome, PipelineWedgedError):
            limit = self.s.settings.job_timeout.total_seconds()
            await self.fail(
                PermanentError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the job did not finish within the execution timeout of {limit:g} s",
                )
            )
            return
        if isinstance(outcome, BaseException):
            await self.fail(outcome)
            return
        self._count_steps(generated - began)
        if outcome is None or self.stop_reason is not None:
            await self._conclude_stop()
            return
        # The last steps go out with the terminal event, in the same append.
        await self._finish(outcome, self._progress_due(final=True), began, generated)

    async def run(self) -> None:
        """Run the attempt alone, to its end; every outcome is a row transition."""
        from darkroom.services.generator.batch import Batch  # noqa: PLC0415 - it runs us

        await Batch(self.s, [self]).run()

    def _count_steps(self, seconds: float) -> None:
        """The steps the pipeline ran, and their pace (a metric; nothing when off)."""
        if not metrics.enabled():
            return
        steps = self.progress.latest
        metrics.GENERATOR_STEPS.labels(self.row.model).inc(steps)
        if seconds > 0 and steps:
            metrics.GENERATOR_STEP_RATE.labels(self.row.model).set(steps / seconds)

    async def _finish(
        self,
        images: list[Image.Image],
        last_steps: list[events.JobEvent],
        began: float,
        generated: float,
    ) -> None:
        """Store the images and commit SUCCEEDED, holding the lease all along: a slow or
        retried upload must not look like a lost worker. Nothing is written once the job
        is lost, and what this attempt wrote is removed when it ends without it."""
        created: list[str] = []
        keeper = asyncio.create_task(self._keep_lease())
        try:
            outputs = await store_images(
                self.s.storage,
                self.row,
                images,
                seeds=self.request().seeds,
                model_version=self.s.pipeline.model_version,
                holds_job=self._holds_job,
                created=created,
            )
            self.s.faults.reached("after_upload")
            finished = await self.s.lifecycle.succeed(
                self.job_id,
                self.number,
                outputs,
                self.s.pipeline.model_id,
                self.s.pipeline.model_version,
                progress=last_steps,
            )
        except LeaseLostError:
            finished = None
        except Exception as exc:  # noqa: BLE001 - classified below
            await self._stop_keeper(keeper)
            await self.fail(exc)
            await self._discard(created)
            return
        await self._stop_keeper(keeper)
        if finished is None:
            log.warning("attempt_fenced", reason="a newer attempt owns the job")
            await self._discard(created)
            return
        log.info(
            "attempt_succeeded",
            images=len(outputs),
            generate_ms=round((generated - began) * 1000, 1),
            total_ms=round((time.perf_counter() - began) * 1000, 1),
        )

    async def _keep_lease(self) -> None:
        """Renew the lease every heartbeat interval while the outputs are stored."""
        every = self.s.settings.heartbeat_interval.total_seconds()
        while True:
            raise_if_cancelled()
            await asyncio.sleep(every)
            try:
                if (
                    await self.s.lifecycle.heartbeat(
                        self.job_id, self.number, self.s.settings.lease
                    )
                    is None
                ):
                    log.warning("lease_lost_while_storing")
                    return
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease says how long
                log.warning("heartbeat_failed", error=repr(exc))

    @staticmethod
    async def _stop_keeper(keeper: asyncio.Task[None]) -> None:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    async def _discard(self, created: list[str]) -> None:
        """Remove the objects this attempt created once the job ended without them: it
        failed, or another attempt finished it. A job back in the queue (or running again)
        keeps them: its next attempt adopts identical objects."""
        if not created:
            return
        try:
            row = await self.s.lifecycle.store.get_any(self.job_id)
        except Exception as exc:  # noqa: BLE001 - an orphan object is the lesser harm
            log.warning("output_cleanup_failed", error=repr(exc))
            return
        if row is None or not row.state.terminal:
            return
        kept = {output.get("uri") for output in row.outputs or []}
        orphans = [uri for uri in created if uri not in kept]
        for uri in orphans:
            try:
                await self.s.storage.delete(uri)
            except Exception as exc:  # noqa: BLE001 - an orphan object is the lesser harm
                log.warning("output_cleanup_failed", uri=uri, error=repr(exc))
        if orphans:
            log.info("outputs_discarded", count=len(orphans))

    async def _stop_monitor(self) -> None:
        # Let it finish its current write rather than cancel a query halfway.
        self._finished = True
        self._wake.set()
        if self._monitor_task is not None:
            await self._monitor_task

    async def _conclude_stop(self) -> None:
        """End an attempt that was told to stop, once."""
        if self.concluded:
            return
        self.concluded = True
        reason = self.stop_reason
        log.info("attempt_stopped", reason=reason.value if reason else None)
        if reason is Stop.LOST:
            return
        if reason is Stop.CANCEL:
            await self.s.lifecycle.stop_cancelled(self.job_id, self.number)
        elif reason is Stop.TIMEOUT:
            limit = self.s.settings.job_timeout.total_seconds()
            await self.fail(
                PermanentError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the job did not finish within the execution timeout of {limit:g} s",
                )
            )
        elif reason is Stop.SHUTDOWN:
            await self._requeue(
                grpc.StatusCode.UNAVAILABLE, "the worker shut down", timedelta(0), refund=True
            )

    async def _holds_job(self) -> bool:
        row = await self.s.lifecycle.heartbeat(self.job_id, self.number, self.s.settings.lease)
        return row is not None

    async def fail(self, exc: BaseException) -> None:
        """Classify `exc`: FAILED at once, or back to the queue while attempts remain."""
        failure = classify(exc)
        log.warning(
            "attempt_failed",
            kind=failure.kind.value,
            code=failure.code.name,
            error=failure.message,
            exc_info=failure.kind is Kind.UNKNOWN,
        )
        code = failure.code.value[0]
        try:
            if failure.kind is Kind.PERMANENT or self.number >= self.row.max_attempts:
                await self.s.lifecycle.fail(self.job_id, self.number, code, failure.message)
                return
            await self._requeue(failure.code, failure.message, self._backoff())
        except Exception as handling:  # noqa: BLE001 - the reconciler takes over after the lease
            log.error("failure_handling_failed", error=repr(handling))

    def _backoff(self) -> timedelta:
        return self.s.settings.retry_delay(self.number)

    async def _requeue(
        self, code: grpc.StatusCode, message: str, delay: timedelta, *, refund: bool = False
    ) -> None:
        await self.s.lifecycle.requeue(
            self.job_id,
            self.number,
            code=code.value[0],
            message=message,
            delay=delay,
            refund=refund,
        )
