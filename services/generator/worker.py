"""The Generator process: a queue consumer that runs one job at a time on one device."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from darkroom import metrics, queue
from darkroom.capacity import Presence
from darkroom.config import Settings
from darkroom.consumer import Consumer
from darkroom.models import JobRecord
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator import telemetry
from darkroom.services.generator.attempt import Attempt
from darkroom.services.generator.batch import Batch
from darkroom.services.generator.context import Services, Stop
from darkroom.services.generator.faults import Faults
from darkroom.services.generator.health import HealthServer, Vitals
from darkroom.wiring import Resources

log = structlog.get_logger("darkroom.generator")
# How often a forming batch looks for companions while it waits for them.
BATCH_POLL = 0.001


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runner:
    """Turns queue messages into attempts, and hands the current one back on shutdown.

    The pipeline runs one call at a time (one job, or a batch of them: `batch.py`). Once
    a call returns, its outputs are encoded, stored and committed in the background while
    the consumer takes the next job and the pipeline runs it: at most one call's outputs
    are in flight, and each attempt still stores, then commits, then publishes, fenced by
    its own lease, exactly as alone."""

    services: Services
    presence: Presence | None = None
    consumer: Consumer | None = None  # where a batch takes its companions
    current: Batch | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    storing: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.idle.set()

    async def handle(self, message: queue.QueueMessage) -> None:
        """Run the message's job to its end (the outputs too)."""
        await self.take(message)
        await self.settle()

    async def settle(self) -> None:
        """Until the outputs in flight are stored and committed."""
        if self.storing is not None:
            await asyncio.shield(self.storing)

    async def take(self, message: queue.QueueMessage) -> None:
        """The consumer's handler: claim the job after the message's (stale messages change
        nothing) and its batch companions, run the pipeline call, and leave its outputs to
        the background; returns once the pipeline is free (and the previous call's outputs
        are stored)."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job_id=str(message.job_id))
        s = self.services
        claiming = time.time_ns()  # the attempt's span starts with its claim
        row = await s.lifecycle.claim(
            message.job_id, message.attempt, s.worker_id, s.settings.lease
        )
        if row is None:  # a duplicate, late or expired delivery
            log.info("delivery_ignored", queued_attempt=message.attempt)
            return
        rows = [row, *await self._companions(row)]
        batch = Batch(s, [Attempt(s, r) for r in rows])
        self.current = batch
        self.idle.clear()
        self._busy(row, True)
        try:
            batch.start(claiming)
            await batch.generate()
        except BaseException:
            batch.abandon()
            raise
        finally:
            self.current = None
            self._busy(row, False)
            if not batch.generated:  # nothing to store
                self._settled()
        previous, self.storing = self.storing, asyncio.create_task(self._store(batch))
        if previous is not None:
            await asyncio.shield(previous)

    async def _store(self, batch: Batch) -> None:
        try:
            await batch.finish()
        finally:
            if self.storing is asyncio.current_task():
                self.storing = None
            self._settled()

    def _settled(self) -> None:
        """Idle once no call runs and no outputs are in flight."""
        if self.current is None and (self.storing is None or self.storing.done()):
            self.idle.set()

    async def _companions(self, lead: JobRecord) -> list[JobRecord]:
        """Queued jobs to run in the lead's call: claimed while they fit, waiting at most
        `batch_wait` for them; the first that cannot join is kept for the next turn."""
        s, consumer = self.services, self.consumer
        room = s.settings.batch_size - lead.num_images
        if consumer is None or room <= 0 or not pipelines.can_batch(s.pipeline):
            return []
        joined: list[JobRecord] = []
        deadline = time.monotonic() + s.settings.batch_wait.total_seconds()
        while room > 0:
            try:
                message = await consumer.take_more()
            except Exception as exc:  # noqa: BLE001 - the lead runs all the same
                log.warning("batch_gathering_failed", error=repr(exc))
                break
            if message is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(left, BATCH_POLL))
                continue
            try:
                row = await s.lifecycle.claim(
                    message.job_id,
                    message.attempt,
                    s.worker_id,
                    s.settings.lease,
                    batch_with=lead,
                    room=room,
                )
            except Exception as exc:  # noqa: BLE001 - its own turn claims it again
                log.warning("batch_gathering_failed", error=repr(exc))
                row = None
            if row is None:  # another shape (or a stale message): its own turn
                consumer.keep(message)
                break
            joined.append(row)
            room -= row.num_images
        return joined

    def _busy(self, row: JobRecord, busy: bool) -> None:
        if self.presence is not None:
            if busy:
                self.presence.busy(row.started_at.timestamp() if row.started_at else time.time())
            else:
                self.presence.idle()
        if metrics.enabled():
            metrics.GENERATOR_BUSY.labels(self.services.settings.served_model).set(int(busy))

    async def reject(self, message: queue.QueueMessage, reason: str) -> None:
        """The consumer set the message aside as poison: end its job, if still waiting."""
        row = await self.services.lifecycle.reject(message.job_id, message.attempt, reason)
        if row is not None:
            log.error("job_rejected", job_id=str(message.job_id), reason=reason)

    async def drain(self, grace: timedelta) -> None:
        """Let the current call finish within `grace`, else hand its jobs back to the
        queue; either way, until their outputs are stored."""
        try:
            await asyncio.wait_for(self.idle.wait(), grace.total_seconds())
        except TimeoutError:
            if self.current is not None:
                self.current.request_stop(Stop.SHUTDOWN)
            await self.idle.wait()


@dataclass
class Generator:
    """A running generator: its queue consumer, its runner and what it must close."""

    consumer: Consumer
    runner: Runner
    resources: Resources
    executor: ThreadPoolExecutor
    task: asyncio.Task[None] | None = None
    health: HealthServer | None = None
    health_port: int = 0

    async def wait(self) -> None:
        """Until the consumer ends: only once stopped."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self, grace: timedelta) -> None:
        """Stop taking jobs, drain the current one, and close everything."""
        self.consumer.stop()  # /readyz says so from now on
        await self.runner.drain(grace)
        # A message taken just before the stop may still start its attempt: hand that
        # one back at once too, then let the consumer finish its bookkeeping.
        if self.task is not None:
            while not self.task.done():
                await asyncio.wait({self.task}, timeout=0.05)
                if not self.runner.idle.is_set():
                    await self.runner.drain(timedelta(0))
            await asyncio.gather(self.task, return_exceptions=True)
        if self.health is not None:
            await self.health.close()
        if self.runner.presence is not None:
            await self.runner.presence.stop()  # ListModels stops counting it at once
        await self.resources.close()
        self.executor.shutdown(wait=True)

    def vitals(self) -> Vitals:
        """What the health endpoint reports (see `health`)."""
        runner, consumer = self.runner, self.consumer

        def attempt_alive_at() -> float | None:
            current = runner.current
            return current.pipeline_alive_at if current is not None else None

        return Vitals(
            looked_at=lambda: consumer.turned_at,
            queue_ok=lambda: consumer.queue_ok,
            attempt_alive_at=attempt_alive_at,
            stopping=lambda: consumer.stopping,
            stall=self.resources.settings.job_timeout.total_seconds(),
        )


