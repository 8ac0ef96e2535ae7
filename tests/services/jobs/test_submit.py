"""SubmitJob through a real server: recording, enqueueing, and every validation rule."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio

from darkroom import events
from darkroom.config import Settings
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2
from tests.helpers import Caller, rich_error

RowCount = Callable[[], Awaitable[int]]


async def test_submit_records_a_queued_job_with_defaults_filled(
    alice: Caller, store: JobStore, settings: Settings
) -> None:
    response = await alice.submit(prompt="a red fox", width=64, height=128)
    job = response.job
    assert not response.replayed
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.owner == "alice"
    assert job.attempt == 0
    assert job.max_attempts == settings.max_attempts
    assert (job.spec.width, job.spec.height) == (64, 128)
    assert job.spec.steps == settings.default_steps
    assert job.spec.guidance_scale == settings.default_guidance_scale
    assert job.spec.num_images == 1
    assert job.spec.model == "tiny-sd"
    assert job.spec.HasField("seed")
    assert 0 <= job.spec.seed < 2**32
    assert job.deadline.ToDatetime() > job.create_time.ToDatetime()

    row = await store.get_any(uuid.UUID(job.id))
    assert row is not None
    assert row.state == "QUEUED"
    assert row.seed == job.spec.seed
    assert row.prompt == "a red fox"
    fetched = await alice.get(job.id)
    # GetJob adds where a queued job stands; no generator runs here.
    assert fetched.queue.reason == job_pb2.WAIT_REASON_NO_WORKER
    fetched.ClearField("queue")
    assert fetched == job


async def test_submit_enqueues_only_the_job_id_and_attempt_as_json(
    alice: Caller, redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    job = (await alice.submit()).job
    arq_id = settings.keys.message_id(job.id, 0)
    assert await redis_client.zscore(settings.queue_for("tiny-sd"), arq_id) is not None
    message = json.loads(await redis_client.get(f"arq:job:{arq_id}"))
    assert message["f"] == "run_job"
    assert message["a"] == [1, job.id, 0]  # QueueMessage version 1: [version, job, attempt]
    assert message["k"] == {}


async def test_submit_publishes_queued_event(
    alice: Caller, redis_client: redis.asyncio.Redis, settings: Settings
) -> None:
    job = (await alice.submit()).job
    entries = await events.EventLog(redis_client, settings.key_prefix).read(job.id)
    assert len(entries) == 1
    event = entries[0][1]
    assert event.job_id == job.id
    assert event.WhichOneof("kind") == "queued"
    assert event.queued.attempt == 0


async def test_explicit_values_are_kept(alice: Caller) -> None:
    job = (
        await alice.submit(
            prompt="p",
            negative_prompt="blurry",
            width=2048,
            height=64,
            steps=150,
            guidance_scale=0.0,
            seed=2**32 - 1,
            num_images=4,
            model="other-model",
        )
    ).job
    assert job.spec.negative_prompt == "blurry"
    assert (job.spec.width, job.spec.height, job.spec.steps) == (2048, 64, 150)
    assert job.spec.HasField("guidance_scale")
    assert job.spec.guidance_scale == 0.0
    assert job.spec.seed == 2**32 - 1
    assert job.spec.num_images == 4
    assert job.spec.model == "other-model"


@pytest.mark.parametrize(
    "prompt",
    [
        "emoji 👩🏽‍🚀 with zero-width joiners",
        "日本語のプロンプト、漢字とかな",
        "combining: e\u0301 vs \u00e9, and a zero-width space\u200b here",
        "lines\nand\ttabs",
        "العربية والفارسی\u200cها",  # noqa: RUF001 - Arabic-script letters on purpose
        "x" * 2000,
        "🎨" * 2000,
    ],
)
async def test_unicode_prompts_round_trip_byte_exact(
    alice: Caller, store: JobStore, prompt: str
) -> None:
    job = (await alice.submit(prompt=prompt)).job
    assert job.spec.prompt.encode() == prompt.encode()
    row = await store.get_any(uuid.UUID(job.id))
    assert row is not None
    assert row.prompt.encode() == prompt.encode()
    assert (await alice.get(job.id)).spec.prompt.encode() == prompt.encode()


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("empty prompt", {"prompt": ""}, "spec.prompt"),
    ("spaces only", {"prompt": "   "}, "spec.prompt"),
    ("newlines and tabs only", {"prompt": "\n\t\n"}, "spec.prompt"),
    ("no-break and ideographic spaces", {"prompt": "\u00a0\u3000\u2003"}, "spec.prompt"),
    ("zero-width only", {"prompt": "\u200b\u200c\u200d\u2060\ufeff"}, "spec.prompt"),
    ("combining marks only", {"prompt": "\u0301\u0308\u20dd"}, "spec.prompt"),
    ("hangul filler", {"prompt": "\u3164 \u3164"}, "spec.prompt"),
    ("10 KB prompt", {"prompt": "a" * 10_000}, "spec.prompt"),
    ("1 MB prompt", {"prompt": "a" * 1_000_000}, "spec.prompt"),
    ("2,001 characters", {"prompt": "é" * 2001}, "spec.prompt"),
    ("NUL", {"prompt": "a\x00b"}, "spec.prompt"),
    ("bell", {"prompt": "a\x07b"}, "spec.prompt"),
    ("carriage return", {"prompt": "a\rb"}, "spec.prompt"),
    ("DEL", {"prompt": "a\x7fb"}, "spec.prompt"),
    ("bidi override", {"prompt": "abc\u202edcb"}, "spec.prompt"),
    ("bidi isolate", {"prompt": "abc\u2066x\u2069"}, "spec.prompt"),
    ("NUL in negative", {"negative_prompt": "\x00"}, "spec.negative_prompt"),
    ("long negative", {"negative_prompt": "n" * 2001}, "spec.negative_prompt"),
    ("width not multiple of 8", {"width": 100}, "spec.width"),
    ("width too small", {"width": 56}, "spec.width"),
    ("width too large", {"width": 2056}, "spec.width"),
    ("negative width", {"width": -64}, "spec.width"),
    ("height not multiple of 8", {"height": 65}, "spec.height"),
    ("height too large", {"height": 4096}, "spec.height"),
    ("steps too many", {"steps": 151}, "spec.steps"),
    ("steps negative", {"steps": -1}, "spec.steps"),
    ("guidance NaN", {"guidance_scale": math.nan}, "spec.guidance_scale"),
    ("guidance inf", {"guidance_scale": math.inf}, "spec.guidance_scale"),
    ("guidance -inf", {"guidance_scale": -math.inf}, "spec.guidance_scale"),
    ("guidance above 30", {"guidance_scale": 30.5}, "spec.guidance_scale"),
    ("guidance negative", {"guidance_scale": -0.1}, "spec.guidance_scale"),
    ("images 5", {"num_images": 5}, "spec.num_images"),
    ("images negative", {"num_images": -1}, "spec.num_images"),
    ("seed negative", {"seed": -1}, "spec.seed"),
    ("seed 2^32", {"seed": 2**32}, "spec.seed"),
    ("unknown model", {"model": "sdxl-turbo"}, "spec.model"),
    ("pixel budget", {"width": 2048, "height": 2048, "num_images": 2}, "spec"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[case for case, _, _ in INVALID])
async def test_invalid_spec_is_rejected_with_its_field_and_writes_nothing(
    alice: Caller,
    row_count: RowCount,
    redis_client: redis.asyncio.Redis,
    settings: Settings,
    case: str,
    spec: dict[str, Any],
    field: str,
) -> None:
    before_rows = await row_count()
    before_queue = await redis_client.zcard(settings.queue_for("tiny-sd"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(**spec)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, case
    assert error.reason == "INVALID_ARGUMENT"
    assert set(error.violations) == {field}, error.violations
    assert await row_count() == before_rows
    assert await redis_client.zcard(settings.queue_for("tiny-sd")) == before_queue


async def test_every_violation_is_reported_in_one_answer(
    alice: Caller, row_count: RowCount
) -> None:
    before = await row_count()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(
            request_id="nope",
            prompt="",
            width=7,
            height=9000,
            steps=0,
            guidance_scale=math.nan,
            seed=-5,
            num_images=9,
            model="missing",
        )
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == {
        "request_id",
        "spec.prompt",
        "spec.width",
        "spec.height",
        "spec.guidance_scale",
        "spec.seed",
        "spec.num_images",
        "spec.model",
    }
    assert "U+" not in error.violations["spec.prompt"]
    assert await row_count() == before


async def test_control_character_position_is_reported(alice: Caller) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(prompt="abc\x00def")
    assert "U+0000" in rich_error(raised.value).violations["spec.prompt"]
    assert "at character 3" in rich_error(raised.value).violations["spec.prompt"]


@pytest.mark.parametrize(
    "request_id",
    [
        "",
        "not-a-uuid",
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
    ],
)
async def test_request_id_must_be_a_canonical_uuid(
    alice: Caller, row_count: RowCount, request_id: str
) -> None:
    before = await row_count()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.stub.SubmitJob(
            jobs_service_pb2.SubmitJobRequest(
                request_id=request_id, spec=job_pb2.JobSpec(prompt="ok")
            ),
            metadata=alice.metadata,
        )
    assert set(rich_error(raised.value).violations) == {"request_id"}
    assert await row_count() == before


@pytest.mark.parametrize("seconds", [0.5, 25 * 3600])
async def test_queue_timeout_range(alice: Caller, seconds: float) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(queue_timeout=seconds)
    assert set(rich_error(raised.value).violations) == {"queue_timeout"}


async def test_queue_timeout_sets_the_deadline(alice: Caller) -> None:
    job = (await alice.submit(queue_timeout=90)).job
    waited = job.deadline.ToDatetime() - job.create_time.ToDatetime()
    assert waited.total_seconds() == pytest.approx(90, abs=1)


async def test_five_megabyte_request_is_refused_and_server_stays_up(
    alice: Caller, row_count: RowCount
) -> None:
    before = await row_count()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(prompt="a" * 5_000_000)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await row_count() == before
    assert (await alice.submit(prompt="still here")).job.state == job_pb2.JOB_STATE_QUEUED
