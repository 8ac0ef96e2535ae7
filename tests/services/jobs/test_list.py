"""ListJobs: newest first, opaque page tokens bound to the filter, state filter."""

from __future__ import annotations

import grpc
import pytest

from darkroom.v1 import job_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller, rich_error


@pytest.fixture
def carol(jobs_stub: jobs_service_pb2_grpc.JobsServiceAsyncStub) -> Caller:
    """A caller with no jobs but the ones this module gives it (the dev owner)."""
    return Caller(jobs_stub, "darkroom-dev-token")


async def _all_pages(caller: Caller, page_size: int, state: int = 0) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await caller.list(page_size=page_size, page_token=token, state=state)
        pages.append([job.id for job in response.jobs])
        token = response.next_page_token
        if not token:
            return pages


async def test_pages_cover_every_job_once_newest_first(carol: Caller) -> None:
    before = {job.id for job in (await carol.list(page_size=1000)).jobs}
    submitted = [(await carol.submit(prompt=f"job {i}")).job.id for i in range(7)]
    pages = await _all_pages(carol, page_size=3)
    listed = [job_id for page in pages for job_id in page if job_id not in before]
    assert listed == list(reversed(submitted))
    assert all(len(page) <= 3 for page in pages)
    flat = [job_id for page in pages for job_id in page]
    assert len(flat) == len(set(flat))


async def test_state_filter(carol: Caller) -> None:
    kept = (await carol.submit()).job
    cancelled = (await carol.submit()).job
    await carol.cancel(cancelled.id)
    cancelled_ids = {
        job.id
        for page in [await carol.list(page_size=1000, state=job_pb2.JOB_STATE_CANCELLED)]
        for job in page.jobs
    }
    assert cancelled.id in cancelled_ids
    assert kept.id not in cancelled_ids
    queued = (await carol.list(page_size=1000, state=job_pb2.JOB_STATE_QUEUED)).jobs
    assert all(job.state == job_pb2.JOB_STATE_QUEUED for job in queued)
    assert kept.id in {job.id for job in queued}


async def test_page_size_is_clamped_and_defaulted(carol: Caller) -> None:
    for _ in range(2):
        await carol.submit()
    assert len((await carol.list(page_size=1)).jobs) == 1
    assert (await carol.list(page_size=1)).next_page_token
    assert len((await carol.list(page_size=5000)).jobs) <= 1000


async def test_token_from_another_filter_is_rejected(carol: Caller) -> None:
    for _ in range(2):
        await carol.submit()
    token = (await carol.list(page_size=1)).next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await carol.list(page_size=1, page_token=token, state=job_pb2.JOB_STATE_QUEUED)
    assert set(rich_error(raised.value).violations) == {"page_token"}


@pytest.mark.parametrize("token", ["garbage", "W10", "eyJiZWZvcmUiOiAxfQ", "%%%"])
async def test_garbage_tokens_are_invalid_argument(carol: Caller, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await carol.list(page_token=token)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == {"page_token"}


async def test_negative_page_size_and_unknown_state_are_invalid(carol: Caller) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await carol.list(page_size=-1, state=42)
    assert set(rich_error(raised.value).violations) == {"page_size", "state"}
