"""A prompt submitted through the Jobs service ends SUCCEEDED with PNGs in storage."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, PngImagePlugin

from darkroom.v1 import job_pb2
from tests.services.generator.conftest import StackFactory


def _path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


async def test_submit_to_succeeded_with_pngs_and_every_step_in_the_stream(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    submitted = (
        await stack.caller.submit(
            prompt="a lighthouse at dusk", width=64, height=96, steps=3, num_images=2, seed=11
        )
    ).job
    job = await stack.wait(submitted.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.attempt == 1
    assert job.model_id
    assert job.model_version.startswith("sha256:")
    assert (job.progress.step, job.progress.total_steps) == (3, 3)
    assert [output.index for output in job.outputs] == [0, 1]
    for output, seed in zip(job.outputs, (11, 12), strict=True):
        assert output.uri.startswith("file://")
        assert output.uri.endswith(f"jobs/{job.id}/{output.index}.png")
        assert output.url == output.uri
        assert output.seed == seed
        data = _path(output.uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == output.sha256
        image = Image.open(io.BytesIO(data))
        assert isinstance(image, PngImagePlugin.PngImageFile)
        assert image.format == "PNG"
        assert image.size == (64, 96) == (output.width, output.height)
        assert image.text["darkroom:seed"] == str(seed)
        assert image.text["darkroom:steps"] == "3"
        assert image.text["darkroom:model"] == "tiny-sd"
        assert (
            image.text["darkroom:prompt_sha256"]
            == hashlib.sha256(b"a lighthouse at dusk").hexdigest()
        )

    kinds = [event.WhichOneof("kind") for event in await stack.events(job.id)]
    assert kinds == ["queued", "started", "progress", "progress", "progress", "succeeded"]
    progress = [
        e.progress for e in await stack.events(job.id) if e.WhichOneof("kind") == "progress"
    ]
    assert [(p.progress.step, p.progress.total_steps) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    final = (await stack.events(job.id))[-1].succeeded.job
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [o.sha256 for o in final.outputs] == [o.sha256 for o in job.outputs]


async def test_same_seed_gives_the_same_png_bytes(make_stack: StackFactory) -> None:
    stack = await make_stack()
    spec: dict[str, Any] = {
        "prompt": "same seed",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 1234,
    }
    first = await stack.wait((await stack.caller.submit(**spec)).job.id)
    second = await stack.wait((await stack.caller.submit(**spec)).job.id)
    other = await stack.wait((await stack.caller.submit(**{**spec, "seed": 1235})).job.id)
    assert first.id != second.id
    assert first.outputs[0].sha256 == second.outputs[0].sha256
    assert _path(first.outputs[0].uri).read_bytes() == _path(second.outputs[0].uri).read_bytes()
    assert other.outputs[0].sha256 != first.outputs[0].sha256


async def test_server_picked_seed_is_recorded_and_used(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.wait((await stack.caller.submit(width=64, height=64, steps=2)).job.id)
    assert job.outputs[0].seed == job.spec.seed
    image = Image.open(_path(job.outputs[0].uri))
    assert isinstance(image, PngImagePlugin.PngImageFile)
    assert image.text["darkroom:seed"] == str(job.spec.seed)


async def test_seeds_wrap_at_two_to_the_32(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.wait(
        (
            await stack.caller.submit(width=64, height=64, steps=1, num_images=2, seed=2**32 - 1)
        ).job.id
    )
    assert [output.seed for output in job.outputs] == [2**32 - 1, 0]


async def test_jobs_for_another_model_are_left_to_its_workers(make_stack: StackFactory) -> None:
    stack = await make_stack()
    other = (await stack.caller.submit(model="other-model", width=64, height=64, steps=1)).job
    mine = (await stack.caller.submit(width=64, height=64, steps=1)).job
    assert (await stack.wait(mine.id)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert (await stack.caller.get(other.id)).state == job_pb2.JOB_STATE_QUEUED
    uuid.UUID(other.id)
