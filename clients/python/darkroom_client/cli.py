"""The `darkroom` command line: generate images, and submit, inspect, cancel and watch jobs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import jobs
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.errors import (
    DarkroomError,
    FailedPrecondition,
    InvalidArgument,
    JobCancelled,
    JobEnded,
    JobFailed,
    NotFound,
)
from darkroom_client.progress import describe, reporter

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_CANCELLED = 3
EXIT_ERROR = 4
EXIT_NOT_FOUND = 5
EXIT_JOB_STATE = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

T = TypeVar("T")

EPILOG = """\
exit codes:
  0  success (for generate and watch: the job succeeded)
  1  the job failed
  2  usage error: bad arguments, or a request the server rejected as invalid
  3  the job was cancelled
  4  server or connection error (unavailable, deadline exceeded, unauthenticated, ...)
  5  no such job (or it belongs to someone else)
  6  the job's state does not allow it (e.g. cancelling a job that already finished)
  130  interrupted by Ctrl-C (generate cancels its job first; --detach or a second
       Ctrl-C leaves it running)
  141  the output was closed early (e.g. `darkroom list | head -1`)

environment:
  DARKROOM_JOBS_TARGET    Jobs service address (default localhost:50051)
  DARKROOM_EVENTS_TARGET  Events service address (default localhost:50052)
  DARKROOM_TOKEN          bearer token (default: the development token)
