"""Darkroom's own service processes, started the way they are deployed (`python -m …`)."""

from __future__ import annotations

from pathlib import Path

from bench.env import BenchEnv
from bench.procs import Child, spawn, wait_healthy
from darkroom import devservers
from darkroom.config import Settings


async def start_jobs(env: BenchEnv, settings: Settings, log_dir: Path) -> tuple[Child, int]:
    """`python -m darkroom.services.jobs` on a free loopback port; returns it once it serves."""
    port = devservers.free_port()
    child = await spawn(
        "jobs",
        ["-m", "darkroom.services.jobs"],
        env.child_env(settings, DARKROOM_JOBS_ADDRESS=f"127.0.0.1:{port}"),
        log_dir,
    )
    await wait_healthy(child, port)
    return child, port


async def start_events(
    env: BenchEnv, settings: Settings, log_dir: Path, name: str = "events"
) -> tuple[Child, int]:
    """`python -m darkroom.services.events` on a free loopback port; returns it once it serves."""
    port = devservers.free_port()
    child = await spawn(
        name,
        ["-m", "darkroom.services.events"],
        env.child_env(settings, DARKROOM_EVENTS_ADDRESS=f"127.0.0.1:{port}"),
        log_dir,
    )
    await wait_healthy(child, port)
    return child, port
