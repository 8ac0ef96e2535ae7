"""The clients on scheduling: quotas as typed errors with their details, ListModels, the
priority flag and filter, and a queued job's place in `darkroom get`."""

from __future__ import annotations

import json

import pytest

from darkroom.config import OwnerPolicy
from darkroom_client.errors import ResourceExhausted
from tests.clients.conftest import StackFactory


async def test_a_quota_refusal_says_which_limit_and_when_to_retry(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(generator=False, owner_policy=OwnerPolicy(max_queued=1))
    client = stack.client()
    await client.submit("one", width=64, height=64)
    with pytest.raises(ResourceExhausted) as refused:
        await client.submit("two", width=64, height=64)
    assert refused.value.reason == "QUOTA_EXCEEDED"
    assert refused.value.metadata == {"limit": "max_queued"}
    assert refused.value.quota == {"owner:alice": "at most 1 queued jobs"}
    assert refused.value.retry_after == 5
    code, _, stderr = await stack.cli("submit", "three", "--width", "64", "--height", "64")
    assert code == 4
    assert "RESOURCE_EXHAUSTED (QUOTA_EXCEEDED)" in stderr


async def test_models_priority_and_the_queue_in_the_clients(make_stack: StackFactory) -> None:
    stack = await make_stack()
    client = stack.client()
    models = {status.model: status for status in await client.list_models()}
    assert [worker.worker_id for worker in models["tiny-sd"].workers] == [stack.settings.worker_id]
    assert not models["other-model"].workers
    code, stdout, _ = await stack.cli("models")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:]}
    assert rows["tiny-sd"][:3] == ["1", "0", "1"]  # one worker, idle
    assert rows["other-model"][0] == "0"

    code, stdout, _ = await stack.cli(
        "submit", "later", "--model", "other-model", "--priority", "4", "--width", "64"
    )
    assert code == 0
    job_id = stdout.strip()
    assert (await client.get(job_id)).spec.priority == 4
    listed = await client.list(priority=4)
    assert [job.id for job in listed.jobs] == [job_id]
    code, stdout, _ = await stack.cli("get", job_id)
    assert "waiting for a worker: none serves other-model now" in stdout
    code, stdout, _ = await stack.cli("list", "--priority", "4", "--json")
    assert [job["id"] for job in json.loads(stdout)["jobs"]] == [job_id]
