"""9. Webhooks: time from a job's terminal commit to the receiver's 200, and deliveries per
second of one `darkroom-webhooks` process, against a bare POST loop to the same receiver
(same run, same body size, 32 at once, a fresh connection per POST as the worker's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bench.context import Context
from bench.procs import Child, spawn, stop
from bench.stats import Figure, Goal, Section, summary_ms
from darkroom.config import DEV_OWNER, Settings
from darkroom.v1 import job_pb2, jobs_service_pb2, webhook_pb2
from darkroom.validation import JobRequest, validate_submit
from darkroom.wiring import Resources

LEASE = timedelta(seconds=30)
LATENCY_JOBS, QUICK_LATENCY_JOBS = 300, 60
BULK_JOBS, QUICK_BULK_JOBS = 3_000, 600
CONCURRENCY = 32
OUTPUT = {
    "index": 0,
    "uri": "file:///bench/0.png",
    "width": 64,
    "height": 64,
    "content_type": "image/png",
    "sha256": "0" * 64,
    "seed": 1,
}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Receiver:
    """Answers every POST 200 and notes when it came and when its job ended."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, float | None]] = []  # (received, end_time) epoch s
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def _answer(self, request: Request) -> Response:
        body = await request.body()
        received = time.time()
        ended = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ended = datetime.fromisoformat(json.loads(body)["data"]["end_time"]).timestamp()
        self.arrivals.append((received, ended))
        return PlainTextResponse("ok")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/hook", self._answer, methods=["POST"])])
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, ws="none")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, count: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.arrivals)} of {count} webhooks in {limit_s:g} s")
            await asyncio.sleep(0.01)


def _request(settings: Settings, url: str) -> JobRequest:
    spec = job_pb2.JobSpec(
        prompt="a bench webhook", width=64, height=64, webhook=webhook_pb2.JobWebhook(url=url)
    )
    submit = jobs_service_pb2.SubmitJobRequest(request_id=str(uuid.uuid4()), spec=spec)
    return validate_submit(submit, settings)


async def _finish(resources: Resources, job_id: uuid.UUID) -> None:
    claimed = await resources.lifecycle.claim(job_id, 0, "bench", LEASE)
    if claimed is None:
        raise RuntimeError(f"job {job_id} was not claimable")
    await resources.lifecycle.succeed(job_id, claimed.attempt, [OUTPUT], "bench", "1")


async def _bare_loop(
    url: str, body: bytes, count: int, *, concurrency: int = CONCURRENCY
) -> tuple[float, list[float]]:
    """POST `body` `count` times, `concurrency` at once: the rate, and each POST's time."""
    durations: list[float] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=15) as http:
        queue = list(range(count))

        async def one() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                response = await http.post(url, content=body, headers={"content-type": "x"})
                response.raise_for_status()
                durations.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return count / (time.perf_counter() - started), durations


def _reset(settings: Settings) -> None:
    with psycopg.connect(settings.database_url.replace("+psycopg", ""), autocommit=True) as pg:
        pg.execute("TRUNCATE webhook_attempts, webhook_deliveries, webhook_circuits")


async def run(ctx: Context) -> Section:
    section = Section("webhooks", "9. Webhooks")
    quick = ctx.options.quick
    latency_jobs = QUICK_LATENCY_JOBS if quick else LATENCY_JOBS
    bulk_jobs = QUICK_BULK_JOBS if quick else BULK_JOBS
    receiver = Receiver()
    await receiver.start()
    settings = ctx.env.settings(
        "webhooks",
        webhook_allow_http=True,
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_concurrency=CONCURRENCY,
    )
    _reset(settings)
    resources = Resources.open(settings)
    worker: Child | None = None
    try:
        env = ctx.env.child_env(settings)
        worker = await spawn("webhooks", ["-m", "darkroom.services.webhooks"], env, ctx.log_dir)
        row, _ = await resources.store.create(DEV_OWNER, _request(settings, receiver.url), 3)
        await _finish(resources, row.id)
        await receiver.wait_for(1, 60)  # the worker is up and listening
        receiver.arrivals.clear()
        ctx.say(f"webhooks: {latency_jobs} jobs ending one at a time, commit → receiver's 200")
        for _ in range(latency_jobs):
            row, _ = await resources.store.create(DEV_OWNER, _request(settings, receiver.url), 3)
            await _finish(resources, row.id)
            await asyncio.sleep(0.02)
        await receiver.wait_for(latency_jobs, 60)
        latencies = [got - ended for got, ended in receiver.arrivals if ended is not None]
        await stop(worker)
        worker = None

        ctx.say(f"webhooks: {bulk_jobs} jobs ended at once, then one worker delivers them")
        created = await resources.store.create_many(
            [(DEV_OWNER, _request(settings, receiver.url)) for _ in range(bulk_jobs)], 3
        )
        for start in range(0, bulk_jobs, 100):
            await asyncio.gather(
                *(_finish(resources, r.id) for r, _ in created[start : start + 100])
            )
        receiver.arrivals.clear()
        worker = await spawn(
            "webhooks-bulk", ["-m", "darkroom.services.webhooks"], env, ctx.log_dir
        )
        await receiver.wait_for(bulk_jobs, 600)
        first, last = receiver.arrivals[0][0], receiver.arrivals[-1][0]
        ours_rate = (bulk_jobs - 1) / max(last - first, 1e-9)
        await stop(worker)
        worker = None

        ctx.say(f"webhooks: bare POST loop, {bulk_jobs} POSTs, {CONCURRENCY} at once")
        body = json.dumps({"type": "job.succeeded", "data": {"x": "y" * 900}}).encode()
        bare_rate, _ = await _bare_loop(receiver.url, body, bulk_jobs)
        _, bare_posts = await _bare_loop(receiver.url, body, latency_jobs, concurrency=1)
    finally:
        if worker is not None:
            await stop(worker)
        await resources.close()
        await receiver.stop()
    section.figures += _figures(summary_ms(latencies), ours_rate, bare_rate, summary_ms(bare_posts))
    section.notes.append(
        "One `python -m darkroom.services.webhooks` process with its defaults: poll "
        f"interval {settings.webhook_poll_interval.total_seconds():g} s, {CONCURRENCY} POSTs "
        f"at once but at most {settings.webhook_destination_concurrency} to one destination "
        "(here the one receiver; allowing it all 32 measured lower on 2 cores, not higher), "
        "a fresh connection per POST. Jobs are recorded and moved through the life cycle in "
        "the bench process, and the receiver (uvicorn) runs there too. Latency is the receipt "
        "time minus the job's `end_time` (the database clock at the terminal commit); its "
        "baseline is one bare POST's round trip, one at a time."
    )
    return section


def _figures(
    latency: dict[str, Any], ours_rate: float, bare_rate: float, bare: dict[str, Any]
) -> list[Figure]:
    label = "one bare httpx POST to the same receiver, one at a time (same run)"
    return [
        Figure(
            "webhooks",
            "terminal commit → receiver p50",
            "ms",
            latency["p50_ms"],
            bare["p50_ms"],
            label,
            goals=[Goal("p50 <= 50 ms", 50.0)],
            details={"ours": latency, "baseline": bare},
        ),
        Figure(
            "webhooks",
            "terminal commit → receiver p99",
            "ms",
            latency["p99_ms"],
            bare["p99_ms"],
            label,
        ),
        Figure(
            "webhooks",
            "deliveries per second, one worker",
            "/s",
            ours_rate,
            bare_rate,
            f"bare POST loop, {CONCURRENCY} at once (same run)",
        ),
    ]
