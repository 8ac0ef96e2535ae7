"""Rows to `darkroom.v1` messages: the API is not the schema, so each mapping is tested."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from darkroom.convert import PROTO_TO_STATE, STATE_TO_PROTO, job_to_proto
from darkroom.models import JobRecord, State
from darkroom.v1 import job_pb2

CREATED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _row(**changes: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": uuid.UUID(int=7),
        "owner": "alice",
        "request_id": uuid.UUID(int=8),
        "prompt": "a fox",
        "negative_prompt": "",
        "width": 64,
        "height": 96,
        "steps": 4,
        "guidance_scale": 7.5,
        "seed": 3,
        "num_images": 1,
        "model": "tiny-sd",
        "priority": 0,
        "webhook": None,
        "state": State.QUEUED,
        "attempt": 0,
        "max_attempts": 3,
        "created_at": CREATED,
        "updated_at": CREATED,
        "deadline": CREATED + timedelta(hours=1),
        "started_at": None,
        "completed_at": None,
        "progress_step": 0,
        "progress_total": 0,
        "model_id": None,
        "model_version": None,
        "cancel_requested": False,
        "error_code": None,
        "error_message": None,
        "outputs": [],
    }
    values.update(changes)
    row: JobRecord = SimpleNamespace(**values)
    return row


def test_every_state_has_its_proto_value_and_back() -> None:
    assert set(STATE_TO_PROTO) == set(State)
    assert {PROTO_TO_STATE[value] for value in STATE_TO_PROTO.values()} == set(State)
    assert job_pb2.JOB_STATE_UNSPECIFIED not in PROTO_TO_STATE


def test_a_queued_job_has_no_times_it_has_not_reached_and_no_error() -> None:
    job = job_to_proto(_row())
    assert (job.id, job.owner, job.state) == (str(uuid.UUID(int=7)), "alice", 1)
    assert job.create_time.ToDatetime(UTC) == CREATED
    assert not job.HasField("start_time")
    assert not job.HasField("end_time")
    assert not job.HasField("error")
    assert (job.spec.width, job.spec.height, job.spec.seed) == (64, 96, 3)


def test_a_finished_job_carries_its_error_times_and_outputs_with_urls() -> None:
    ended = CREATED + timedelta(minutes=2)
    job = job_to_proto(
        _row(
            state=State.FAILED,
            started_at=CREATED + timedelta(minutes=1),
            completed_at=ended,
            error_code=14,
            error_message="worker lost",
            outputs=[
                {
                    "index": 0,
                    "uri": "gs://bucket/jobs/x/0.png",
                    "width": 64,
                    "height": 96,
                    "content_type": "image/png",
                    "sha256": "ab" * 32,
                    "seed": 3,
                }
            ],
        ),
        url_for=lambda uri: uri.replace("gs://", "https://signed.example/"),
    )
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.end_time.ToDatetime(UTC) == ended
    assert (job.error.code, job.error.message) == (14, "worker lost")
    [output] = job.outputs
    assert output.url == "https://signed.example/bucket/jobs/x/0.png"
    assert (output.seed, output.sha256) == (3, "ab" * 32)
