"""Every RPC is authenticated and scoped to its caller."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc
from tests.helpers import Caller, new_request_id, rich_error


def _requests() -> list[tuple[str, Any]]:
    job_id = str(uuid.uuid4())
    return [
        (
            "SubmitJob",
            jobs_service_pb2.SubmitJobRequest(
                request_id=new_request_id(), spec=job_pb2.JobSpec(prompt="unauthenticated")
            ),
        ),
        ("GetJob", jobs_service_pb2.GetJobRequest(job_id=job_id)),
        ("ListJobs", jobs_service_pb2.ListJobsRequest()),
        ("CancelJob", jobs_service_pb2.CancelJobRequest(job_id=job_id)),
    ]


BAD_METADATA = [
    pytest.param((), id="missing"),
    pytest.param((("authorization", "alice-token"),), id="no-scheme"),
    pytest.param((("authorization", "Basic YWxpY2U6eA=="),), id="basic"),
    pytest.param((("authorization", "Bearer "),), id="empty-token"),
    pytest.param((("authorization", "Bearer %%garbage ~~ token%%"),), id="garbage"),
    pytest.param((("authorization", "Bearer alice-token-but-longer"),), id="prefix-of-real"),
]


@pytest.mark.parametrize("metadata", BAD_METADATA)
@pytest.mark.parametrize("method", ["SubmitJob", "GetJob", "ListJobs", "CancelJob"])
async def test_every_rpc_needs_a_known_bearer_token(
    jobs_stub: jobs_service_pb2_grpc.JobsServiceAsyncStub,
    row_count: Any,
    metadata: tuple[tuple[str, str], ...],
    method: str,
) -> None:
    before = await row_count()
    request = dict(_requests())[method]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(jobs_stub, method)(request, metadata=metadata, timeout=10)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "UNAUTHENTICATED"
    assert await row_count() == before


async def test_another_owners_job_is_not_found_exactly_like_a_missing_one(
    alice: Caller, bob: Caller
) -> None:
    job = (await alice.submit()).job
    missing = str(uuid.uuid4())
    for call in (bob.get, bob.cancel):
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await call(job.id)
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await call(missing)
        foreign_error, absent_error = rich_error(foreign.value), rich_error(absent.value)
        assert foreign_error.code == absent_error.code == grpc.StatusCode.NOT_FOUND
        assert foreign_error.reason == absent_error.reason
        assert foreign_error.message.replace(job.id, missing) == absent_error.message
    # Bob's attempt to cancel changed nothing.
    assert (await alice.get(job.id)).state == job.state


async def test_list_shows_only_the_callers_jobs(alice: Caller, bob: Caller) -> None:
    mine = (await alice.submit()).job
    theirs = (await bob.submit()).job
    alice_ids = {job.id for job in (await alice.list(page_size=1000)).jobs}
    bob_ids = {job.id for job in (await bob.list(page_size=1000)).jobs}
    assert mine.id in alice_ids
    assert mine.id not in bob_ids
    assert theirs.id in bob_ids
    assert theirs.id not in alice_ids
    assert all(job.owner == "bob" for job in (await bob.list(page_size=1000)).jobs)


async def test_development_token_is_accepted(
    jobs_stub: jobs_service_pb2_grpc.JobsServiceAsyncStub,
) -> None:
    dev = Caller(jobs_stub, "darkroom-dev-token")
    assert (await dev.submit()).job.owner == "dev"