"""


def exit_code(error: BaseException) -> int:
    """The exit code that reports `error`."""
    if isinstance(error, JobFailed):
        return EXIT_JOB_FAILED
    if isinstance(error, JobCancelled):
        return EXIT_JOB_CANCELLED
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, InvalidArgument):
        return EXIT_USAGE
    if isinstance(error, FailedPrecondition):
        return EXIT_JOB_STATE
    return EXIT_ERROR


def state_exit_code(state: jobs.JobStateValue) -> int:
    """The exit code for a job that ended in `state`."""
    if state == job_pb2.JOB_STATE_FAILED:
        return EXIT_JOB_FAILED
    if state == job_pb2.JOB_STATE_CANCELLED:
        return EXIT_JOB_CANCELLED
    return EXIT_OK


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _connection_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Flags every command accepts, before or after its name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--jobs", metavar="ADDR", default=default, help="Jobs service address (host:port)"
    )
    parser.add_argument(
        "--events", metavar="ADDR", default=default, help="Events service address (host:port)"
    )
    parser.add_argument("--token", default=default, help="bearer token")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=argparse.SUPPRESS if suppress else 10.0,
        metavar="SECONDS",
        help="deadline of each call (default 10)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON for scripts (one object per line for watch)",
    )


def _spec_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what the image should show")
    parser.add_argument("--negative-prompt", help="what the image should not show")
    parser.add_argument("--width", type=int, help="pixels, a multiple of 8 (default 512)")
    parser.add_argument("--height", type=int, help="pixels, a multiple of 8 (default 512)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 30)")
    parser.add_argument("--seed", type=int, help="random seed (default: picked by the server)")
    parser.add_argument("--num-images", type=int, help="images to generate, 1 to 4 (default 1)")
    parser.add_argument("--model", help="model name (default: the server's default)")
    parser.add_argument("--guidance-scale", type=float, help="guidance scale (default 7.5)")
    parser.add_argument(
        "--queue-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="how long the job may wait for a worker (default: the server's, 1 hour)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `darkroom` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="darkroom",
        description="Generate images with Darkroom, and manage its jobs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    generate = command("generate", "submit a prompt, show its progress and save the images")
    _spec_flags(generate)
    generate.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH",
        help="where to save the PNG (default JOB_ID.png); several images go to "
        "out-0.png, out-1.png, ... for -o out.png",
    )
    generate.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no job id on stderr"
    )
    generate.add_argument(
        "--detach",
        action="store_true",
        help="on Ctrl-C, stop waiting but leave the job running (default: cancel it)",
    )

    submit = command("submit", "submit a prompt and print the job id without waiting")
    _spec_flags(submit)

    get = command("get", "show a job")
    get.add_argument("job_id", metavar="JOB_ID")

    listing = command("list", "list your jobs, newest first")
    listing.add_argument("--state", choices=list(jobs.STATE_NAMES), help="only jobs in this state")
    listing.add_argument("--page-size", type=int, default=0, metavar="N", help="jobs per page")
    listing.add_argument("--page-token", default="", help="the token that ended the last page")

    cancel = command("cancel", "cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")

    watch = command("watch", "print a job's events until it ends")
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--after", default="", metavar="EVENT_ID", help="resume after this event")
    return parser


def _print_json(message: Message | dict[str, Any]) -> None:
    data = message if isinstance(message, dict) else json_format.MessageToDict(message)
    print(json.dumps(data), flush=True)


def _when(job: job_pb2.Job, name: str) -> str:
    if not job.HasField(name):  # type: ignore[arg-type]
        return "-"
    stamp = getattr(job, name)
    text: str = stamp.ToDatetime().isoformat(timespec="seconds") + "Z"
    return text


def _show_job(job: job_pb2.Job) -> None:
    spec = job.spec
    lines = [
        ("id", job.id),
        ("state", jobs.state_name(job.state) + (" (cancel requested)" * job.cancel_requested)),
        ("prompt", spec.prompt),
        ("size", f"{spec.width}x{spec.height}, {spec.num_images or 1} image(s)"),
        ("steps", f"{job.progress.step}/{spec.steps}"),
        ("seed", str(spec.seed)),
        ("model", spec.model),
        ("attempt", f"{job.attempt}/{job.max_attempts}"),
        ("created", _when(job, "create_time")),
        ("ended", _when(job, "end_time")),
    ]
    if spec.negative_prompt:
        lines.insert(3, ("negative", spec.negative_prompt))
    if job.HasField("error"):
        lines.append(("error", f"{job.error.message} (code {job.error.code})"))
    lines += [(f"output {output.index}", output.uri) for output in job.outputs]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")


def _spec(args: argparse.Namespace) -> jobs.SpecFields:
    spec: jobs.SpecFields = {}
    for name in jobs.SpecFields.__annotations__:
        value = getattr(args, name)
        if value is not None:
            spec[name] = value  # type: ignore[literal-required]
    return spec


def _say(message: str) -> None:
    print(f"darkroom: {message}", file=sys.stderr, flush=True)


def _left_running(job_id: str) -> None:
    _say(f"left job {job_id} running; follow it with: darkroom watch {job_id}")


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


async def _generate(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    progress = None if args.quiet else reporter(sys.stderr)
    accepted: list[job_pb2.Job] = []

    def on_submitted(job: job_pb2.Job) -> None:
        accepted.append(job)
        if not args.quiet:
            then = "stops watching and leaves it running" if args.detach else "cancels it"
            _say(f"job {job.id} accepted (Ctrl-C {then})")

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
                **_spec(args),
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
        _print_json(
            {"job": json_format.MessageToDict(result.job), "paths": [str(p) for p in paths]}
        )
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
        _say("interrupted before the job was accepted; `darkroom list` shows it if it was")
        return EXIT_INTERRUPTED
    job_id = accepted[0].id
    if args.detach:
        _left_running(job_id)
        return EXIT_INTERRUPTED
    interrupted.clear()
    _say(f"cancelling job {job_id} (Ctrl-C again leaves it running)")
    cancel = asyncio.ensure_future(client.cancel(job_id))
    if await _unless_interrupted(cancel, interrupted):
        _left_running(job_id)
        return EXIT_INTERRUPTED
    try:
        job = cancel.result()
    except FailedPrecondition as exc:
        state = exc.metadata.get("state", "").lower() or "finished"
        _say(f"job {job_id} had already ended ({state}); nothing to cancel")
        return EXIT_INTERRUPTED
    if job.state == job_pb2.JOB_STATE_CANCELLED:
        _say(f"cancelled job {job_id}")
    else:
        _say(f"cancel requested: job {job_id} stops at its next step")
    return EXIT_INTERRUPTED


async def _watch(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    last: events_service_pb2.JobEvent | None = None
    async for event in client.watch(args.job_id, args.after):
        last = event
        if args.json:
            _print_json(event)
        else:
            print(describe(event), flush=True)
    final = jobs.event_job(last) if last is not None else None
    return state_exit_code(final.state) if final is not None else EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    async with AsyncDarkroomClient(
        args.jobs, args.events, token=args.token, timeout=args.timeout
    ) as client:
        if args.command == "generate":
            return await _generate(client, args)
        if args.command == "watch":
            return await _watch(client, args)
        if args.command == "list":
            page = await client.list(
                state=args.state, page_size=args.page_size, page_token=args.page_token
            )
            if args.json:
                _print_json(page)
                return EXIT_OK
            for job in page.jobs:
                created = _when(job, "create_time")
                state = jobs.state_name(job.state)
                print(f"{job.id}  {state:<9}  {created}  {job.spec.prompt[:60]}")
            if page.next_page_token:
                print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
            return EXIT_OK
        if args.command == "submit":
            job = await client.submit(args.prompt, queue_timeout=args.queue_timeout, **_spec(args))
        elif args.command == "get":
            job = await client.get(args.job_id)
        else:  # cancel
            job = await client.cancel(args.job_id)
        if args.json:
            _print_json(job)
        elif args.command == "submit":
            print(job.id)
        else:
            _show_job(job)
        return EXIT_OK


def _error_json(error: DarkroomError | JobEnded) -> dict[str, Any]:
    if isinstance(error, JobEnded):
        code = "JOB_FAILED" if isinstance(error, JobFailed) else "JOB_CANCELLED"
        return {"code": code, "message": str(error), "job": json_format.MessageToDict(error.job)}
    shown: dict[str, Any] = {
        "code": error.code.name,
        "reason": error.reason,
        "message": error.message,
        "metadata": error.metadata,
    }
    if isinstance(error, InvalidArgument):
        shown["violations"] = [v._asdict() for v in error.violations]
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the `--help` epilog)."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (DarkroomError, JobEnded) as error:
        code = exit_code(error)
        if args.json:
            shown = {"error": {**_error_json(error), "exit_code": code}}
            print(json.dumps(shown), file=sys.stderr)
        else:
            print(f"darkroom: {error}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("darkroom: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`darkroom list | head -1`): stop quietly, and point stdout
        # at /dev/null so the interpreter's last flush does not complain about it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
