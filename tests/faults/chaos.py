"""`make chaos`: many jobs through the real services while faults strike at random, then
the checker's table. Not part of CI: it takes under a minute.

The faults: workers killed (SIGKILL) and stopped (SIGTERM, a deploy: the job in hand goes
back to the queue), Redis flushed, Redis refusing every write for a moment (out of memory),
poison messages and thousands of junk ids pushed into the queue; one worker's uploads are
slower than the lease. Every tenth job has a short queue deadline (most of them expire
waiting behind the backlog). And a generator of a model of its own, idle so that a job
with a 1 s queue deadline starts at once, is stopped (SIGTERM) while that job runs past
its deadline: none of those, nor any other job that started, may fail as "not started
before its deadline". Every fault strikes once, then at random until it has struck its
count or every job has ended.

python -m tests.faults.chaos [--jobs 2000] [--workers 3] [--kills 10] [--flushes 3]
    [--sigterms 5] [--ooms 2] [--poison 5] [--junk 3] [--deadline-sigterms 3]
    [--gap 2.0] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
import uuid
from dataclasses import dataclass, field

from arq.constants import job_key_prefix

from darkroom import events
from darkroom.lifecycle import EXPIRED_MESSAGE
from darkroom.v1 import job_pb2
from tests.faults.cluster import Cluster, Servers, close_cluster, open_cluster, own_servers

Process = asyncio.subprocess.Process

MODEL = "tiny-sd"
FAST = "step_ms=2"
# Uploads that take longer than the fault cluster's 2 s lease.
SLOW_UPLOADS = "step_ms=2&upload_ms=2500"
SLOW_WORKER_ID = "chaos-slow-uploads"
# The model of the deadline generator alone, so that no backlog keeps its jobs waiting.
DEADLINE_MODEL = "tiny-sd-deadline"
DEADLINE_PACE = "step_ms=100"  # 30 steps: 3 s, well past the 1 s queue deadline
DEADLINE_STEPS = 30
DEADLINE_QUEUE_TIMEOUT = 1.0
# The faults struck at random, by their command-line names; "slow_uploads" is not struck
# but always there (one worker's uploads outlast its lease), and counted by its jobs.
FAULTS = ("kills", "flushes", "sigterms", "ooms", "poison", "junk", "deadline_sigterms")


@dataclass
class Workers:
    """The generators a chaos run keeps going."""

    bulk: list[Process]
    slow: Process
    deadline: Process
    deadline_jobs: list[str] = field(default_factory=list)

    def all(self) -> list[Process]:
        return [*self.bulk, self.slow, self.deadline]


async def _deadline_generator(cluster: Cluster) -> Process:
    return await cluster.generator(DEADLINE_PACE, DARKROOM_GENERATOR_MODEL=DEADLINE_MODEL)


async def _sigterm_past_deadline(cluster: Cluster, workers: Workers) -> bool:
    """SIGTERM the deadline generator while its job runs past that job's queue deadline;
    whether the job was indeed running then (the strike is real, not vacuous)."""
    # Idle and serving: the previous strike's job is done, a warm-up job has run.
    await cluster.wait_all(workers.deadline_jobs, timeout=120)
    warm_up = await cluster.submit(model=DEADLINE_MODEL, steps=1, prompt="deadline warm-up")
    await cluster.wait(warm_up, timeout=120)
    job_id = await cluster.submit(
        model=DEADLINE_MODEL,
        steps=DEADLINE_STEPS,
        prompt=f"deadline {len(workers.deadline_jobs)}",
        queue_timeout=DEADLINE_QUEUE_TIMEOUT,
    )
    workers.deadline_jobs.append(job_id)
    # The deadline is counted from the job's creation, before the submit returned.
    await asyncio.sleep(DEADLINE_QUEUE_TIMEOUT + 0.5)
    running = (await cluster.caller.get(job_id)).state == job_pb2.JOB_STATE_RUNNING
    workers.deadline.send_signal(signal.SIGTERM)
    await workers.deadline.wait()
    workers.deadline = await _deadline_generator(cluster)
    return running


async def _strike(cluster: Cluster, fault: str, workers: Workers, rng: random.Random) -> int:
    """Strike `fault` once; 1 when it struck (a SIGTERM past a deadline can miss: 0)."""
    queue = cluster.settings.queue_for(MODEL)
    if fault == "flushes":
        await cluster.redis.flushall()
    elif fault in ("kills", "sigterms"):
        victim = workers.bulk.pop(rng.randrange(len(workers.bulk)))
        victim.send_signal(signal.SIGKILL if fault == "kills" else signal.SIGTERM)
        await victim.wait()
        workers.bulk.append(await cluster.generator(FAST))
    elif fault == "ooms":
        await cluster.redis.config_set("maxmemory-policy", "noeviction")
        await cluster.redis.config_set("maxmemory", "1")
        try:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        finally:
            await cluster.redis.config_set("maxmemory", "0")
    elif fault == "poison":
        name = f"poison-{uuid.uuid4().hex[:8]}"
        await cluster.redis.zadd(queue, {name: 0})
        await cluster.redis.set(job_key_prefix + name, rng.choice([b"{not json", b'{"t":"x"}']))
    elif fault == "junk":
        await cluster.redis.zadd(queue, {f"junk-{uuid.uuid4().hex}": 0 for _ in range(1_000)})
    elif fault == "deadline_sigterms":
        return int(await _sigterm_past_deadline(cluster, workers))
    return 1


async def _chaos(
    cluster: Cluster, args: argparse.Namespace, workers: Workers, stop: asyncio.Event
) -> dict[str, int]:
    """Strike a random fault every 1/4 to 1 `gap`: each fault once (in a random order),
    then at random until each has struck its count or `stop` is set; how many times each
    truly struck."""
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible fault schedule, not a secret
    left = {fault: getattr(args, fault) for fault in FAULTS}
    first_round = [fault for fault in FAULTS if left[fault]]
    rng.shuffle(first_round)
    struck = dict.fromkeys(FAULTS, 0)
    while any(left.values()) and (first_round or not stop.is_set()):
        await asyncio.sleep(rng.uniform(args.gap / 4, args.gap))
        if first_round:
            fault = first_round.pop()
        else:
            fault = rng.choices(list(left), weights=list(left.values()))[0]
        struck[fault] += await _strike(cluster, fault, workers, rng)
        left[fault] -= 1
    return struck


async def _expired_after_start(cluster: Cluster, finals: list[job_pb2.Job]) -> int:
    """Jobs that failed as never started although they had started."""
    log = events.EventLog(cluster.redis, cluster.settings.key_prefix)
    count = 0
    for job in finals:
        if job.state == job_pb2.JOB_STATE_FAILED and job.error.message == EXPIRED_MESSAGE:
            logged = [event for _, event in await log.read(job.id)]
            count += any(event.HasField("started") for event in logged) or job.attempt > 0
    return count


@dataclass
class Summary:
    """What a chaos run did and found."""

    rows: list[tuple[str, int | float]]
    struck: dict[str, int]  # every fault of `FAULTS`, and "slow_uploads"
    details: list[str]
    ok: bool  # nothing lost, phantom or duplicated, no started job expired, workers alive

    def print(self) -> None:
        print("| figure | value |\n|---|---|")
        for name, value in self.rows:
            print(f"| {name} | {value} |")
        for detail in self.details[:20]:
            print(detail)


async def run(args: argparse.Namespace, servers: Servers | None = None) -> Summary:
    """One chaos run, on `servers` (by default a Postgres and Redis of its own)."""
    own = servers is None
    servers = servers or own_servers()
    cluster = await open_cluster(servers, models=(MODEL, DEADLINE_MODEL))
    try:
        await cluster.reconciler()
        workers = Workers(
            bulk=[await cluster.generator(FAST) for _ in range(args.workers)],
            # Never struck: its slowness is the fault.
            slow=await cluster.generator(SLOW_UPLOADS, DARKROOM_WORKER_ID=SLOW_WORKER_ID),
            deadline=await _deadline_generator(cluster),
        )
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(cluster, args, workers, stop))
        started = time.monotonic()
        for index in range(args.jobs):
            if index % 10 == 0:
                await cluster.submit(steps=100, prompt=f"chaos {index}", queue_timeout=2)
            else:
                await cluster.submit(steps=4, prompt=f"chaos {index}")
        finals = await cluster.wait_all(cluster.accepted, timeout=600)
        stop.set()
        struck = await chaos
        # The jobs the faults submitted since (deadline strikes).
        finals += await cluster.wait_all(cluster.accepted[len(finals) :], timeout=120)
        elapsed = time.monotonic() - started
        verdict = await cluster.check()
        owned = await cluster.store.list_owned("alice", state=None, before=None, limit=100_000)
        struck["slow_uploads"] = sum(row.worker_id == SLOW_WORKER_ID for row in owned)
        expired_after_start = await _expired_after_start(cluster, finals)
        expired = sum(job.error.message == EXPIRED_MESSAGE for job in finals)
        deadline_jobs = set(workers.deadline_jobs)
        deadline_ok = sum(
            job.state == job_pb2.JOB_STATE_SUCCEEDED for job in finals if job.id in deadline_jobs
        )
        states: dict[str, int] = {}
        for job in finals:
            name = job_pb2.JobState.Name(job.state)
            states[name] = states.get(name, 0) + 1
        rows: list[tuple[str, int | float]] = [
            ("jobs accepted", len(cluster.accepted)),
            ("worker kills (SIGKILL)", struck["kills"]),
            ("worker stops (SIGTERM)", struck["sigterms"]),
            (
                "worker stops (SIGTERM) while its job ran past its queue deadline",
                struck["deadline_sigterms"],
            ),
            ("  of those jobs, succeeded", deadline_ok),
            ("Redis flushes", struck["flushes"]),
            ("Redis refusing writes", struck["ooms"]),
            ("poison messages", struck["poison"]),
            ("junk bursts (1,000 ids)", struck["junk"]),
            (
                "jobs run by the slow-upload worker (2.5 s uploads, 2 s lease)",
                struck["slow_uploads"],
            ),
            ("lost", verdict.lost),
            ("phantom", verdict.phantom),
            ("duplicate effect", verdict.duplicate_effect),
            ("expired in the queue (every 10th job has a 2 s deadline)", expired),
            ("expired after they started", expired_after_start),
            ("duplicate executions (reported)", verdict.duplicate_executions),
            *((f"ended {state}", count) for state, count in sorted(states.items())),
            ("seconds", round(elapsed, 1)),
        ]
        bad = (verdict.lost, verdict.phantom, verdict.duplicate_effect, expired_after_start)
        # Nothing but our own signals may have stopped a worker.
        alive = all(process.returncode is None for process in workers.all())
        rows.append(("workers still running at the end (1: yes)", int(alive)))
        return Summary(rows, struck, verdict.details, bad == (0, 0, 0, 0) and alive)
    finally:
        await close_cluster(cluster)
        if own:
            servers.redis.close()
            servers.postgres.close()


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--flushes", type=int, default=3)
    parser.add_argument("--sigterms", type=int, default=5)
    parser.add_argument("--ooms", type=int, default=2)
    parser.add_argument("--poison", type=int, default=5)
    parser.add_argument("--junk", type=int, default=3)
    parser.add_argument("--deadline-sigterms", type=int, default=3)
    parser.add_argument("--gap", type=float, default=2.0, help="most seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def main() -> None:
    summary = asyncio.run(run(parser().parse_args()))
    summary.print()
    raise SystemExit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
