"""The generator's gauges read at scrape time: the age of its last registry heartbeat, and
what CUDA memory it holds (only where the pipeline runs on a GPU)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from darkroom import metrics

if TYPE_CHECKING:
    from darkroom.services.generator.worker import Generator


def watch(generator: Generator, model: str, load_seconds: float) -> None:
    """Publish `generator`'s model load time, busy flag and heartbeat age (and CUDA memory
    on a GPU); call once it is built, with metrics on."""
    metrics.GENERATOR_LOAD_SECONDS.labels(model).set(load_seconds)
    metrics.GENERATOR_BUSY.labels(model).set(0)
    presence = generator.runner.presence
    if presence is not None:
        # Its registry heartbeat, which ListModels and the scheduler count it by.
        metrics.GENERATOR_HEARTBEAT_AGE.set_function(
            lambda: time.monotonic() - presence.reported_at
        )
    torch = sys.modules.get("torch")  # loaded by a real pipeline; never imported here
    if torch is None or not torch.cuda.is_available():
        return
    metrics.GENERATOR_CUDA_ALLOCATED.set_function(lambda: float(torch.cuda.memory_allocated()))
    metrics.GENERATOR_CUDA_RESERVED.set_function(lambda: float(torch.cuda.memory_reserved()))
