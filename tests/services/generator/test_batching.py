"""Micro-batching and the pipelined output path, on a real stack: queued jobs that share a
shape run as one pipeline call (images byte-identical to runs alone), each member keeps its
own cancel, lease and outputs, and a call's outputs are stored while the next job runs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from darkroom.models import State
from darkroom.services.generator import pipeline as pipelines
from darkroom.services.generator.attempt import CANCEL_CHECK
from darkroom.services.generator.pipeline import FakePipeline, GenerationRequest, StepCallback
from darkroom.storage import LocalStorage
from darkroom.v1 import job_pb2
from tests.services.generator.conftest import Stack, StackFactory

BATCHING = {"batch_sizes": {"tiny-sd": 4}, "batch_wait": timedelta(milliseconds=300)}


class Recording:
    """A pipeline that notes the size of every call it runs, then runs it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id, self.model_version = inner.model_id, inner.model_version
        self.calls: list[int] = []

    def batch_invariant(self) -> None:
        self.inner.batch_invariant()

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        self.calls.append(1)
        images: list[Image.Image] = self.inner.generate(request, on_step)
        return images

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback
    ) -> list[list[Image.Image]]:
        self.calls.append(len(requests))
        images: list[list[Image.Image]] = self.inner.generate_batch(requests, on_step)
        return images


@pytest.fixture(scope="module")
def own_tiny_pipeline(tiny_model_path: Path) -> pipelines.Pipeline:
    """A pipeline of this module's own: batching makes it batch-invariant for good."""
    return pipelines.load(str(tiny_model_path), device="cpu")


async def _submit_behind_a_blocker(stack: Stack, specs: list[dict[str, Any]]) -> list[str]:
    """Submit `specs` while the worker runs a job of another shape, so they queue up and
    are taken together once it is done."""
    blocker = (await stack.caller.submit(width=64, height=64, steps=12, seed=9)).job.id
    await stack.wait_for_event(blocker, "progress")
    ids = [(await stack.caller.submit(**spec)).job.id for spec in specs]
    await stack.wait(blocker)
    return ids


async def _sha256s(stack: Stack, job_id: str) -> list[str]:
    job = await stack.wait(job_id, timeout=120)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    return [output.sha256 for output in sorted(job.outputs, key=lambda o: o.index)]


async def test_batch_members_are_byte_identical_to_runs_alone(
    make_stack: StackFactory, own_tiny_pipeline: pipelines.Pipeline
) -> None:
    pipeline = Recording(own_tiny_pipeline)
    stack = await make_stack(pipeline, **BATCHING)
    specs: list[dict[str, Any]] = [
        {"prompt": "a red fox", "seed": 1, "width": 64, "height": 64, "steps": 4},
        {"prompt": "a blue boat", "seed": 2, "width": 64, "height": 64, "steps": 4,
         "negative_prompt": "blurry", "num_images": 2},
        {"prompt": "a green hill", "seed": 3, "width": 64, "height": 64, "steps": 4},
    ]  # fmt: skip
    ids = await _submit_behind_a_blocker(stack, specs)
    batched = [await _sha256s(stack, job_id) for job_id in ids]
    assert 3 in pipeline.calls, pipeline.calls  # the three ran as one call
    calls_before = len(pipeline.calls)
    alone = []
    for spec in specs:  # one at a time: each is its call's only job
        alone.append(await _sha256s(stack, (await stack.caller.submit(**spec)).job.id))
    assert pipeline.calls[calls_before:] == [1, 1, 1]
    assert batched == alone
    assert len({sha for shas in alone for sha in shas}) == 4  # and they are 4 other images


