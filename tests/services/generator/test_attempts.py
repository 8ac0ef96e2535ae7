"""Cancellation, fencing, duplicates, failures and shutdown of generator attempts."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as google_errors
from sqlalchemy import update

from darkroom.consumer import Consumer
from darkroom.models import JobRow, State
from darkroom.queue import QueueMessage
from darkroom.services.generator.attempt import BEAT_EVERY, Attempt
from darkroom.services.generator.pipeline import FakePipeline
from darkroom.storage import LocalStorage
from darkroom.v1 import job_pb2
from tests.services.generator.conftest import StackFactory

RUNNING = {job_pb2.JOB_STATE_RUNNING}


def _files(root: Path, job_id: str) -> list[Path]:
    folder = root / "jobs" / job_id
    return sorted(folder.iterdir()) if folder.exists() else []


async def test_cancel_stops_a_running_job_at_its_next_step(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = (await stack.caller.submit(width=64, height=64, steps=150)).job
    await stack.wait_for_event(job.id, "progress")
    await stack.caller.cancel(job.id)
    final = await stack.wait(job.id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.progress.step < 150
    assert not final.outputs
    assert _files(stack.storage_root, job.id) == []
    kinds = [event.WhichOneof("kind") for event in await stack.events(job.id)]
    assert kinds[-1] == "cancelled"
    assert "succeeded" not in kinds


async def test_duplicate_delivery_changes_nothing(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=2)).job.id)
    before = await stack.store.get_any(uuid.UUID(job.id))
    events_before = await stack.events(job.id)
    # The same message again, through the queue and straight into the worker.
    await stack.jobs.queue.enqueue(uuid.UUID(job.id), 0, "tiny-sd")
    await stack.generator.runner.handle(QueueMessage(uuid.UUID(job.id), 0))
    await asyncio.sleep(0.3)
    after = await stack.store.get_any(uuid.UUID(job.id))
    assert before is not None
    assert after is not None
    assert (after.state, after.attempt, after.updated_at) == (
        before.state,
        before.attempt,
        before.updated_at,
    )
    assert len(await stack.events(job.id)) == len(events_before)


async def test_a_stale_attempt_cannot_finish_or_publish(make_stack: StackFactory) -> None:
    stack = await make_stack()
    # Submitted for a model no worker serves here, so only this test moves it.
    job = (await stack.caller.submit(model="other-model", width=64, height=64, steps=3)).job
    job_id = uuid.UUID(job.id)
    stale = await stack.store.claim(job_id, 0, "zombie", timedelta(seconds=30))
    assert stale is not None
    # The zombie's lease is taken over: requeued, then claimed by a live worker.
    assert (
        await stack.store.requeue(job_id, 1, code=14, message="worker lost", delay=timedelta(0))
    ) is not None
    assert await stack.store.claim(job_id, 1, "live-worker", timedelta(seconds=30)) is not None
    events_before = len(await stack.events(job.id))
    await Attempt(stack.generator.runner.services, stale).run()
    row = await stack.store.get_any(job_id)
    assert row is not None
    assert (row.state, row.attempt, row.worker_id) == (State.RUNNING, 2, "live-worker")
    assert row.outputs == []
    assert _files(stack.storage_root, job.id) == []
    kinds = [e.WhichOneof("kind") for e in (await stack.events(job.id))[events_before:]]
    assert not {"succeeded", "failed", "cancelled"} & set(kinds)


async def test_a_permanent_error_fails_at_once(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = (await stack.caller.submit(model="other-model", width=64, height=64, steps=2)).job
    # Sizes the API refuses, written straight into the row: the model itself rejects them.
    async with stack.store._sessions.begin() as session:  # test setup
        await session.execute(
            update(JobRow).where(JobRow.id == uuid.UUID(job.id)).values(width=100, model="tiny-sd")
        )
    # Delivered straight to the worker: the queued message sits on other-model's queue.
    await stack.generator.runner.handle(QueueMessage(uuid.UUID(job.id), 0))
    final = await stack.wait(job.id)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.attempt == 1
    assert final.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "invalid parameters for this model" in final.error.message
    assert (await stack.events(job.id))[-1].WhichOneof("kind") == "failed"


class FlakyStorage(LocalStorage):
    """Local storage whose first `failures` uploads answer like a GCS 503."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise google_errors.ServiceUnavailable("storage is having a moment")
        return await super().create(key, data, content_type)


