"""`generate`: submit, watch to the end and fetch the PNGs, against a real stack."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image

from darkroom.services.generator import pipeline as pipelines
from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import DarkroomClient, JobCancelled, JobFailed
from darkroom_client.jobs import GenerateResult
from tests.clients.conftest import GatedPipeline, StackFactory


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


async def test_generate_with_the_tiny_model_returns_pngs_of_the_requested_size(
    make_stack: StackFactory, tiny_pipeline: pipelines.Pipeline, tmp_path: Path
) -> None:
    stack = await make_stack(tiny_pipeline)
    seen: list[events_service_pb2.JobEvent] = []
    result = await stack.client().generate(
        "a lighthouse at dusk",
        width=64,
        height=96,
        steps=2,
        num_images=2,
        seed=7,
        on_event=seen.append,
    )
    assert isinstance(result, GenerateResult)
    assert result.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [output.seed for output in result.job.outputs] == [7, 8]
    assert len(result.images) == 2
    for data in result.images:
        assert _png(data).size == (64, 96)
    kinds = [event.WhichOneof("kind") for event in seen]
    assert kinds[0] == "snapshot"
    assert kinds[-1] == "succeeded"
    assert "progress" in kinds

    paths = result.save(tmp_path / "out.png")
    assert paths == [tmp_path / "out-0.png", tmp_path / "out-1.png"]
    assert [path.read_bytes() for path in paths] == result.images


async def test_blocking_client_generates_lists_and_gets(make_stack: StackFactory) -> None:
    stack = await make_stack()

    def work() -> tuple[GenerateResult, list[str], job_pb2.Job]:
        with DarkroomClient(stack.jobs_target, stack.events_target, token="alice-token") as client:
            kinds: list[str] = []
            result = client.generate(
                "a blocking lighthouse",
                width=64,
                height=64,
                steps=3,
                on_event=lambda event: kinds.append(event.WhichOneof("kind") or ""),
            )
            listed = client.list(state="succeeded", page_size=5)
            assert result.job.id in [job.id for job in listed.jobs]
            return result, kinds, client.get(result.job.id)

    result, kinds, fetched = await asyncio.to_thread(work)
    assert _png(result.images[0]).size == (64, 64)
    assert kinds[0] == "snapshot"
    assert kinds[-1] == "succeeded"
    assert fetched.state == job_pb2.JOB_STATE_SUCCEEDED
    assert fetched.outputs[0].sha256 == result.job.outputs[0].sha256


async def test_generate_raises_job_cancelled_when_the_job_is_cancelled(
    make_stack: StackFactory,
) -> None:
    pipeline = GatedPipeline(1)
    stack = await make_stack(pipeline)
    client = stack.client()
    job_ids: list[str] = []

    def remember(event: events_service_pb2.JobEvent) -> None:
        job_ids.append(event.job_id)

    generation = asyncio.create_task(
        client.generate("stop me", width=64, height=64, steps=5, on_event=remember)
    )
    await pipeline.wait_reached(1)
    # The first event can reach us after the pipeline reached its gate.
    async with asyncio.timeout(10):
        while not job_ids:
            await asyncio.sleep(0.01)
    cancelled = await client.cancel(job_ids[0])
    assert cancelled.cancel_requested
    with pytest.raises(JobCancelled) as ended:
        await asyncio.wait_for(generation, 20)
    assert ended.value.job.state == job_pb2.JOB_STATE_CANCELLED
    assert ended.value.job.id == job_ids[0]


async def test_generate_raises_job_failed_with_the_job_error(make_stack: StackFactory) -> None:
    stack = await make_stack(pipelines.FakePipeline(step_seconds=0.001, fail="raise"))
    with pytest.raises(JobFailed) as ended:
        await stack.client().generate("poison", width=64, height=64, steps=1)
    job = ended.value.job
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.message
    assert job.id in str(ended.value)
