"""What every Darkroom process does around its work: settings, logs, uvloop, signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

import structlog
import uvloop

from darkroom import clock, logs, metrics, tracing
from darkroom.config import Settings, load_settings
from darkroom.server import ListenError

log = structlog.get_logger("darkroom.server")


class App(Protocol):
    """A started service: it runs until stopped (or until `wait` ends by itself, which
    means it failed), and stops gracefully within a grace period."""

    async def wait(self) -> None: ...

    async def stop(self, grace: timedelta) -> None: ...


class AppEndedError(RuntimeError):
    """The app ended without being asked to: the process must exit with a failure, so
    that its supervisor starts it again."""


async def serve(app: App, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then stop it. An app that ends by itself has failed:
    it is stopped all the same, then `AppEndedError` says so."""
    stop = asyncio.ensure_future(stop_signal().wait())
    ended = asyncio.ensure_future(app.wait())
    await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    if ended.done() and not stop.done():
        failure = ended.exception() if not ended.cancelled() else None
        log.error("process_failed", error=repr(failure) if failure else "it ended by itself")
    log.info("process_stopping", grace_s=settings.shutdown_grace.total_seconds())
    await app.stop(settings.shutdown_grace)
    for waiter in (stop, ended):
        waiter.cancel()
    log.info("process_stopped")
    if ended.done() and not stop.done():
        raise AppEndedError("the app ended without being stopped") from failure


def raise_if_cancelled() -> None:
    """Call once a round in a loop that outlives a dependency's errors.

    A cancellation can be lost on its way through a client library: `asyncio.timeout`
    turns a `CancelledError` into a `TimeoutError` when both land at once, and redis-py's
    retry then runs the command again and returns normally (or our `except` goes round
    again). The task still counts the request, so ask it and end the loop: a loop that
    swallows its own cancellation makes whoever stops it wait for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def stop_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (call from the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def main(program: str, start: Callable[[Settings], Awaitable[App]]) -> None:
    """Load settings (a bad one ends the process naming it), configure logs, start the
    app and serve it until SIGTERM: the one entry point of every Darkroom process."""
    settings = load_settings(program)
    traced = tracing.configure(
        program, settings.traces_endpoint, sample_ratio=settings.traces_sample_ratio
    )
    logs.configure(settings.log_level, settings.log_json, trace_ids=traced is not None)
    try:
        listener = metrics.serve(settings.metrics_address)
    except (OSError, ValueError) as exc:
        print(f"{program}: DARKROOM_METRICS_ADDRESS: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(_run(start, settings))
        except ListenError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except AppEndedError:
            raise SystemExit(1) from None
        finally:
            tracing.shutdown()
            if listener is not None:
                listener.close()


async def _run(start: Callable[[Settings], Awaitable[App]], settings: Settings) -> None:
    app = await start(settings)
    checking = asyncio.create_task(clock.check(settings))  # a warning in the logs at most
    try:
        await serve(app, settings)
    finally:
        checking.cancel()
