"""`darkroom generate`: submit, follow, save; Ctrl-C cancels the job (or leaves it running)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format

from darkroom.v1 import job_pb2
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.cli_output import print_json, say
from darkroom_client.cli_parser import spec_of
from darkroom_client.errors import DarkroomError, FailedPrecondition
from darkroom_client.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from darkroom_client.progress import reporter

T = TypeVar("T")


def _left_running(job_id: str) -> None:
    say(f"left job {job_id} running; follow it with: darkroom watch {job_id}")


async def _unless_interrupted(task: asyncio.Future[T], interrupted: asyncio.Event) -> bool:
    """Wait for `task`, or for Ctrl-C: then cancel `task` and return True."""
    waiter = asyncio.ensure_future(interrupted.wait())
    pending: set[asyncio.Future[Any]] = {task, waiter}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, DarkroomError):
        await task
    return True


async def generate(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    progress = None if args.quiet else reporter(sys.stderr)
    accepted: list[job_pb2.Job] = []

    def on_submitted(job: job_pb2.Job) -> None:
        accepted.append(job)
        if not args.quiet:
            then = "stops watching and leaves it running" if args.detach else "cancels it"
            say(f"job {job.id} accepted (Ctrl-C {then})")

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        task = asyncio.ensure_future(
            client.generate(
                args.prompt,
                on_event=progress,
                on_submitted=on_submitted,
                queue_timeout=args.queue_timeout,
                **spec_of(args),
            )
        )
        try:
            stopped = await _unless_interrupted(task, interrupted)
        finally:
            if progress is not None:
                progress.finish()
        if stopped:
            return await _interrupted(client, args, accepted, interrupted)
        result = task.result()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    paths = result.save(args.output or Path(f"{result.job.id}.png"))
    if progress is not None:
        progress.finish(f"saved {len(paths)} image(s)")
    if args.json:
        print_json({"job": json_format.MessageToDict(result.job), "paths": [str(p) for p in paths]})
    else:
        for path in paths:
            print(path, flush=True)
    return EXIT_OK


async def _interrupted(
    client: AsyncDarkroomClient,
    args: argparse.Namespace,
    accepted: list[job_pb2.Job],
    interrupted: asyncio.Event,
) -> int:
    """After Ctrl-C in `generate`: cancel the job, unless --detach or a second Ctrl-C."""
    if not accepted:
        say("interrupted before the job was accepted; `darkroom list` shows it if it was")
        return EXIT_INTERRUPTED
    job_id = accepted[0].id
    if args.detach:
        _left_running(job_id)
        return EXIT_INTERRUPTED
    interrupted.clear()
    say(f"cancelling job {job_id} (Ctrl-C again leaves it running)")
    cancel = asyncio.ensure_future(client.cancel(job_id))
    if await _unless_interrupted(cancel, interrupted):
        _left_running(job_id)
        return EXIT_INTERRUPTED
    try:
        job = cancel.result()
    except FailedPrecondition as exc:
        state = exc.metadata.get("state", "").lower() or "finished"
        say(f"job {job_id} had already ended ({state}); nothing to cancel")
        return EXIT_INTERRUPTED
    if job.state == job_pb2.JOB_STATE_CANCELLED:
        say(f"cancelled job {job_id}")
    else:
        say(f"cancel requested: job {job_id} stops at the end of its current step")
    return EXIT_INTERRUPTED
