"""The final job a watch's last event carries, used instead of a GetJob while its output
URLs still work."""

from __future__ import annotations

import time

from darkroom.v1 import events_service_pb2, job_pb2
from darkroom_client import jobs
from darkroom_client.outputs import outputs_fetchable, url_expires_at


def _v4(signed_at: float, expires_s: int) -> str:
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
    return (
        "https://storage.googleapis.com/bucket/jobs/1/0.png?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        f"&X-Goog-Date={date}&X-Goog-Expires={expires_s}&X-Goog-Signature=abc"
    )


def test_signed_urls_say_when_they_expire() -> None:
    now = time.time()
    assert abs(url_expires_at(_v4(now, 3600)) - (int(now) + 3600)) <= 1  # type: ignore[operator]
    assert url_expires_at("https://example.test/a.png?Expires=1800000000&Signature=x") == 1.8e9
    assert url_expires_at("file:///tmp/a.png") == float("inf")
    assert url_expires_at("https://example.test/a.png?token=opaque") is None


def _succeeded(url: str) -> events_service_pb2.JobEvent:
    event = events_service_pb2.JobEvent(event_id="1-0", job_id="j")
    event.succeeded.job.id = "j"
    event.succeeded.job.state = job_pb2.JOB_STATE_SUCCEEDED
    event.succeeded.job.outputs.add(index=0, uri="gs://bucket/jobs/j/0.png", url=url)
    return event


def test_the_terminal_event_is_the_final_job_while_its_urls_work() -> None:
    now = time.time()
    fresh, stale = _succeeded(_v4(now, 3600)), _succeeded(_v4(now - 3590, 3600))
    assert jobs.final_job(fresh) == fresh.succeeded.job
    assert outputs_fetchable(fresh.succeeded.job)
    assert jobs.final_job(stale) is None  # expires within a minute: read the job again
    assert jobs.final_job(_succeeded("https://example.test/a.png?token=opaque")) is None
    progress = events_service_pb2.JobEvent(event_id="1-0", job_id="j")
    progress.progress.attempt = 1
    assert jobs.final_job(progress) is None
    assert jobs.final_job(None) is None
