"""AIP-155 idempotency: replays return the original job; reuse with another body fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers import Caller, new_request_id, rich_error

RowCount = Callable[[], Awaitable[int]]


async def _rows_for(engine: AsyncEngine, request_id: str) -> int:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM jobs WHERE request_id = :r"), {"r": uuid.UUID(request_id)}
        )
        return int(result.scalar_one())


async def test_same_request_replays_the_original_job(alice: Caller, engine: AsyncEngine) -> None:
    request_id = new_request_id()
    first = await alice.submit(request_id=request_id, prompt="a cat")
    second = await alice.submit(request_id=request_id, prompt="a cat")
    assert not first.replayed
    assert second.replayed
    assert second.job.id == first.job.id
    # The server-picked seed is part of the original answer, not picked again.
    assert second.job.spec.seed == first.job.spec.seed
    assert await _rows_for(engine, request_id) == 1


async def test_request_id_is_matched_case_insensitively(alice: Caller) -> None:
    request_id = new_request_id()
    first = await alice.submit(request_id=request_id)
    second = await alice.submit(request_id=request_id.upper())
    assert second.replayed
    assert second.job.id == first.job.id


async def test_same_request_id_with_another_body_is_already_exists(
    alice: Caller, engine: AsyncEngine
) -> None:
    request_id = new_request_id()
    first = await alice.submit(request_id=request_id, prompt="a cat")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await alice.submit(request_id=request_id, prompt="a dog")
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "REQUEST_ID_REUSED"
    assert error.metadata["job_id"] == first.job.id
    assert await _rows_for(engine, request_id) == 1


async def test_request_ids_are_scoped_per_owner(alice: Caller, bob: Caller) -> None:
    request_id = new_request_id()
    mine = await alice.submit(request_id=request_id, prompt="same")
    theirs = await bob.submit(request_id=request_id, prompt="same")
    assert not theirs.replayed
    assert theirs.job.id != mine.job.id


async def test_fifty_concurrent_identical_submits_create_one_row(
    alice: Caller, engine: AsyncEngine
) -> None:
    request_id = new_request_id()
    responses = await asyncio.gather(
        *(alice.submit(request_id=request_id, prompt="concurrent", seed=7) for _ in range(50))
    )
    assert {response.job.id for response in responses} == {responses[0].job.id}
    assert sum(not response.replayed for response in responses) == 1
    assert await _rows_for(engine, request_id) == 1


async def test_concurrent_submits_with_different_bodies_keep_exactly_one(
    alice: Caller, engine: AsyncEngine
) -> None:
    request_id = new_request_id()
    outcomes = await asyncio.gather(
        *(alice.submit(request_id=request_id, prompt=f"variant {i % 2}") for i in range(20)),
        return_exceptions=True,
    )
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(accepted) + len(refused) == 20
    assert len({response.job.id for response in accepted}) == 1
    assert all(error.code() == grpc.StatusCode.ALREADY_EXISTS for error in refused)
    assert await _rows_for(engine, request_id) == 1
