"""Human-readable job events: one-line descriptions, a carriage-return progress bar for a
terminal, and plain status lines for everything else (a log, a pipe, CI)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import jobs


def bar(step: int, total: int, width: int = 24) -> str:
    """`[#########---------------] step 9/24`."""
    filled = width * step // total if total > 0 else 0
    return f"[{'#' * filled}{'-' * (width - filled)}] step {step}/{total}"


def _job_status(job: job_pb2.Job) -> str:
    if job.state == job_pb2.JOB_STATE_RUNNING and job.progress.total_steps:
        return bar(job.progress.step, job.progress.total_steps)
    if job.state == job_pb2.JOB_STATE_FAILED and job.error.message:
        return f"failed: {job.error.message}"
    return jobs.state_name(job.state)


def queue_status(queue: job_pb2.QueueStatus, now: datetime) -> str:
    """Where a queued job stands, in words: "queued behind 3 jobs, starts in about 40 s"."""
    text = queue.detail or "queued"
    if queue.HasField("estimated_start_time"):
        wait = (queue.estimated_start_time.ToDatetime(UTC) - now).total_seconds()
        text += f", starts in about {max(0, round(wait))} s"
    return text


def status(event: events_service_pb2.JobEvent) -> str:
    """What the job is doing after `event`, as a progress line shows it."""
    kind = event.WhichOneof("kind")
    if kind == "progress":
        progress = event.progress.progress
        return bar(progress.step, progress.total_steps)
    if kind == "queued":
        return "queued" if event.queued.attempt == 0 else "queued again"
    if kind == "started":
        return f"started (attempt {event.started.attempt})"
    if kind == "retrying":
        return f"retrying after attempt {event.retrying.attempt}: {event.retrying.reason}"
    if kind == "position":
        return queue_status(event.position.queue, event.time.ToDatetime(UTC))
    job = jobs.event_job(event)
    return _job_status(job) if job is not None else kind or "unknown event"


def describe(event: events_service_pb2.JobEvent) -> str:
    """One line for `darkroom watch`: event id, kind and what it says."""
    kind = event.WhichOneof("kind") or "unknown"
    return f"{event.event_id or '-'}\t{kind}\t{status(event)}"


class ProgressBar:
    """Rewrites one status line on `stream` for each event (use it as `on_event`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._width = 0

    def show(self, text: str) -> None:
        """Replace the current line with `text`."""
        padding = " " * max(0, self._width - len(text))
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self._width = len(text)

    def __call__(self, event: events_service_pb2.JobEvent) -> None:
        self.show(status(event))

    def finish(self, text: str | None = None) -> None:
        """Show `text` (if any) and end the line."""
        if text is not None:
            self.show(text)
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0


class StatusLines:
    """Writes a line to `stream` each time the job's status changes (use it as `on_event`).

    For output that is not a terminal, where a carriage-return bar would pile up."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = ""

    def __call__(self, event: events_service_pb2.JobEvent) -> None:
        self.show(status(event))

    def show(self, text: str) -> None:
        """Write `text` as a line, unless it is the line written last."""
        if text != self._last:
            self.stream.write(f"{text}\n")
            self.stream.flush()
            self._last = text

    def finish(self, text: str | None = None) -> None:
        """Write `text` (if any) as the last line."""
        if text is not None:
            self.show(text)


def reporter(stream: TextIO) -> ProgressBar | StatusLines:
    """A progress bar on a terminal, plain status lines elsewhere."""
    return ProgressBar(stream) if stream.isatty() else StatusLines(stream)
