"""The Generator process: an arq worker that runs one job at a time on one device."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis.exceptions
import structlog
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from darkroom import queue
from darkroom.config import Settings
from darkroom.keys import Keys
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator.attempt import Attempt, Services, Stop
from darkroom.services.generator.faults import Faults
from darkroom.wiring import Resources

log = structlog.get_logger("darkroom.generator")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runner:
    """Turns queue messages into attempts, and hands the current one back on shutdown."""

    services: Services
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
        row = await s.lifecycle.claim(job_id, queued_attempt, s.worker_id, s.settings.lease)
        if row is None:  # a duplicate, late or expired delivery
            log.info("delivery_ignored", queued_attempt=queued_attempt)
            return
        structlog.contextvars.bind_contextvars(attempt=row.attempt)
        log.info("attempt_started", worker_id=s.worker_id)
        self.current = Attempt(s, row)
        self.idle.clear()
        try:
            await self.current.run()
        finally:
            self.current = None
            self.idle.set()

    async def drain(self, grace: timedelta) -> None:
        """Let the current attempt finish within `grace`, else hand it back to the queue."""
        try:
            await asyncio.wait_for(self.idle.wait(), grace.total_seconds())
        except TimeoutError:
            if self.current is not None:
                self.current.request_stop(Stop.SHUTDOWN)
            await self.idle.wait()


# While its one job runs, the worker looks at the queue this often (for arq's own
# bookkeeping), not every poll delay: a loop waking 200 times a second beside a CPU
# pipeline slows it, since a preempted thread holds up the pipeline's parallel ops.
BUSY_POLL_SECONDS = 1.0
# The shortest wait worth blocking for (BLPOP's timeout 0 would mean "forever").
MIN_WAIT_SECONDS = 0.001


class QuietWorker(Worker):
    """arq's worker, except that it does not poll the queue while it has no free slot (it
    waits for a job to end, then polls at once), and, with `wakeups`, an idle one blocks on
    the queue's wake-up list between polls instead of sleeping (see `Keys.wake`)."""

    def __init__(
        self, *args: Any, wakeups: bool = False, idle_wait: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._slot_freed = asyncio.Event()
        self._wakeups = wakeups
        self._idle_wait = idle_wait
        self._wake_key = Keys.wake(self.queue_name)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def _poll_iteration(self) -> None:
        if self.job_counter >= self.max_jobs:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BUSY_POLL_SECONDS):
                    await self._slot_freed.wait()
        await super()._poll_iteration()
        if not self._wakeups or self.job_counter >= self.max_jobs:
            return
        if self.allow_pick_jobs:
            await self._wait_for_work()
        else:  # stopping: arq's own sleep between polls is ours to do
            await asyncio.sleep(self._idle_wait)

    async def _wait_for_work(self) -> None:
        """Block until an enqueue pushes a wake-up, the next delayed message falls due, or
        the poll delay passes, whichever comes first. A token pushed since the last poll is
        still in the list, so no wake-up is lost between the poll and the wait."""
        wait = self._idle_wait
        now = timestamp_ms()
        later = await self.pool.zrangebyscore(
            self.queue_name, min=f"({now}", max="+inf", start=0, num=1, withscores=True
        )
        if later:
            wait = min(wait, (later[0][1] - now) / 1000)
        if wait >= MIN_WAIT_SECONDS:
            # (BLPOP takes fractions of a second since Redis 6; redis-py's hints say int.)
            await self.pool.blpop([self._wake_key], timeout=round(wait, 3))  # type: ignore[arg-type,misc]


async def run_job(ctx: dict[str, Any], *args: object) -> None:
    """The arq task: its arguments are a `QueueMessage`."""
    runner: Runner = ctx["runner"]
    try:
        message = queue.QueueMessage.from_args(args)
    except queue.MalformedMessageError as exc:
        structlog.contextvars.clear_contextvars()
        log.error("message_malformed", error=str(exc))
        return
    await runner.handle(message)


@dataclass
class Generator:
    """A running generator: its arq worker and what it must close."""

    worker: Worker
    runner: Runner
    resources: Resources
    executor: ThreadPoolExecutor
    task: asyncio.Task[Any] | None = None

    async def wait(self) -> None:
        """Until the poll loop ends: only on stop, or when it failed for good."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self, grace: timedelta) -> None:
        """Stop taking jobs, drain the current one, and close everything."""
        self.worker.allow_pick_jobs = False
        await self.runner.drain(grace)
        # A poll that was under way may still start a job, and arq finishes its own
        # bookkeeping after ours: wait for every arq task, so close() cancels none.
        while pending := [task for task in self.worker.tasks.values() if not task.done()]:
            await asyncio.wait(pending, timeout=0.05)
            if not self.runner.idle.is_set():
                await self.runner.drain(timedelta(0))
        await self.worker.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        await self.resources.close()
        self.executor.shutdown(wait=True)


async def _keep_polling(worker: Worker) -> None:
    """Run arq's poll loop, and start it again when Redis goes away and comes back: the
    rows are the truth, and the reconciler re-enqueues whatever Redis lost meanwhile."""
    while True:
        try:
            await worker.async_run()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            log.warning("queue_unreachable", error=repr(exc))
            await asyncio.sleep(1)


async def start(
    settings: Settings, pipeline: pipelines.Pipeline | None = None, *, faults: Faults | None = None
) -> Generator:
    """Load the model (unless given one), connect, and start taking jobs. Tests inject a
    fake `pipeline` and `faults` (fault points); a deployed generator has neither."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    loop = asyncio.get_running_loop()
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
    redis = resources.redis
    services = Services(
        settings=settings,
        lifecycle=resources.lifecycle,
        storage=resources.storage,
        event_log=resources.event_log,
        faults=faults,
        pipeline=pipeline,
        executor=executor,
        worker_id=settings.worker_id or default_worker_id(),
    )
    runner = Runner(services)
    # arq only delivers: our code decides every outcome, so its retries, results and
    # timeout are switched off (the timeout is a backstop far beyond ours).
    poll_delay = settings.worker_poll_delay.total_seconds()
    worker = QuietWorker(
        functions=[func(run_job, name=queue.RUN_JOB)],
        queue_name=settings.queue_for(settings.served_model),
        redis_pool=redis,
        handle_signals=False,
        max_jobs=1,
        job_timeout=int((settings.job_timeout + settings.lease * 4).total_seconds()) + 60,
        keep_result=0,
        # With wake-ups the worker's own wait stands in for arq's sleep between polls.
        poll_delay=0 if settings.worker_wakeups else poll_delay,
        wakeups=settings.worker_wakeups,
        idle_wait=poll_delay,
        max_tries=1_000_000,
        retry_jobs=False,
        ctx={"runner": runner},
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
        log_results=False,
    )
    generator = Generator(worker, runner, resources, executor)
    generator.task = asyncio.create_task(_keep_polling(worker))
    log.info(
        "generator_started",
        worker_id=services.worker_id,
        model=settings.served_model,
        model_id=pipeline.model_id,
        model_version=pipeline.model_version,
    )
    return generator
