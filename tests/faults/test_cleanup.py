"""What a fault leaves behind, with real processes: one terminal event per job stream
however the reconcilers race the workers' publishes, nothing in storage from an attempt
that lost its job, no temporary upload files when the disk is full."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from darkroom import events
from darkroom.v1 import job_pb2
from tests.faults.cluster import Cluster

SUCCEEDED, FAILED = job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED


async def clean(cluster: Cluster) -> None:
    (await cluster.check()).assert_clean()


async def terminal_kinds(cluster: Cluster, job_id: str) -> list[str]:
    log = events.EventLog(cluster.redis, cluster.settings.key_prefix)
    kinds = [str(event.WhichOneof("kind")) for _, event in await log.read(job_id)]
    return [kind for kind in kinds if kind in events.TERMINAL_KINDS]


def stored_files(cluster: Cluster) -> list[Path]:
    """Every file in the cluster's storage, temporary upload files included."""
    return sorted(path for path in Path(cluster.settings.storage_url).rglob("*") if path.is_file())


async def test_racing_republishes_leave_one_terminal_event_per_stream(cluster: Cluster) -> None:
    # Two reconcilers that look for finished jobs without their terminal event every 50 ms:
    # they race each other over the jobs of workers killed right after their commit, and
    # the live worker's own publish, which follows its commit by a few ms.
    for _ in range(2):
        await cluster.reconciler(DARKROOM_RECONCILE_INTERVAL="0.05")
    # Slow enough that each takes one of the three jobs before any of them is done: a
    # worker takes its next job while it stores the last one, and would take two.
    doomed = [await cluster.generator("step_ms=200", fault="after_commit") for _ in range(3)]
    orphaned = [await cluster.submit(steps=2) for _ in range(3)]
    for process in doomed:  # each took one job, committed it and died
        assert await asyncio.wait_for(process.wait(), 60) == 137
    await cluster.generator("step_ms=5")
    published = [await cluster.submit(steps=2) for _ in range(15)]
    finals = await cluster.wait_all([*orphaned, *published], timeout=60)
    assert {job.state for job in finals} == {SUCCEEDED}
    assert [job.attempt for job in finals[:3]] == [1, 1, 1]  # the commit stood
    async with asyncio.timeout(10):  # the orphans' events come from a reconciler pass
        for job in finals:
            while not await terminal_kinds(cluster, job.id):
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # ten more passes of each reconciler
    for job in finals:
        assert await terminal_kinds(cluster, job.id) == ["succeeded"], job.id
    await clean(cluster)


async def test_a_zombie_attempt_that_lost_its_job_leaves_nothing_in_storage(
    cluster: Cluster,
) -> None:
    await cluster.reconciler()
    # Each upload takes 1.5 s: stopped once its first image is stored, the zombie is in
    # the middle of its second upload, lease lapsing (2 s) while it cannot renew it.
    zombie = await cluster.generator("step_ms=5&upload_ms=1500")
    job_id = await cluster.submit(steps=2, num_images=2)
    first = Path(cluster.settings.storage_url) / "jobs" / job_id / "0.png"
    async with asyncio.timeout(30):
        while not first.exists():
            await asyncio.sleep(0.02)
    zombie.send_signal(signal.SIGSTOP)
    # The next attempts fail (and the job with them): no output of the job may remain.
    await cluster.generator("step_ms=5&fail=raise")
    job = await cluster.wait(job_id, timeout=30)
    assert (job.state, job.attempt) == (FAILED, job.max_attempts)
    assert list(job.outputs) == []
    zombie.send_signal(signal.SIGCONT)
    # Its upload resumes, then finds the job gone: what it wrote is removed.
    async with asyncio.timeout(10):
        while stored_files(cluster):
            await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # nothing comes back later either
    assert stored_files(cluster) == []
    assert zombie.returncode is None
    after = await cluster.caller.get(job_id)
    assert (after.state, after.attempt, list(after.outputs)) == (FAILED, job.attempt, [])
    await clean(cluster)


# Runs the fake generator with every write to a regular file past 16 bytes failing with
# EFBIG, as on a full disk (Python ignores SIGXFSZ, so the write raises instead of
# killing). The child sets its own limit: a `preexec_fn` would run Python between fork and
# exec, where a lock another thread held at the fork (gRPC's) can hang it for good.
FULL_DISK = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
sys.argv = ["tests.fake_generator", *sys.argv[1:]]
runpy.run_module("tests.fake_generator", run_name="__main__", alter_sys=True)
"""


async def _drain(stream: asyncio.StreamReader, path: Path) -> None:
    with path.open("ab") as sink:
        while line := await stream.readline():
            sink.write(line)


async def test_a_full_disk_fails_the_upload_and_leaves_no_temporary_files(
    cluster: Cluster,
) -> None:
    await cluster.reconciler()
    # Its log lines go through a pipe: the file limit would refuse them too.
    full = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FULL_DISK,
        "step_ms=5",
        env=cluster.env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    cluster.processes.append(full)
    assert full.stderr is not None
    draining = asyncio.create_task(_drain(full.stderr, cluster.log_dir / "full-disk.log"))
    job_ids = [await cluster.submit(num_images=2) for _ in range(2)]
    finals = await cluster.wait_all(job_ids, timeout=60)
    assert {job.state for job in finals} == {FAILED}
    assert all(job.attempt == job.max_attempts for job in finals)
    assert stored_files(cluster) == []  # no object, and no `.upload-` file
    assert full.returncode is None  # a full disk fails jobs, not the worker
    await clean(cluster)
    full.kill()
    await full.wait()
    await draining
    # They failed for the full disk, not for anything else.
    failures = [
        line
        for line in (cluster.log_dir / "full-disk.log").read_text().splitlines()
        if '"attempt_failed"' in line
    ]
    assert len(failures) == 2 * finals[0].max_attempts
    assert all("File too large" in line for line in failures), failures