async def test_jobs_of_another_shape_wait_for_their_own_call(
    make_stack: StackFactory, own_tiny_pipeline: pipelines.Pipeline
) -> None:
    pipeline = Recording(own_tiny_pipeline)
    stack = await make_stack(pipeline, **BATCHING)
    specs: list[dict[str, Any]] = [
        {"seed": 1, "width": 64, "height": 64, "steps": 3},
        {"seed": 2, "width": 64, "height": 64, "steps": 4},  # other steps
        {"seed": 3, "width": 64, "height": 64, "steps": 3, "num_images": 4},  # no room
    ]
    for job_id in await _submit_behind_a_blocker(stack, specs):
        assert (await stack.wait(job_id, timeout=120)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert pipeline.calls[1:] == [1, 1, 1]


async def test_cancelling_one_member_ends_it_at_once_and_the_others_go_on(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(FakePipeline(step_seconds=0.05), **BATCHING)
    specs: list[dict[str, Any]] = [
        {"seed": seed, "width": 64, "height": 64, "steps": 60} for seed in (1, 2, 3)
    ]
    blocker = (await stack.caller.submit(width=64, height=64, steps=5)).job.id
    ids = [(await stack.caller.submit(**spec)).job.id for spec in specs]
    await stack.wait(blocker)
    await stack.wait_for_event(ids[1], "progress")
    await stack.caller.cancel(ids[1])
    cancelled = await stack.wait(ids[1], timeout=10)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert not cancelled.outputs
    # Ended while the call still ran for the other two.
    others = [await stack.caller.get(job_id) for job_id in (ids[0], ids[2])]
    assert {job.state for job in others} == {job_pb2.JOB_STATE_RUNNING}
    for job_id in (ids[0], ids[2]):
        job = await stack.wait(job_id, timeout=30)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert len(job.outputs) == 1
        kinds = [event.WhichOneof("kind") for event in await stack.events(job_id)]
        assert kinds.count("progress") >= 2  # each member reports its own steps
    assert not list((stack.storage_root / "jobs" / ids[1]).glob("*"))
    kinds = [event.WhichOneof("kind") for event in await stack.events(ids[1])]
    assert kinds[-1] == "cancelled"
    assert "succeeded" not in kinds


async def test_a_member_whose_job_was_taken_over_publishes_nothing(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(FakePipeline(step_seconds=0.05), **BATCHING)
    blocker = (await stack.caller.submit(width=64, height=64, steps=5)).job.id
    ids = [
        (await stack.caller.submit(seed=seed, width=64, height=64, steps=80)).job.id
        for seed in (1, 2)
    ]
    await stack.wait(blocker)
    await stack.wait_for_event(ids[0], "progress")
    lost = uuid.UUID(ids[0])
    # Its lease is taken over (as after a partition): requeued, claimed by another worker.
    assert await stack.store.requeue(lost, 1, code=14, message="lost", delay=timedelta(0))
    assert await stack.store.claim(lost, 1, "live-worker", timedelta(seconds=60))
    # The member learns it at its next lease renewal (within a second while steps come in:
    # `CANCEL_CHECK`); from then on it publishes nothing, while the call goes on.
    await asyncio.sleep(CANCEL_CHECK + 0.5)
    events_before = len(await stack.events(ids[0]))
    assert (await stack.caller.get(ids[1])).state == job_pb2.JOB_STATE_RUNNING
    other = await stack.wait(ids[1], timeout=30)
    assert other.state == job_pb2.JOB_STATE_SUCCEEDED
    row = await stack.store.get_any(lost)
    assert row is not None
    assert (row.state, row.attempt, row.worker_id, row.outputs) == (
        State.RUNNING,
        2,
        "live-worker",
        [],
    )
    assert not list((stack.storage_root / "jobs" / ids[0]).glob("*"))
    published = (await stack.events(ids[0]))[events_before:]
    assert not [event for event in published if event.WhichOneof("kind") == "progress"]
    assert not {"succeeded", "failed", "cancelled"} & {e.WhichOneof("kind") for e in published}


class SlowStorage(LocalStorage):
    """Local storage whose every upload takes `seconds`, and that says when one began."""

    def __init__(self, root: Path, seconds: float) -> None:
        super().__init__(root)
        self.seconds = seconds
        self.uploading = asyncio.Event()

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        self.uploading.set()
        await asyncio.sleep(self.seconds)
        return await super().create(key, data, content_type)


async def test_the_next_job_runs_while_outputs_are_stored_and_a_zombie_cannot_finish(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(FakePipeline(step_seconds=0.02))
    storage = SlowStorage(stack.storage_root, seconds=1.5)
    stack.generator.runner.services.storage = storage
    first = (await stack.caller.submit(width=64, height=64, steps=5, seed=1)).job.id
    second = (await stack.caller.submit(width=64, height=64, steps=5, seed=2)).job.id
    await storage.uploading.wait()  # the first job's image is on its way
    # The pipeline is already on the second job while the first one's output is stored.
    await stack.wait(second, {job_pb2.JOB_STATE_RUNNING}, timeout=5)
    await stack.wait_for_event(second, "progress", timeout=5)
    # Meanwhile the first job is taken over: its (zombie) attempt must not finish it.
    job_id = uuid.UUID(first)
    assert await stack.store.requeue(job_id, 1, code=14, message="lost", delay=timedelta(0))
    assert await stack.store.claim(job_id, 1, "live-worker", timedelta(seconds=60))
    finished = await stack.wait(second, timeout=30)
    assert finished.state == job_pb2.JOB_STATE_SUCCEEDED
    await stack.generator.runner.settle()
    row = await stack.store.get_any(job_id)
    assert row is not None
    assert (row.state, row.attempt, row.worker_id) == (State.RUNNING, 2, "live-worker")
    kinds = {event.WhichOneof("kind") for event in await stack.events(first)}
    assert "succeeded" not in kinds
