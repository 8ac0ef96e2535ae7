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

from darkroom import metrics, queue, tracing
from darkroom.capacity import Presence
from darkroom.config import Settings
from darkroom.consumer import Consumer
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator import telemetry
from darkroom.services.generator.attempt import Attempt
from darkroom.services.generator.context import Services, Stop
from darkroom.services.generator.faults import Faults
from darkroom.services.generator.health import HealthServer, Vitals
from darkroom.wiring import Resources

log = structlog.get_logger("darkroom.generator")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runner:
    """Turns queue messages into attempts, and hands the current one back on shutdown."""

    services: Services
    presence: Presence | None = None
    current: Attempt | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    async def handle(self, message: queue.QueueMessage) -> None:
        """Claim and run the attempt after the message's; stale messages change nothing."""
        job_id, queued_attempt = message.job_id, message.attempt
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job_id=str(job_id))
        s = self.services
        model = s.settings.served_model
        claiming = time.time_ns()  # the attempt's span starts with its claim
        row = await s.lifecycle.claim(job_id, queued_attempt, s.worker_id, s.settings.lease)
        if row is None:  # a duplicate, late or expired delivery
            log.info("delivery_ignored", queued_attempt=queued_attempt)
            return
        with tracing.attempt_span(str(job_id), model, row.attempt, row.traceparent, claiming):
            structlog.contextvars.bind_contextvars(attempt=row.attempt)
            log.info("attempt_started", worker_id=s.worker_id)
            self.current = Attempt(s, row)
            self.idle.clear()
            if self.presence is not None:
                started = row.started_at.timestamp() if row.started_at else time.time()
                self.presence.busy(started)
            if metrics.enabled():
                metrics.GENERATOR_BUSY.labels(model).set(1)
            try:
                await self.current.run()
            finally:
                self.current = None
                self.idle.set()
                if self.presence is not None:
                    self.presence.idle()
                if metrics.enabled():
                    metrics.GENERATOR_BUSY.labels(model).set(0)

    async def reject(self, message: queue.QueueMessage, reason: str) -> None:
        """The consumer set the message aside as poison: end its job, if still waiting."""
        row = await self.services.lifecycle.reject(message.job_id, message.attempt, reason)
        if row is not None:
            log.error("job_rejected", job_id=str(message.job_id), reason=reason)

    async def drain(self, grace: timedelta) -> None:
        """Let the current attempt finish within `grace`, else hand it back to the queue."""
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
    runner = Runner(services, presence)
    consumer = Consumer(
        resources.redis,
        settings.queue_for(settings.served_model),
        runner.handle,
        # How long a taken message stays taken if this process dies: the reconciler
        # hands it on sooner, once the attempt's lease has expired.
        hold=settings.job_timeout + settings.lease * 4 + timedelta(seconds=60),
        poll_delay=settings.worker_poll_delay,
        wakeups=settings.worker_wakeups,
        reject=runner.reject,
        keys=settings.keys,
    )
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
    )
    return generator
