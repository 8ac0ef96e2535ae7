"""Failed calls come back as typed errors with their `google.rpc` details decoded."""

from __future__ import annotations

import uuid

import grpc
import pytest

from darkroom_client import (
    AlreadyExists,
    DarkroomError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from darkroom_client.errors import from_rpc_error
from tests.clients.conftest import StackFactory


async def test_invalid_input_lists_every_bad_field(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    with pytest.raises(InvalidArgument) as raised:
        await stack.client().submit("", width=7, steps=1000)
    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert set(error.fields) == {"spec.prompt", "spec.width", "spec.steps"}
    assert [v.field for v in error.violations] == ["spec.prompt", "spec.width", "spec.steps"]
    assert "multiple of 8" in error.fields["spec.width"][0]
    assert "spec.width" in str(error)


async def test_several_violations_of_one_field_are_all_kept(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    with pytest.raises(InvalidArgument) as raised:
        await stack.client().submit("a\x00" * 1_500, width=64, height=64)
    descriptions = raised.value.fields["spec.prompt"]
    assert len(descriptions) == 2, raised.value.violations
    assert "at most 2,000 characters" in descriptions[0]
    assert "U+0000" in descriptions[1]
    assert str(raised.value).count("spec.prompt:") == 2


async def test_another_owners_job_is_not_found(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    job = await stack.client().submit("alice's", width=64, height=64)
    bob = stack.client("bob-token")
    with pytest.raises(NotFound) as raised:
        await bob.get(job.id)
    assert raised.value.reason == "JOB_NOT_FOUND"
    with pytest.raises(NotFound):
        await bob.cancel(job.id)
    with pytest.raises(NotFound):
        async for _ in bob.watch(job.id):
            pass


async def test_unknown_token_is_unauthenticated(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    with pytest.raises(Unauthenticated) as raised:
        await stack.client("not-a-token").list()
    assert isinstance(raised.value, DarkroomError)
    assert raised.value.reason == "UNAUTHENTICATED"


async def test_reused_request_id_and_finished_job(make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    client = stack.client()
    request_id = str(uuid.uuid4())
    job = await client.submit("first", request_id=request_id, width=64, height=64)
    replayed = await client.submit("first", request_id=request_id, width=64, height=64)
    assert replayed.id == job.id
    with pytest.raises(AlreadyExists) as reused:
        await client.submit("second", request_id=request_id, width=64, height=64)
    assert reused.value.metadata["job_id"] == job.id

    await client.cancel(job.id)
    with pytest.raises(FailedPrecondition) as finished:
        await client.cancel(job.id)
    assert finished.value.reason == "JOB_STATE"
    assert finished.value.metadata["state"] == "CANCELLED"


def test_an_error_without_details_keeps_its_code_and_message() -> None:
    empty = grpc.aio.Metadata()
    error = from_rpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.PERMISSION_DENIED, empty, empty, details="nope")
    )
    assert type(error) is DarkroomError
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert (error.message, error.reason, error.metadata) == ("nope", "", {})
