"""Job specs, states and results shared by the async client, the blocking client and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias, TypedDict

from darkroom.v1 import events_service_pb2, job_pb2, webhook_pb2
from darkroom_client.errors import JobCancelled, JobFailed
from darkroom_client.outputs import outputs_fetchable

Job = job_pb2.Job
JobEvent = events_service_pb2.JobEvent
JobStateValue: TypeAlias = job_pb2.JobState.ValueType

TERMINAL_STATES: frozenset[JobStateValue] = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
TERMINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})
# Short state names, as the CLI and `parse_state` accept them.
STATE_NAMES: dict[str, JobStateValue] = {
    "queued": job_pb2.JOB_STATE_QUEUED,
    "running": job_pb2.JOB_STATE_RUNNING,
    "succeeded": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
}


class SpecFields(TypedDict, total=False):
    """Optional `JobSpec` fields; anything left out takes the server's default."""

    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    model: str
    priority: int
    # `{"url": "https://...", "events": ["WEBHOOK_EVENT_TERMINAL"]}` or a `JobWebhook`.
    webhook: dict[str, object] | webhook_pb2.JobWebhook


def build_spec(prompt: str, fields: Mapping[str, object]) -> job_pb2.JobSpec:
    """The `JobSpec` for `prompt` and the given `SpecFields` (None values are left unset)."""
    unknown = set(fields) - set(SpecFields.__annotations__)
    if unknown:
        raise TypeError(f"unknown job spec fields: {', '.join(sorted(unknown))}")
    present = {name: value for name, value in fields.items() if value is not None}
    return job_pb2.JobSpec(prompt=prompt, **present)  # type: ignore[arg-type]


def parse_state(state: JobStateValue | str | None) -> JobStateValue:
    """A job state from a short name (`"queued"`), a full name or a value; None: any."""
    if state is None:
        return job_pb2.JOB_STATE_UNSPECIFIED
    if isinstance(state, str):
        name = state.strip().lower().removeprefix("job_state_")
        if name not in STATE_NAMES:
            raise ValueError(f"unknown job state {state!r}; use one of {', '.join(STATE_NAMES)}")
        return STATE_NAMES[name]
    return state


def state_name(state: JobStateValue) -> str:
    """The short lower-case name of a state (`"succeeded"`)."""
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def is_terminal(job: job_pb2.Job) -> bool:
    """Whether the job will never change again."""
    return job.state in TERMINAL_STATES


def ends_watch(event: events_service_pb2.JobEvent) -> bool:
    """Whether a watch stops after `event`: a terminal event or a terminal snapshot."""
    kind = event.WhichOneof("kind")
    if kind in TERMINAL_KINDS:
        return True
    return kind == "snapshot" and is_terminal(event.snapshot.job)


def event_job(event: events_service_pb2.JobEvent) -> job_pb2.Job | None:
    """The job an event carries (snapshots and terminal events), else None."""
    kind = event.WhichOneof("kind")
    if kind in {"snapshot", *TERMINAL_KINDS}:
        job: job_pb2.Job = getattr(event, kind).job
        return job
    return None


def final_job(last: events_service_pb2.JobEvent | None) -> job_pb2.Job | None:
    """The final job that a watch's last event carries (a terminal event, or a terminal
    snapshot), when its outputs can still be fetched; else None (read the job instead)."""
    job = event_job(last) if last is not None else None
    if job is None or not is_terminal(job) or not outputs_fetchable(job):
        return None
    return job


def check_outcome(job: job_pb2.Job) -> job_pb2.Job:
    """Return a succeeded job; raise `JobFailed` or `JobCancelled` for the others."""
    if job.state == job_pb2.JOB_STATE_FAILED:
        raise JobFailed(job)
    if job.state == job_pb2.JOB_STATE_CANCELLED:
        raise JobCancelled(job)
    if job.state != job_pb2.JOB_STATE_SUCCEEDED:
        raise ValueError(f"job {job.id} has not finished ({state_name(job.state)})")
    return job


def output_paths(path: str | Path, count: int) -> list[Path]:
    """Where `count` images go for `-o path`: `path` itself for one image, otherwise
    `stem-0.suffix`, `stem-1.suffix`, … next to it."""
    path = Path(path)
    if count == 1:
        return [path]
    suffix = path.suffix or ".png"
    return [path.with_name(f"{path.stem}-{index}{suffix}") for index in range(count)]


@dataclass(frozen=True)
class GenerateResult:
    """A finished generation: the final job and the PNG bytes of each output, in order."""

    job: job_pb2.Job
    images: list[bytes] = field(default_factory=list)

    def save(self, path: str | Path) -> list[Path]:
        """Write the images to `path` (several: `stem-0.png`, `stem-1.png`, …)."""
        paths = output_paths(path, len(self.images))
        for target, data in zip(paths, self.images, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return paths
