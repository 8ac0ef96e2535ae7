"""The `darkroom` command line: generate images, and submit, inspect, cancel and watch jobs.

`main` runs one command; the arguments are in `cli_parser`, `generate` (with its Ctrl-C
handling) in `cli_generate`, what is printed in `cli_output`, exit codes in `exit_codes`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from darkroom.v1 import events_service_pb2
from darkroom_client import cli_webhooks, jobs
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.cli_generate import generate
from darkroom_client.cli_output import print_json, show_job, show_models, when
from darkroom_client.cli_parser import EPILOG, build_parser, spec_of
from darkroom_client.defaults import TLSSettingsError
from darkroom_client.errors import DarkroomError, InvalidArgument, JobEnded, JobFailed
from darkroom_client.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code,
    state_exit_code,
)
from darkroom_client.progress import describe

__all__ = ["EPILOG", "build_parser", "main"]


async def _watch(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    last: events_service_pb2.JobEvent | None = None
    async for event in client.watch(args.job_id, args.after):
        last = event
        if args.json:
            print_json(event)
        else:
            print(describe(event), flush=True)
    final = jobs.event_job(last) if last is not None else None
    return state_exit_code(final.state) if final is not None else EXIT_OK


async def _list(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    page = await client.list(
        state=args.state,
        priority=args.priority,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    if args.json:
        print_json(page)
        return EXIT_OK
    for job in page.jobs:
        created = when(job, "create_time")
        state = jobs.state_name(job.state)
        print(f"{job.id}  {state:<9}  {created}  {job.spec.prompt[:60]}")
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


async def _models(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    models = await client.list_models()
    if args.json:
        print_json({"models": [json_format.MessageToDict(model) for model in models]})
    else:
        show_models(models)
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    async with AsyncDarkroomClient(
        args.jobs, args.events, token=args.token, timeout=args.timeout
    ) as client:
        if args.command == "generate":
            return await generate(client, args)
        if args.command == "watch":
            return await _watch(client, args)
        if args.command == "list":
            return await _list(client, args)
        if args.command == "models":
            return await _models(client, args)
        if args.command == "webhooks":
            return await cli_webhooks.run(client, args)
        if args.command == "submit":
            job = await client.submit(
                args.prompt, queue_timeout=args.queue_timeout, **spec_of(args)
            )
        elif args.command == "get":
            job = await client.get(args.job_id)
        else:  # cancel
            job = await client.cancel(args.job_id)
        if args.json:
            print_json(job)
        elif args.command == "submit":
            print(job.id)
        else:
            show_job(job)
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
    except TLSSettingsError as error:
        print(f"darkroom: {error}", file=sys.stderr)
        return EXIT_USAGE
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
