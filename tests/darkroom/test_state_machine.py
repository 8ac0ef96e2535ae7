"""The job state machine holds in SQL: conditional updates and the transition trigger."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy.exc
from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from darkroom.lifecycle import is_legal
from darkroom.models import LEGAL_MOVES, TERMINAL_STATES, State
from darkroom.store import JobStore
from tests.helpers import job_request


async def _queued(store: JobStore) -> uuid.UUID:
    request = job_request("state machine", queue_timeout=timedelta(minutes=5))
    row, created = await store.create("state-machine", request, max_attempts=2)
    assert created
    return row.id


def _running(attempt: int) -> dict[str, object]:
    return {
        "state": State.RUNNING,
        "attempt": attempt,
        "worker_id": "w",
        "lease_expires_at": func.now(),
    }


async def test_ids_are_time_sortable(store: JobStore) -> None:
    ids = [await _queued(store) for _ in range(5)]
    assert ids == sorted(ids)
    assert all(job_id.version == 7 for job_id in ids)


async def test_conditional_update_ignores_wrong_state_and_attempt(store: JobStore) -> None:
    job_id = await _queued(store)
    assert await store.transition(job_id, State.RUNNING, {"state": State.SUCCEEDED}) is None
    assert await store.transition(job_id, State.QUEUED, _running(1), attempt=3) is None
    claimed = await store.transition(job_id, State.QUEUED, _running(1), attempt=0)
    assert claimed is not None
    assert claimed.attempt == 1
    # A duplicate claim of the same attempt changes nothing.
    assert await store.transition(job_id, State.QUEUED, _running(1), attempt=0) is None
    # A stale attempt cannot finish the job.
    stale = await store.transition(job_id, State.RUNNING, {"state": State.SUCCEEDED}, attempt=0)
    assert stale is None
    done = await store.transition(job_id, State.RUNNING, {"state": State.SUCCEEDED}, attempt=1)
    assert done is not None
    assert done.state == State.SUCCEEDED


# How to bring a new (QUEUED) job into each state with legal moves.
PATHS = {
    State.QUEUED: [],
    State.RUNNING: [State.RUNNING],
    State.SUCCEEDED: [State.RUNNING, State.SUCCEEDED],
    State.FAILED: [State.FAILED],
    State.CANCELLED: [State.CANCELLED],
}


async def _set_state(connection: AsyncConnection, job_id: uuid.UUID, state: State) -> None:
    extra = ", attempt = 1, lease_expires_at = now()" if state == State.RUNNING else ""
    await connection.execute(
        text(f"UPDATE jobs SET state = :s{extra} WHERE id = :id"),  # noqa: S608 - fixed fragments
        {"s": state.value, "id": job_id},
    )


@pytest.mark.parametrize("before", list(State))
@pytest.mark.parametrize("after", list(State))
async def test_the_trigger_allows_exactly_the_legal_moves(
    store: JobStore, engine: AsyncEngine, before: State, after: State
) -> None:
    job_id = await _queued(store)
    async with engine.begin() as connection:
        for state in PATHS[before]:
            await _set_state(connection, job_id, state)
    if is_legal(before, after):
        async with engine.begin() as connection:
            await _set_state(connection, job_id, after)
        row = await store.get_any(job_id)
        assert row is not None
        assert row.state == after
        return
    refusal = "can no longer change" if before.terminal else "illegal job transition"
    with pytest.raises(sqlalchemy.exc.IntegrityError, match=refusal):
        async with engine.begin() as connection:
            await _set_state(connection, job_id, after)


def test_the_python_table_is_the_documented_state_machine() -> None:
    assert {(a.value, b.value) for a, b in LEGAL_MOVES} == {
        ("QUEUED", "RUNNING"),
        ("QUEUED", "CANCELLED"),
        ("QUEUED", "FAILED"),
        ("RUNNING", "SUCCEEDED"),
        ("RUNNING", "FAILED"),
        ("RUNNING", "CANCELLED"),
        ("RUNNING", "QUEUED"),
    }
    assert not any(is_legal(state, state) for state in TERMINAL_STATES)


async def test_terminal_rows_never_change(store: JobStore, engine: AsyncEngine) -> None:
    job_id = await _queued(store)
    assert await store.transition(job_id, State.QUEUED, {"state": State.CANCELLED}) is not None
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="can no longer change"):
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE jobs SET error_message = 'late' WHERE id = :id"), {"id": job_id}
            )


async def test_updates_refresh_updated_at(store: JobStore) -> None:
    job_id = await _queued(store)
    before = await store.get_any(job_id)
    assert before is not None
    after = await store.transition(job_id, State.QUEUED, {"progress_total": 3})
    assert after is not None
    assert after.updated_at > before.updated_at


async def _backend_pid(connection: AsyncConnection) -> int:
    return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_held_transitions_use_one_connection_and_outlive_it(
    engine: AsyncEngine, store: JobStore
) -> None:
    held = JobStore(engine, hold_connection=True)
    try:
        job_id = await _queued(store)
        claimed = await held.claim(job_id, 0, "w", timedelta(minutes=1))
        assert claimed is not None
        assert (claimed.state, claimed.attempt) == (State.RUNNING, 1)
        assert claimed.progress_total == claimed.steps
        connection = held._held
        assert connection is not None
        pids = {await connection.run(_backend_pid) for _ in range(2)}
        for step in (1, 2, 3):
            beat = await held.heartbeat(job_id, 1, timedelta(minutes=1), step)
            assert beat is not None
            assert beat.progress_step == step
            pids.add(await connection.run(_backend_pid))
        assert len(pids) == 1  # one backend for every statement
        # Each statement commits on its own: another connection sees the renewal at once.
        fresh = await store.get_any(job_id)
        assert fresh is not None
        assert fresh.progress_step == 3
        # The backend dies (a database restart): the next statement finds out and runs
        # again on a fresh connection, as the pool's liveness ping would have arranged.
        dead = pids.pop()
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        renewed = await held.heartbeat(job_id, 1, timedelta(minutes=1), 4)
        assert renewed is not None
        assert renewed.progress_step == 4
        assert await connection.run(_backend_pid) != dead
        # A stale attempt still matches nothing.
        assert await held.heartbeat(job_id, 0, timedelta(minutes=1)) is None
    finally:
        await held.close()
