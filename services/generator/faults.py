"""Fault points of the generator: where the fault suite kills a worker on purpose.

`Faults` is a `lifecycle.Hooks` too, so a kill can land between a move's commit and its
consequences. The default does nothing; `KillAt`, which only tests inject (see
`tests/fake_generator.py`), ends the process with status 137, as a SIGKILL would.
"""

from __future__ import annotations

import os

import structlog

from darkroom.lifecycle import Hooks
from darkroom.models import JobRecord

log = structlog.get_logger("darkroom.generator")


class Faults(Hooks):
    """No faults: every point passes."""

    def reached(self, point: str) -> None:
        """The attempt reached `point` (`after_upload`: stored, not yet committed)."""

    def after_commit(self, move: str, row: JobRecord) -> None:
        if move == "succeed":
            self.reached("after_commit")


class KillAt(Faults):
    """Ends the process at one point: `after_upload` or `after_commit`."""

    def __init__(self, point: str) -> None:
        self.point = point

    def reached(self, point: str) -> None:
        if point == self.point:
            log.warning("fault_injected", point=point)
            os._exit(137)
