"""The shape every process shares: an app that ends without being asked to is a failure."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta

import pytest

from darkroom.config import Settings
from darkroom.process import AppEndedError, serve


class App:
    def __init__(self, ends_by_itself: bool) -> None:
        self.ends_by_itself = ends_by_itself
        self.stopped_with: timedelta | None = None
        self._ended = asyncio.Event()

    async def wait(self) -> None:
        if not self.ends_by_itself:
            await self._ended.wait()

    async def stop(self, grace: timedelta) -> None:
        self.stopped_with = grace
        self._ended.set()


async def test_an_app_that_ends_by_itself_is_stopped_and_fails_the_process(
    settings: Settings,
) -> None:
    app = App(ends_by_itself=True)
    with pytest.raises(AppEndedError):
        await serve(app, settings)
    assert app.stopped_with == settings.shutdown_grace


async def test_a_stopped_app_ends_the_process_normally(settings: Settings) -> None:
    app = App(ends_by_itself=False)
    serving = asyncio.create_task(serve(app, settings))
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)  # caught by serve's handler, as in a process
    await asyncio.wait_for(serving, 5)
    assert app.stopped_with == settings.shutdown_grace
