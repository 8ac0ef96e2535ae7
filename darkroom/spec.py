"""The job spec, declared once: what to generate, with every default filled in.

`Spec`'s fields are the spec's one declaration. The job row has a column of the same name
for each, the submit's insert writes them from `values()`, `Spec.of(row)` reads them back,
`to_proto()` is the `darkroom.v1.JobSpec`, and the generator's request and the client's
keyword arguments are built from it; `tests/darkroom/test_spec.py` fails when any of those
forgets a field. Adding a spec field is the proto, a migration and one line here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any, Protocol

from darkroom.v1 import job_pb2


class HasSpec(Protocol):
    """Anything with the spec's fields as attributes: a job row, Core or ORM."""

    @property
    def prompt(self) -> str: ...
    @property
    def negative_prompt(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def guidance_scale(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def num_images(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def webhook(self) -> dict[str, Any] | None: ...


# What jobs run in one batched pipeline call share (beside their model); each keeps its
# prompts, seeds and number of images.
BATCH_SHARED = ("width", "height", "steps", "guidance_scale")


@dataclass(frozen=True)
class Spec:
    """A job's spec as recorded (limits are checked in `darkroom.validation`)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    model: str
    priority: int
    # `{"url": ..., "events": ["WEBHOOK_EVENT_TERMINAL", ...]}` as recorded (the JSON of a
    # `darkroom.v1.JobWebhook`, events by name), or None.
    webhook: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: HasSpec) -> Spec:
        """The spec of a job row."""
        return cls(**{name: getattr(row, name) for name in FIELDS})

    def values(self) -> dict[str, Any]:
        """The spec as column values (a flat dict: cheaper than `asdict`'s deep copy, on
        the submit hot path)."""
        return {name: getattr(self, name) for name in FIELDS}

    def to_proto(self) -> job_pb2.JobSpec:
        """The `darkroom.v1.JobSpec` message."""
        return job_pb2.JobSpec(**self.values())

    @property
    def prompt_sha256(self) -> str:
        """SHA-256 of the prompt, recorded beside it (and in each PNG's metadata)."""
        return hashlib.sha256(self.prompt.encode()).hexdigest()


FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Spec))
