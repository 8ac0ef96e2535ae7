"""`make chaos`: many jobs through the real services while faults strike at random, then
the checker's table. Not part of CI: it takes about a minute.

The faults: workers killed (SIGKILL) and stopped (SIGTERM, a deploy: the job in hand goes
back to the queue, often past its queue deadline), Redis flushed, Redis refusing every
write for a moment (out of memory), poison messages and thousands of junk ids pushed into
the queue; one worker's uploads are slower than the lease. Every tenth job has a short
queue deadline, and none that started may fail as "not started before its deadline".

python -m tests.faults.chaos [--jobs 2000] [--workers 3] [--kills 10] [--flushes 3]
    [--sigterms 5] [--ooms 2] [--poison 5] [--junk 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
import uuid

from arq.constants import job_key_prefix

from darkroom import events
from darkroom.lifecycle import EXPIRED_MESSAGE
from darkroom.v1 import job_pb2
from tests.faults.cluster import Cluster, close_cluster, open_cluster, own_servers

FAST = "step_ms=2"
# Uploads that take longer than the fault cluster's 2 s lease.
SLOW_UPLOADS = "step_ms=2&upload_ms=2500"
FAULTS = ("kills", "flushes", "sigterms", "ooms", "poison", "junk")


async def _strike(
    cluster: Cluster, fault: str, workers: list[asyncio.subprocess.Process], rng: random.Random
) -> None:
    queue = cluster.settings.queue_for("tiny-sd")
    if fault == "flushes":
        await cluster.redis.flushall()
    elif fault in ("kills", "sigterms"):
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL if fault == "kills" else signal.SIGTERM)
        await victim.wait()
        workers.append(await cluster.generator(FAST))
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


async def _chaos(
    cluster: Cluster,
    args: argparse.Namespace,
    stop: asyncio.Event,
    workers: list[asyncio.subprocess.Process],
) -> dict[str, int]:
    """Strike a random fault every 0.5 to 2 s until each has struck its count, or `stop`."""
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible fault schedule, not a secret
    workers += [await cluster.generator(FAST) for _ in range(args.workers)]
    left = {fault: getattr(args, fault) for fault in FAULTS}
    done = dict.fromkeys(FAULTS, 0)
    while not stop.is_set() and any(left.values()):
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        fault = rng.choices(list(left), weights=list(left.values()))[0]
        await _strike(cluster, fault, workers, rng)
        left[fault] -= 1
        done[fault] += 1
    return done


async def _expired_after_start(cluster: Cluster, finals: list[job_pb2.Job]) -> int:
    """Jobs that failed as never started although they had started."""
    log = events.EventLog(cluster.redis, cluster.settings.key_prefix)
    count = 0
    for job in finals:
        if job.state == job_pb2.JOB_STATE_FAILED and job.error.message == EXPIRED_MESSAGE:
            logged = [event for _, event in await log.read(job.id)]
            count += any(event.HasField("started") for event in logged) or job.attempt > 0
    return count


async def run(args: argparse.Namespace) -> int:
    servers = own_servers()
    cluster = await open_cluster(servers)
    try:
        await cluster.reconciler()
        stop = asyncio.Event()
        workers: list[asyncio.subprocess.Process] = []
        slow = await cluster.generator(SLOW_UPLOADS)  # never struck: its slowness is the fault
        chaos = asyncio.create_task(_chaos(cluster, args, stop, workers))
        started = time.monotonic()
        for index in range(args.jobs):
            if index % 10 == 0:  # long enough to be running when a worker is stopped
                await cluster.submit(steps=100, prompt=f"chaos {index}", queue_timeout=2)
            else:
                await cluster.submit(steps=4, prompt=f"chaos {index}")
        finals = await cluster.wait_all(cluster.accepted, timeout=600)
        stop.set()
        faults = await chaos
        elapsed = time.monotonic() - started
        verdict = await cluster.check()
        expired_after_start = await _expired_after_start(cluster, finals)
        expired = sum(job.error.message == EXPIRED_MESSAGE for job in finals)
        states: dict[str, int] = {}
        for job in finals:
            name = job_pb2.JobState.Name(job.state)
            states[name] = states.get(name, 0) + 1
        rows = [
            ("jobs accepted", len(cluster.accepted)),
            ("worker kills (SIGKILL)", faults["kills"]),
            ("worker stops (SIGTERM)", faults["sigterms"]),
            ("Redis flushes", faults["flushes"]),
            ("Redis refusing writes", faults["ooms"]),
            ("poison messages", faults["poison"]),
            ("junk bursts (1,000 ids)", faults["junk"]),
            ("lost", verdict.lost),
            ("phantom", verdict.phantom),
            ("duplicate effect", verdict.duplicate_effect),
            ("expired in the queue (every 10th job has a 2 s deadline)", expired),
            ("expired after they started", expired_after_start),
            ("duplicate executions (reported)", verdict.duplicate_executions),
            *((f"ended {state}", count) for state, count in sorted(states.items())),
            ("seconds", round(elapsed, 1)),
        ]
        print("| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        for detail in verdict.details[:20]:
            print(detail)
        bad = (verdict.lost, verdict.phantom, verdict.duplicate_effect, expired_after_start)
        # Nothing but our own signals may have stopped a worker.
        workers_alive = all(process.returncode is None for process in [*workers, slow])
        print(f"workers still running at the end: {workers_alive}")
        return 0 if bad == (0, 0, 0, 0) and workers_alive else 1
    finally:
        await close_cluster(cluster)
        servers.redis.close()
        servers.postgres.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--flushes", type=int, default=3)
    parser.add_argument("--sigterms", type=int, default=5)
    parser.add_argument("--ooms", type=int, default=2)
    parser.add_argument("--poison", type=int, default=5)
    parser.add_argument("--junk", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
