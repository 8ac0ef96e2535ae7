"""Conversions between job rows and `darkroom.v1` messages: the API is not the schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from darkroom.models import JobRecord, State
from darkroom.spec import Spec
from darkroom.v1 import job_pb2

STATE_TO_PROTO = {
    State.QUEUED: job_pb2.JOB_STATE_QUEUED,
    State.RUNNING: job_pb2.JOB_STATE_RUNNING,
    State.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    State.FAILED: job_pb2.JOB_STATE_FAILED,
    State.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}
PROTO_TO_STATE = {value: key for key, value in STATE_TO_PROTO.items()}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def job_to_proto(row: JobRecord, url_for: Callable[[str], str] | None = None) -> job_pb2.Job:
    """The `Job` message for a row; `url_for` turns a storage URI into a fetchable URL."""
    job = job_pb2.Job(
        id=str(row.id),
        owner=row.owner,
        request_id=str(row.request_id),
        state=STATE_TO_PROTO[row.state],
        spec=Spec.of(row).to_proto(),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        deadline=timestamp(row.deadline),
        progress=job_pb2.JobProgress(step=row.progress_step, total_steps=row.progress_total),
        model_id=row.model_id or "",
        model_version=row.model_version or "",
        cancel_requested=row.cancel_requested,
    )
    if row.started_at is not None:
        job.start_time.CopyFrom(timestamp(row.started_at))
    if row.completed_at is not None:
        job.end_time.CopyFrom(timestamp(row.completed_at))
    if row.error_code is not None:
        job.error.CopyFrom(status_pb2.Status(code=row.error_code, message=row.error_message or ""))
    for output in row.outputs:
        uri = str(output["uri"])
        job.outputs.append(
            job_pb2.JobOutput(
                index=int(output["index"]),
                uri=uri,
                url=url_for(uri) if url_for is not None else "",
                width=int(output["width"]),
                height=int(output["height"]),
                content_type=str(output["content_type"]),
                sha256=str(output["sha256"]),
                seed=int(output["seed"]),
            )
        )
    return job