async def test_a_transient_error_is_retried_then_succeeds(make_stack: StackFactory) -> None:
    stack = await make_stack()
    services = stack.generator.runner.services
    services.storage = FlakyStorage(stack.storage_root, failures=1)
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=2)).job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 2
    kinds = [event.WhichOneof("kind") for event in await stack.events(job.id)]
    assert kinds.count("started") == 2
    retrying = next(e.retrying for e in await stack.events(job.id) if e.HasField("retrying"))
    assert retrying.attempt == 1
    assert retrying.error.code == grpc.StatusCode.UNAVAILABLE.value[0]


class FailsAfterFirstImage(LocalStorage):
    """Stores image 0, then fails image 1 once: an attempt that died halfway through."""

    failed = False

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        if key.endswith("/1.png") and not self.failed:
            self.failed = True
            raise google_errors.ServiceUnavailable("died halfway")
        return await super().create(key, data, content_type)


async def test_a_later_attempt_keeps_identical_objects_of_an_earlier_one(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    storage = FailsAfterFirstImage(stack.storage_root)
    stack.generator.runner.services.storage = storage
    spec: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "num_images": 2, "seed": 99}
    job = await stack.wait((await stack.caller.submit(**spec)).job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 2
    assert storage.failed
    for output in job.outputs:
        path = stack.storage_root / "jobs" / job.id / f"{output.index}.png"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == output.sha256


async def test_foreign_bytes_at_an_output_key_are_replaced_by_the_holder(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    job = (await stack.caller.submit(model="other-model", width=64, height=64, steps=1)).job
    stray = stack.storage_root / "jobs" / job.id / "0.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by an attempt on another machine")
    async with stack.store._sessions.begin() as session:  # test setup
        await session.execute(
            update(JobRow).where(JobRow.id == uuid.UUID(job.id)).values(model="tiny-sd")
        )
    await stack.generator.runner.handle(QueueMessage(uuid.UUID(job.id), 0))
    final = await stack.wait(job.id)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    data = stray.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert hashlib.sha256(data).hexdigest() == final.outputs[0].sha256


async def test_transient_errors_fail_the_job_after_max_attempts(make_stack: StackFactory) -> None:
    stack = await make_stack(max_attempts=2)
    stack.generator.runner.services.storage = FlakyStorage(stack.storage_root, failures=10)
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=1)).job.id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.attempt == job.max_attempts == 2
    assert job.error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_execution_timeout_fails_with_deadline_exceeded(make_stack: StackFactory) -> None:
    stack = await make_stack(job_timeout=timedelta(milliseconds=300))
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=150)).job.id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.attempt == 1
    assert job.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert not job.outputs


async def test_expired_queued_job_fails_instead_of_running(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = (await stack.caller.submit(model="other-model", width=64, height=64, steps=1)).job
    async with stack.store._sessions.begin() as session:  # test setup
        await session.execute(
            update(JobRow)
            .where(JobRow.id == uuid.UUID(job.id))
            .values(model="tiny-sd", deadline=JobRow.created_at)
        )
    await stack.generator.runner.handle(QueueMessage(uuid.UUID(job.id), 0))
    final = await stack.wait(job.id)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.attempt == 0
    assert final.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_shutdown_hands_a_running_job_back_at_once(make_stack: StackFactory) -> None:
    slow = FakePipeline(step_seconds=0.05)
    first = await make_stack(pipeline=slow, shutdown_grace=timedelta(milliseconds=100))
    job = (await first.caller.submit(width=64, height=64, steps=100)).job
    await first.wait_for_event(job.id, "progress")
    await first.generator.stop(timedelta(milliseconds=100))
    requeued = await first.caller.get(job.id)
    assert requeued.state == job_pb2.JOB_STATE_QUEUED
    assert requeued.attempt == 1
    # The platform interrupted it: the attempt is refunded.
    assert requeued.max_attempts == first.settings.max_attempts + 1
    assert (await first.events(job.id))[-1].WhichOneof("kind") == "retrying"
    # Another worker on the same queue picks it up without waiting for a lease.
    fast: Any = FakePipeline(step_seconds=0.001)
    await make_stack(pipeline=fast, key_prefix=first.settings.key_prefix)
    final = await first.wait(job.id)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert final.attempt == 2


async def test_progress_is_coalesced_for_fast_steps(make_stack: StackFactory) -> None:
    stack = await make_stack(pipeline=FakePipeline(step_seconds=0.002), progress_rate=10.0)
    started = asyncio.get_running_loop().time()
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=150)).job.id)
    elapsed = asyncio.get_running_loop().time() - started
    progress = [e for e in await stack.events(job.id) if e.HasField("progress")]
    steps = [e.progress.progress.step for e in progress]
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert steps == sorted(steps)
    assert steps[-1] == 150
    # A burst of 10, then 10 a second: far fewer than 150 events.
    assert len(progress) <= 10 + 10 * elapsed + 2
    assert len(progress) < 150


