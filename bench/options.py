"""Command-line options: the size of each measurement (`--quick` for a smoke run)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = (
    "submit",
    "pickup",
    "delivery",
    "watchers",
    "overhead",
    "recovery",
    "gateway",
    "observability",
    "webhooks",
    "closed_loop",
)


@dataclass
class Options:
    """How big each measurement is; `quick()` shrinks them to a ~1 minute smoke run."""

    out: Path = Path("bench-results")
    quick: bool = False
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    # 1. Submit
    rates: list[int] = field(default_factory=lambda: [100, 500, 1000])
    rate_seconds: float = 5.0
    concurrency: int = 64
    saturation_seconds: float = 6.0
    channels: int = 8
    # 2. Pickup
    pickup_samples: int = 50
    pickup_arq_samples: int = 16
    # 3. Event delivery
    events: int = 3000
    event_rate: float = 1000.0
    # 4. Watchers
    watchers: int = 10_000
    watchers_per_job: int = 4
    watch_clients: int = 2
    watch_channels: int = 20
    # 5. Generator overhead
    overhead_jobs: int = 12
    # (image size, denoising steps): short jobs, where the fixed cost of a job shows, and
    # a longer one (~1.5 s here), nearer the seconds a real model takes on a GPU.
    overhead_shapes: list[tuple[int, int]] = field(
        default_factory=lambda: [(128, 20), (256, 40), (512, 30)]
    )
    # 6. Recovery
    recovery_timeout: float = 90.0
    # 10. Closed loop: clients that each submit, watch, fetch and submit again
    closed_loop_clients: int = 8
    closed_loop_window_s: float = 30.0
    closed_loop_shapes: list[tuple[int, int]] = field(
        default_factory=lambda: [(128, 20), (512, 30)]
    )
    # Batched against unbatched generators: the seconds of each side's window, per round
    # (two rounds, each side first once).
    batch_shapes: list[tuple[int, int]] = field(default_factory=lambda: [(64, 8), (128, 8)])
    batch_window_s: float = 10.0
    profile: bool = False
    # DARKROOM_* settings for every service of the run (experiments; recorded in the report)
    overrides: dict[str, str] = field(default_factory=dict)

    def shrink(self) -> None:
        """The --quick sizes (flags given explicitly still win: they are applied after)."""
        self.quick = True
        self.rate_seconds = 1.5
        self.saturation_seconds = 2.0
        self.pickup_samples = 15
        self.pickup_arq_samples = 6
        self.events = 1000
        self.watchers = 1000
        self.overhead_jobs = 4
        self.overhead_shapes = [(128, 20), (256, 40)]
        self.recovery_timeout = 60.0
        self.closed_loop_window_s = 5.0
        self.closed_loop_shapes = [(64, 4)]
        self.batch_shapes = [(64, 4)]
        self.batch_window_s = 3.0


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Darkroom against baselines taken in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--out", type=Path, help="report folder (default: bench-results)")
    parser.add_argument("--only", help=f"comma-separated sections of: {','.join(SECTIONS)}")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--rates", help="offered submit rates per second, e.g. 100,500,1000")
    parser.add_argument("--rate-seconds", type=float, help="seconds at each offered rate")
    parser.add_argument("--concurrency", type=int, help="submits in flight at saturation")
    parser.add_argument("--saturation-seconds", type=float, help="seconds at saturation")
    parser.add_argument("--channels", type=int, help="gRPC channels of the submit client")
    parser.add_argument("--pickup-samples", type=int, help="pickups with the default poll")
    parser.add_argument("--pickup-arq-samples", type=int, help="pickups with arq's 0.5 s poll")
    parser.add_argument("--events", type=int, help="events sent in the delivery test")
    parser.add_argument("--event-rate", type=float, help="events per second")
    parser.add_argument("--watchers", type=int, help="concurrent WatchJob streams")
    parser.add_argument("--watchers-per-job", type=int, help="watchers sharing one job")
    parser.add_argument("--watch-clients", type=int, help="client processes for the watchers")
    parser.add_argument("--watch-channels", type=int, help="gRPC channels per client process")
    parser.add_argument("--overhead-jobs", type=int, help="jobs through the whole system")
    parser.add_argument(
        "--shapes", help="overhead job shapes as SIZExSTEPS, comma-separated (e.g. 128x20,256x40)"
    )
    _closed_loop_arguments(parser)
    parser.add_argument("--recovery-timeout", type=float, help="most seconds to wait for a rerun")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="DARKROOM_NAME=VALUE",
        help="a setting for every service of the run (repeatable; defaults otherwise)",
    )
    args = parser.parse_args(argv)

    options = Options()
    if args.quick:
        options.shrink()
    if args.out is not None:
        options.out = args.out
    if args.only:
        only = _sections(parser, args.only)
        options.sections = [s for s in SECTIONS if s in only]
    if args.skip:
        skipped = _sections(parser, args.skip)
        options.sections = [s for s in options.sections if s not in skipped]
    if args.rates:
        options.rates = [int(rate) for rate in args.rates.split(",") if rate]
    for name in (
        "rate_seconds",
        "concurrency",
        "saturation_seconds",
        "channels",
        "pickup_samples",
        "pickup_arq_samples",
        "events",
        "event_rate",
        "watchers",
        "watchers_per_job",
        "watch_clients",
        "watch_channels",
        "overhead_jobs",
        "recovery_timeout",
        "closed_loop_clients",
        "closed_loop_window_s",
        "batch_window_s",
    ):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(options, name, value)
    if args.shapes:
        options.overhead_shapes = _shapes(parser, args.shapes)
    _closed_loop(parser, args, options)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("DARKROOM_") or name.startswith("DARKROOM_BENCH_"):
            parser.error(f"--env takes DARKROOM_NAME=VALUE, got {item!r}")
        options.overrides[name] = value
    return options


def _closed_loop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--closed-loop-clients", type=int, help="clients in the closed loop")
    parser.add_argument(
        "--closed-loop-window-s", type=float, help="seconds of each closed-loop window"
    )
    parser.add_argument("--closed-loop-shapes", help="closed-loop job shapes as SIZExSTEPS, …")
    parser.add_argument("--batch-shapes", help="batched-against-unbatched shapes as SIZExSTEPS, …")
    parser.add_argument("--batch-window-s", type=float, help="seconds a side a round, batching")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the closed loop's processes (if installed)"
    )


def _closed_loop(
    parser: argparse.ArgumentParser, args: argparse.Namespace, options: Options
) -> None:
    if args.closed_loop_shapes:
        options.closed_loop_shapes = _shapes(parser, args.closed_loop_shapes)
    if args.batch_shapes:
        options.batch_shapes = _shapes(parser, args.batch_shapes)
    options.profile = args.profile


def _shapes(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in (part.strip() for part in text.split(",")):
        size, sep, steps = item.partition("x")
        if not (sep and size.isdigit() and steps.isdigit() and int(size) > 0 and int(steps) > 0):
            parser.error(f"--shapes takes SIZExSTEPS items such as 128x20, got {item!r}")
        shapes.append((int(size), int(steps)))
    return shapes


def _sections(parser: argparse.ArgumentParser, text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {', '.join(SECTIONS)}")
    return names
