"""What a generator gives each attempt, and why an attempt may be told to stop."""

from __future__ import annotations

import enum
from concurrent.futures import Executor
from dataclasses import dataclass, field

from darkroom.config import Settings
from darkroom.lifecycle import Lifecycle
from darkroom.services.generator.faults import Faults
from darkroom.services.generator.pipeline import Pipeline
from darkroom.storage import Storage


class Stop(enum.Enum):
    """Why an attempt was told to stop before it finished."""

    CANCEL = "cancel"  # the owner cancelled the job
    LOST = "lost"  # a newer attempt owns the job: publish nothing, write nothing
    TIMEOUT = "timeout"  # the per-job execution timeout passed
    SHUTDOWN = "shutdown"  # the worker is stopping: hand the job back at once


class PipelineWedgedError(Exception):
    """The pipeline thread did not stop after the execution timeout."""


@dataclass
class Services:
    """What a worker gives each attempt: every move of the job goes through `lifecycle`."""

    settings: Settings
    lifecycle: Lifecycle
    storage: Storage
    pipeline: Pipeline
    executor: Executor
    worker_id: str
    faults: Faults = field(default_factory=Faults)