@pytest.mark.parametrize("steps", [1, 4])
async def test_every_step_is_reported_for_short_jobs(make_stack: StackFactory, steps: int) -> None:
    stack = await make_stack()
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=steps)).job.id)
    progress = [
        e.progress.progress.step for e in await stack.events(job.id) if e.HasField("progress")
    ]
    assert progress == list(range(1, steps + 1))


def _count_polls(consumer: Consumer) -> Callable[[], int]:
    """Count the consumer's looks at the queue from now on; the returned function reads it."""
    start = consumer.polls
    return lambda: consumer.polls - start


async def test_a_busy_worker_does_not_poll_the_queue(make_stack: StackFactory) -> None:
    stack = await make_stack(pipeline=FakePipeline(step_seconds=0.05))
    polls = _count_polls(stack.generator.consumer)
    first = (await stack.caller.submit(width=64, height=64, steps=30)).job.id
    second = (await stack.caller.submit(width=64, height=64, steps=30)).job.id
    await stack.wait_for_event(first, "started")
    polls_when_started = polls()
    done = await stack.wait(first)
    # 1.5 s of steps: a worker polling every 5 ms would have looked ~300 times.
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert polls() - polls_when_started <= 4
    # The next job starts as soon as the first ends, without waiting for a poll.
    assert (await stack.wait(second)).state == job_pb2.JOB_STATE_SUCCEEDED
    row = await stack.store.get_any(uuid.UUID(second))
    first_row = await stack.store.get_any(uuid.UUID(first))
    assert row is not None
    assert first_row is not None
    assert row.started_at is not None
    assert first_row.completed_at is not None
    assert (row.started_at - first_row.completed_at).total_seconds() < 0.5


async def test_steps_do_not_wake_the_loop_and_beats_are_paced(make_stack: StackFactory) -> None:
    stack = await make_stack(pipeline=FakePipeline(step_seconds=0.004), progress_rate=5.0)
    store = stack.generator.runner.services.lifecycle.store
    wakeups = beats = 0
    loop = asyncio.get_running_loop()
    original_call, original_beat = loop.call_soon_threadsafe, store.heartbeat

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return original_call(callback, *args, **kwargs)

    async def beat(*args: Any, **kwargs: Any) -> Any:
        nonlocal beats
        beats += 1
        return await original_beat(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    store.heartbeat = beat  # type: ignore[method-assign]
    started = loop.time()
    try:
        job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=150)).job.id)
    finally:
        loop.call_soon_threadsafe = original_call  # type: ignore[method-assign]
        del store.heartbeat
    elapsed = loop.time() - started
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.progress.step == 150
    # 150 steps, and only the first called into the loop (the other calls are the results
    # of the pipeline, the PNG encoder and the storage coming back).
    assert wakeups <= 6, wakeups
    # Lease renewals: at most one every BEAT_EVERY while steps come in.
    assert 1 <= beats <= elapsed / BEAT_EVERY + 2
    steps = [e.progress.progress.step for e in await stack.events(job.id) if e.HasField("progress")]
    assert steps == sorted(steps)
    assert steps[-1] == 150


