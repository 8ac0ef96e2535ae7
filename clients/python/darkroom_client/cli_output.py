"""What the `darkroom` CLI prints: JSON for scripts, aligned fields for people."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom_client import jobs
from darkroom_client.progress import queue_status


def say(message: str) -> None:
    """A line for the person at the terminal, on stderr."""
    print(f"darkroom: {message}", file=sys.stderr, flush=True)


def print_json(message: Message | dict[str, Any]) -> None:
    data = message if isinstance(message, dict) else json_format.MessageToDict(message)
    print(json.dumps(data), flush=True)


def when(job: job_pb2.Job, name: str) -> str:
    if not job.HasField(name):  # type: ignore[arg-type]
        return "-"
    stamp = getattr(job, name)
    text: str = stamp.ToDatetime().isoformat(timespec="seconds") + "Z"
    return text


def show_job(job: job_pb2.Job) -> None:
    spec = job.spec
    lines = [
        ("id", job.id),
        ("state", jobs.state_name(job.state) + (" (cancel requested)" * job.cancel_requested)),
        ("prompt", spec.prompt),
        ("size", f"{spec.width}x{spec.height}, {spec.num_images or 1} image(s)"),
        ("steps", f"{job.progress.step}/{spec.steps}"),
        ("seed", str(spec.seed)),
        ("model", spec.model),
        ("attempt", f"{job.attempt}/{job.max_attempts}"),
        ("created", when(job, "create_time")),
        ("ended", when(job, "end_time")),
    ]
    if spec.negative_prompt:
        lines.insert(3, ("negative", spec.negative_prompt))
    if job.HasField("queue"):
        lines.insert(2, ("queue", queue_status(job.queue, datetime.now(UTC))))
    if job.HasField("error"):
        lines.append(("error", f"{job.error.message} (code {job.error.code})"))
    lines += [(f"output {output.index}", output.uri) for output in job.outputs]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")


def show_models(models: list[jobs_service_pb2.ModelStatus]) -> None:
    """One line a model: its workers, its queue, its recent median run time."""
    print(f"{'MODEL':<24} {'WORKERS':>7} {'BUSY':>4} {'IDLE':>4} {'QUEUED':>7} {'RUNNING':>7}  RUN")
    for model in models:
        run = "-"
        if model.HasField("median_run_duration"):
            run = f"{model.median_run_duration.ToTimedelta().total_seconds():.1f}s"
        print(
            f"{model.model:<24} {len(model.workers):>7} {model.busy_workers:>4} "
            f"{model.idle_workers:>4} {model.queued_jobs:>7} {model.running_jobs:>7}  {run}"
        )
