"""Retries: only safe calls, with backoff, and a submit keeps its request id throughout."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from darkroom import devservers
from darkroom.config import Settings
from darkroom.services.jobs.app import start as start_jobs
from darkroom_client import (
    AsyncDarkroomClient,
    DeadlineExceeded,
    InvalidArgument,
    RetryPolicy,
    Unavailable,
)
from darkroom_client.retry import IDEMPOTENT, UNAVAILABLE, with_retries
from tests.clients.conftest import FAST_RETRY, Recorder
from tests.helpers import RUN_ID


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details=code.name)


async def test_submit_retried_after_unavailable_reuses_its_request_id(
    settings: Settings, redis_client: object
) -> None:
    port = devservers.free_port()
    recorder = Recorder()
    client = AsyncDarkroomClient(
        f"127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        token="alice-token",
        retry=FAST_RETRY,
        interceptors=recorder.interceptors,
    )
    submit = asyncio.create_task(client.submit("retry me", width=64, height=64))
    async with asyncio.timeout(10):
        while len(recorder.sent("SubmitJob")) < 2:  # nothing listens yet: UNAVAILABLE
            await asyncio.sleep(0.01)
    stack_settings = settings.model_copy(
        update={
            "key_prefix": f"darkroom-test-{RUN_ID}-retry",
            "shutdown_grace": timedelta(seconds=1),
        }
    )
    jobs = await start_jobs(stack_settings, f"127.0.0.1:{port}")
    try:
        job = await asyncio.wait_for(submit, 10)
        attempts = recorder.sent("SubmitJob")
        assert len(attempts) >= 3
        assert {request.request_id for request in attempts} == {job.request_id}
        assert attempts[0].spec.prompt == "retry me"
        assert (await client.get(job.id)).id == job.id
    finally:
        await client.close()
        await jobs.stop(stack_settings.shutdown_grace)


async def test_gives_up_after_max_attempts_with_unavailable() -> None:
    recorder = Recorder()
    target = f"127.0.0.1:{devservers.free_port()}"
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with AsyncDarkroomClient(
        target, target, retry=policy, watch_retry=policy, interceptors=recorder.interceptors
    ) as client:
        with pytest.raises(Unavailable) as raised:
            await client.get("0190a0f0-0000-7000-8000-000000000000", timeout=1)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(recorder.sent("GetJob")) == 3
        with pytest.raises(Unavailable):
            async for _ in client.watch("0190a0f0-0000-7000-8000-000000000000"):
                pass
        assert len(recorder.sent("WatchJob")) == 3


async def test_only_retryable_codes_are_retried() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.001)
    codes = [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE]
    calls: list[int] = []

    async def flaky(number: int) -> str:
        calls.append(number)
        if codes:
            raise _error(codes.pop(0))
        return "done"

    assert await with_retries(flaky, policy=policy, retry_on=IDEMPOTENT) == "done"
    assert calls == [0, 1, 2]

    async def slow(number: int) -> str:
        raise _error(grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(DeadlineExceeded) as raised:
        await with_retries(slow, policy=policy, retry_on=UNAVAILABLE)
    assert raised.value.__cause__ is not None

    async def invalid(number: int) -> str:
        calls.append(number)
        raise _error(grpc.StatusCode.INVALID_ARGUMENT)

    calls.clear()
    with pytest.raises(InvalidArgument):
        await with_retries(invalid, policy=policy, retry_on=IDEMPOTENT)
    assert calls == [0]


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    for retry, cap in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = {policy.backoff(retry) for _ in range(50)}
        assert all(cap / 2 <= delay <= cap for delay in delays)
        assert len(delays) > 1
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
