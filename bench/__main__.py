"""`python -m bench [--quick] [--out DIR]`: run the suite, write report.md and report.json."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import cast

import uvloop

from bench import report
from bench.context import Context
from bench.env import bench_env, ignore_shell_settings
from bench.options import Options, parse
from bench.stats import Section
from darkroom import logs

TITLES = {
    "submit": "1. Submit",
    "pickup": "2. Pickup",
    "delivery": "3. Event delivery",
    "watchers": "4. Watchers",
    "overhead": "5. Generator overhead",
    "recovery": "6. Recovery",
    "gateway": "7. Gateway",
    "observability": "8. Observability",
    "webhooks": "9. Webhooks",
    "closed_loop": "10. Closed loop",
}


async def run_sections(ctx: Context) -> list[Section]:
    sections = []
    for key in ctx.options.sections:
        started = time.monotonic()
        ctx.say(f"{TITLES[key]}")
        ctx.env.reset_database()
        module = importlib.import_module(f"bench.{key}")
        run = cast(Callable[[Context], Awaitable[Section]], module.run)
        try:
            section = await run(ctx)
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            traceback.print_exc()
            section = Section(key, TITLES[key], skipped=f"failed: {exc!r}"[:500])
        section.seconds = time.monotonic() - started
        sections.append(section)
    return sections


def main(argv: list[str] | None = None) -> int:
    options: Options = parse(argv)
    dropped = ignore_shell_settings()
    os.environ.update(options.overrides)
    # In-process services (the pickup generator) log only warnings: results go to reports.
    logs.configure("WARNING", json=True)
    info = report.machine()
    mode = "quick" if options.quick else "full"
    if options.overrides:
        mode += ", with " + ", ".join(f"{k}={v}" for k, v in options.overrides.items())
    log_dir = options.out / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    if dropped:
        print(f"[bench] ignoring {', '.join(sorted(dropped))}: measuring defaults", file=sys.stderr)
    with bench_env() as env:
        info["servers"] = (
            f"Postgres {'throwaway' if env.postgres_throwaway else 'running'}, "
            f"Redis {'throwaway' if env.redis_throwaway else 'running'}"
        )
        ctx = Context(env, options, log_dir)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sections = runner.run(run_sections(ctx))
    info["load_average_end"] = report.machine()["load_average"]
    md_path, json_path = report.write(options.out, info, sections, mode)
    print(md_path.read_text())
    print(f"[bench] wrote {md_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