async def start(
    settings: Settings, pipeline: pipelines.Pipeline | None = None, *, faults: Faults | None = None
) -> Generator:
    """Load the model (unless given one), connect, and start taking jobs. Tests inject a
    fake `pipeline` and `faults` (fault points); a deployed generator has neither."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    loop = asyncio.get_running_loop()
    loading = time.perf_counter()
    if pipeline is None:
        pipeline = await loop.run_in_executor(
            executor,
            lambda: pipelines.load(
                settings.generator_model_path,
                revision=settings.generator_model_revision,
                device=settings.generator_device,
                dtype=settings.generator_dtype,
            ),
        )
    faults = faults or Faults()
    # Claims, lease renewals and finishes go over one held connection: no pool checkout
    # and liveness ping beside the pipeline, several times a second.
    resources = Resources.open(settings, pool_size=2, hold_connection=True, hooks=faults)
    services = Services(
        settings=settings,
        lifecycle=resources.lifecycle,
        storage=resources.storage,
        faults=faults,
        pipeline=pipeline,
        executor=executor,
        worker_id=settings.worker_id or default_worker_id(),
    )
    # Registered under its model, so the API can tell "no worker" from "queued behind N".
    presence = Presence(
        resources.redis,
        settings.keys,
        model=settings.served_model,
        worker_id=services.worker_id,
        interval=settings.heartbeat_interval,
    )
    if settings.batch_size > 1 and pipelines.can_batch(pipeline):
        await loop.run_in_executor(executor, pipeline.batch_invariant)  # type: ignore[attr-defined]
    runner = Runner(services, presence)
    consumer = Consumer(
        resources.redis,
        settings.queue_for(settings.served_model),
        runner.take,
        # How long a taken message stays taken if this process dies: the reconciler
        # hands it on sooner, once the attempt's lease has expired.
        hold=settings.job_timeout + settings.lease * 4 + timedelta(seconds=60),
        poll_delay=settings.worker_poll_delay,
        wakeups=settings.worker_wakeups,
        reject=runner.reject,
        keys=settings.keys,
    )
    runner.consumer = consumer
    generator = Generator(consumer, runner, resources, executor)
    if settings.generator_health_address:
        generator.health = HealthServer(generator.vitals())
        generator.health_port = await generator.health.start(settings.generator_health_address)
    if metrics.enabled():
        telemetry.watch(generator, settings.served_model, time.perf_counter() - loading)
    presence.start()
    generator.task = asyncio.create_task(consumer.run())
    log.info(
        "generator_started",
        worker_id=services.worker_id,
        model=settings.served_model,
        model_id=pipeline.model_id,
        model_version=pipeline.model_version,
        batch_size=settings.batch_size,
    )
    return generator
