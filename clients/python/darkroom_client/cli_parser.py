"""The `darkroom` CLI's arguments: commands, flags, help and the exit-code epilog."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from darkroom_client import jobs
from darkroom_client.cli_webhooks import add_commands, events_of
from darkroom_client.webhooks import parse_events

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
  DARKROOM_TLS_CA_FILE    connect over TLS, trusting this CA bundle (PEM)
  DARKROOM_TLS=1          connect over TLS, trusting the system's CAs
  DARKROOM_TLS_CLIENT_CERT_FILE, DARKROOM_TLS_CLIENT_KEY_FILE
                          this client's certificate and key (servers with mutual TLS)
"""


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
        "--priority",
        type=int,
        help="-10 to 10 among your own queued jobs, higher first (default 0)",
    )
    parser.add_argument("--webhook", metavar="URL", help="an https:// URL to call when it ends")
    parser.add_argument(
        "--webhook-events",
        type=events_of,
        default=[],
        metavar="EVENTS",
        help="comma-separated: terminal (the default), started, progress",
    )
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
    listing.add_argument("--priority", type=int, help="only jobs of this priority (-10 to 10)")
    listing.add_argument("--page-size", type=int, default=0, metavar="N", help="jobs per page")
    listing.add_argument("--page-token", default="", help="the token that ended the last page")

    command("models", "show each model's workers (busy, idle), queued and running jobs")

    cancel = command("cancel", "cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")

    watch = command("watch", "print a job's events until it ends")
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--after", default="", metavar="EVENT_ID", help="resume after this event")

    def subcommand(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        return made

    webhooks = command("webhooks", "manage webhook endpoints, see deliveries, redeliver")
    add_commands(webhooks, subcommand)
    return parser


def spec_of(args: argparse.Namespace) -> jobs.SpecFields:
    """The spec fields given on the command line (unset ones are left to the server)."""
    spec: jobs.SpecFields = {}
    for name in jobs.SpecFields.__annotations__:
        value = getattr(args, name)
        if name == "webhook" and value is not None:
            value = {"url": value, "events": parse_events(args.webhook_events)}
        if value is not None:
            spec[name] = value  # type: ignore[literal-required]
    return spec
