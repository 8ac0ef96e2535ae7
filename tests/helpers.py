"""Test helpers: a caller with a token, and decoding of rich gRPC errors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from darkroom.spec import FIELDS as SPEC_FIELDS
from darkroom.spec import Spec
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc
from darkroom.validation import JobRequest

RUN_ID = uuid.uuid4().hex[:12]


def new_request_id() -> str:
    return str(uuid.uuid4())


def job_request(prompt: str = "a test job", **overrides: Any) -> JobRequest:
    """A validated job request, for tests that write rows straight through the store."""
    values: dict[str, Any] = {
        "request_id": uuid.uuid4(),
        "request_hash": "0" * 64,
        "prompt": prompt,
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 1.0,
        "seed": 1,
        "num_images": 1,
        "model": "tiny-sd",
        "priority": 0,
        "webhook": None,
        "queue_timeout": timedelta(hours=1),
    }
    values.update(overrides)
    spec = Spec(**{name: values.pop(name) for name in SPEC_FIELDS})
    return JobRequest(spec=spec, **values)


@dataclass
class Caller:
    """Calls the Jobs service as the owner of `token`."""

    stub: jobs_service_pb2_grpc.JobsServiceAsyncStub
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def submit(
        self,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        **spec: Any,
    ) -> jobs_service_pb2.SubmitJobResponse:
        spec.setdefault("prompt", "a lighthouse at dusk")
        request = jobs_service_pb2.SubmitJobRequest(
            request_id=request_id or new_request_id(), spec=job_pb2.JobSpec(**spec)
        )
        if queue_timeout is not None:
            request.queue_timeout.FromMilliseconds(int(queue_timeout * 1000))
        return await self.stub.SubmitJob(request, metadata=self.metadata, timeout=10)

    async def get(self, job_id: str) -> job_pb2.Job:
        request = jobs_service_pb2.GetJobRequest(job_id=job_id)
        response = await self.stub.GetJob(request, metadata=self.metadata, timeout=10)
        return response.job

    async def list(self, **fields: Any) -> jobs_service_pb2.ListJobsResponse:
        request = jobs_service_pb2.ListJobsRequest(**fields)
        return await self.stub.ListJobs(request, metadata=self.metadata, timeout=10)

    async def cancel(self, job_id: str) -> job_pb2.Job:
        request = jobs_service_pb2.CancelJobRequest(job_id=job_id)
        response = await self.stub.CancelJob(request, metadata=self.metadata, timeout=10)
        return response.job


@dataclass
class RichError:
    """A gRPC error with its `google.rpc` details decoded."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)
    quota: dict[str, str] = field(default_factory=dict)  # QuotaFailure: subject -> description
    retry_after: float | None = None  # RetryInfo, seconds


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Decode the status details the server attached to `error`."""
    status: status_pb2.Status | None = rpc_status.from_call(error)
    decoded = RichError(error.code(), error.details() or "")
    if status is None:
        return decoded
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            decoded.reason = info.reason
            decoded.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            decoded.violations = {v.field: v.description for v in bad_request.field_violations}
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            decoded.quota = {v.subject: v.description for v in failure.violations}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            decoded.retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return decoded