async def test_an_idle_worker_is_woken_by_the_enqueue_not_its_poll(
    make_stack: StackFactory,
) -> None:
    # Polling every 30 s, the worker would sit on these jobs for up to that long.
    stack = await make_stack(
        pipeline=FakePipeline(step_seconds=0.001), worker_poll_delay=timedelta(seconds=30)
    )
    polls = _count_polls(stack.generator.consumer)
    await asyncio.sleep(0.3)  # let it settle into its wait
    loop = asyncio.get_running_loop()
    for _ in range(3):
        began = loop.time()
        job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=2)).job.id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert loop.time() - began < 5
    # Idle between jobs, it blocked instead of polling.
    polls_before = polls()
    await asyncio.sleep(1)
    assert polls() - polls_before <= 1


async def test_a_delayed_message_is_taken_when_due_without_a_wake_up(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        pipeline=FakePipeline(step_seconds=0.001), worker_poll_delay=timedelta(seconds=30)
    )
    # Submitted for a model no worker serves, then moved by hand, delayed, to the served
    # queue: its wake-up comes at once, long before it is due, and no other will come.
    job = (await stack.caller.submit(model="other-model", width=64, height=64, steps=2)).job
    queue = stack.generator.runner.services.lifecycle.queue
    await queue.reset(uuid.UUID(job.id), 0, "other-model")
    due = datetime.now(UTC) + timedelta(seconds=1)
    await queue.enqueue(
        uuid.UUID(job.id), 0, stack.settings.served_model, delay=timedelta(seconds=1)
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    await stack.wait_for_event(job.id, "started")
    assert loop.time() - began < 5
    row = await stack.store.get_any(uuid.UUID(job.id))
    assert row is not None
    assert row.started_at is not None
    assert row.started_at >= due - timedelta(milliseconds=50)


async def test_a_cancel_is_noticed_within_a_second_even_on_slow_steps(
    make_stack: StackFactory,
) -> None:
    # The production heartbeat (5 s), not the tests' quicker one.
    stack = await make_stack(
        pipeline=FakePipeline(step_seconds=1.5),
        heartbeat_interval=timedelta(seconds=5),
        lease=timedelta(seconds=15),
    )
    job = (await stack.caller.submit(width=64, height=64, steps=10)).job
    await stack.wait_for_event(job.id, "progress")  # step 1 done, and its lease renewal
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await stack.caller.cancel(job.id)
    done = await stack.wait(job.id)
    assert done.state == job_pb2.JOB_STATE_CANCELLED
    # Read at the next renewal, a second on (not only after the next 1.5 s step), it
    # stops the pipeline at the end of the step in progress: ~1.5 s, where waiting for
    # a step's renewal would take ~3 s.
    assert loop.time() - asked < 2.5
    steps = [e.progress.progress.step for e in await stack.events(job.id) if e.HasField("progress")]
    assert max(steps) <= 3


class JobLostAfterFirstImage(LocalStorage):
    """Stores image 0, then the job is taken from the attempt (the reconciler failed it,
    as after an expired lease with no attempts left) before image 1."""

    def __init__(self, root: Path, lose: Callable[[str], Any]) -> None:
        super().__init__(root)
        self._lose = lose
        self.writes: list[str] = []

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        self.writes.append(key)
        uri = await super().create(key, data, content_type)
        if key.endswith("/0.png"):
            await self._lose(key.split("/")[1])
        return uri


async def test_an_attempt_that_lost_its_job_writes_nothing_more_and_removes_its_objects(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    lifecycle = stack.generator.runner.services.lifecycle

    async def lose(job_id: str) -> None:
        await lifecycle.fail(uuid.UUID(job_id), 1, grpc.StatusCode.UNAVAILABLE.value[0], "lost")

    storage = JobLostAfterFirstImage(stack.storage_root, lose)
    stack.generator.runner.services.storage = storage
    job = await stack.wait((await stack.caller.submit(width=64, height=64, num_images=2)).job.id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.message == "lost"
    assert storage.writes == [f"jobs/{job.id}/0.png"]  # image 1 was never written
    async with asyncio.timeout(10):
        while _files(stack.storage_root, job.id):  # image 0 goes once the attempt sees it
            await asyncio.sleep(0.05)
