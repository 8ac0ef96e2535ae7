"""`make chaos`: many jobs through the real services while workers are killed and Redis is
flushed at random, then the checker's table. Not part of CI: it takes minutes.

python -m tests.faults.chaos [--jobs 2000] [--workers 3] [--kills 10] [--flushes 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from darkroom.v1 import job_pb2
from tests.faults.checker import check
from tests.faults.cluster import Cluster, close_cluster, open_cluster, own_servers


async def _chaos(cluster: Cluster, args: argparse.Namespace, stop: asyncio.Event) -> dict[str, int]:
    """Kill a random worker (and start a new one) or flush Redis, until `stop`."""
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible fault schedule, not a secret
    workers = [await cluster.generator("step_ms=2") for _ in range(args.workers)]
    done = {"kills": 0, "flushes": 0}
    while not stop.is_set() and (done["kills"] < args.kills or done["flushes"] < args.flushes):
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        if done["flushes"] < args.flushes and rng.random() < args.flushes / (
            args.kills + args.flushes
        ):
            await cluster.redis.flushall()
            done["flushes"] += 1
        elif done["kills"] < args.kills:
            victim = workers.pop(rng.randrange(len(workers)))
            victim.kill()
            await victim.wait()
            workers.append(await cluster.generator("step_ms=2"))
            done["kills"] += 1
    return done


async def run(args: argparse.Namespace) -> int:
    servers = own_servers()
    cluster = await open_cluster(servers)
    try:
        await cluster.reconciler()
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(cluster, args, stop))
        started = time.monotonic()
        for index in range(args.jobs):
            await cluster.submit(steps=4, prompt=f"chaos {index}")
        finals = await cluster.wait_all(cluster.accepted, timeout=600)
        stop.set()
        faults = await chaos
        elapsed = time.monotonic() - started
        verdict = await check(
            accepted=cluster.accepted,
            owner="alice",
            store=cluster.store,
            redis_client=cluster.redis,
            key_prefix=cluster.settings.key_prefix,
        )
        states: dict[str, int] = {}
        for job in finals:
            name = job_pb2.JobState.Name(job.state)
            states[name] = states.get(name, 0) + 1
        rows = [
            ("jobs accepted", len(cluster.accepted)),
            ("worker kills", faults["kills"]),
            ("Redis flushes", faults["flushes"]),
            ("lost", verdict.lost),
            ("phantom", verdict.phantom),
            ("duplicate effect", verdict.duplicate_effect),
            ("duplicate executions (reported)", verdict.duplicate_executions),
            *((f"ended {state}", count) for state, count in sorted(states.items())),
            ("seconds", round(elapsed, 1)),
        ]
        print("| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        for detail in verdict.details[:20]:
            print(detail)
        clean = (verdict.lost, verdict.phantom, verdict.duplicate_effect) == (0, 0, 0)
        return 0 if clean else 1
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
    parser.add_argument("--seed", type=int, default=1)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
