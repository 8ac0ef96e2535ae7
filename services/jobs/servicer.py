"""`darkroom.v1.JobsService`: submit, get, list and cancel jobs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import redis.exceptions
import structlog

from darkroom import db, tracing
from darkroom.admission import SubmitAdmission
from darkroom.auth import Authenticator
from darkroom.config import Settings
from darkroom.convert import PROTO_TO_STATE
from darkroom.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    ModelNotServedError,
    NotFoundError,
    QuotaExceededError,
    UnavailableError,
)
from darkroom.lifecycle import Lifecycle
from darkroom.models import JobRecord, State
from darkroom.positions import QueuedJob, QueueView
from darkroom.rpc import unary
from darkroom.services.jobs.submits import SubmitBatcher
from darkroom.v1 import job_pb2, jobs_service_pb2, jobs_service_pb2_grpc
from darkroom.validation import JobRequest, parse_uuid, priority_violations, validate_submit

log = structlog.get_logger("darkroom.jobs")

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1_000
# Our tokens are about 90 characters; anything much longer is not one, and is not parsed.
PAGE_TOKEN_MAX_CHARS = 256


def _job_id(value: str) -> uuid.UUID:
    job_id, violations = parse_uuid("job_id", value)
    if job_id is None:
        raise InvalidArgumentError("the job id is invalid", violations)
    return job_id


class JobsServicer(jobs_service_pb2_grpc.JobsServiceServicer):
    """Handlers of the JobsService RPCs, scoped to the authenticated owner.

    Every RPC answers within `settings.request_bound`, whatever Postgres and Redis do:
    reads are `bounded` by the database timeout, a cancel by the whole bound (its row,
    then its event), a submit by the `SubmitBatcher` (its row, then its announce).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: Lifecycle,
        submits: SubmitBatcher,
        authenticator: Authenticator,
        admission: SubmitAdmission,
        queue_view: QueueView,
    ) -> None:
        self.admission = admission
        self.queue_view = queue_view
        self.settings = settings
        self.lifecycle = lifecycle
        self.store = lifecycle.store
        self.submits = submits
        self.authenticator = authenticator
        self._read_timeout = settings.database_timeout.total_seconds()
        self._cancel_timeout = settings.request_bound.total_seconds()

    def _proto(self, row: JobRecord) -> job_pb2.Job:
        return self.lifecycle.job(row)

    async def _bounded(self, work: Awaitable[T], seconds: float) -> T:
        """`work`, or UNAVAILABLE once it has taken `seconds` (see `db.bounded`)."""
        try:
            return await db.bounded(work, seconds)
        except TimeoutError as exc:
            raise UnavailableError(str(exc)) from exc

    async def _admit(self, owner: str, job: JobRequest) -> None:
        """Refuse a submit over a quota, or for a model nobody serves when so configured;
        a retry of a submit already recorded is let through, to be replayed."""
        model = job.spec.model
        if self.settings.refuse_unserved_models and not await self._served(model):
            raise ModelNotServedError(
                f"no worker serves model {model} now; try again when one does",
                metadata={"model": model},
            )
        try:
            await self.admission.admit(owner, model)
        except QuotaExceededError as refusal:
            if refusal.limit == "submit_rate":
                raise
            replay = self.store.submitted(owner, job.request_id)
            if not await self._bounded(replay, self._read_timeout):
                raise

    async def _served(self, model: str) -> bool:
        try:
            async with asyncio.timeout(self.settings.enqueue_timeout.total_seconds()):
                return bool((await self.queue_view.model_capacity(model)).workers)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("capacity_unknown", model=model, error=repr(exc))
            return True  # the registry is a cache: do not refuse work because it is down

    async def _with_queue(self, row: JobRecord) -> job_pb2.Job:
        """The job's message, with where it stands in its queue when it is QUEUED (left
        unset when Redis cannot say in time)."""
        job = self._proto(row)
        if row.state != State.QUEUED:
            return job
        try:
            async with asyncio.timeout(self.settings.enqueue_timeout.total_seconds()):
                job.queue.CopyFrom(await self.queue_view.status(QueuedJob.of(row)))
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("queue_status_unknown", error=repr(exc))
        return job

    @unary("SubmitJob")
    async def SubmitJob(
        self, request: jobs_service_pb2.SubmitJobRequest, context: Context, owner: str
    ) -> jobs_service_pb2.SubmitJobResponse:
        job = validate_submit(request, self.settings)
        if tracing.enabled() and (parent := tracing.traceparent()) is not None:
            job = dataclasses.replace(job, traceparent=parent)
        await self._admit(owner, job)
        row, created = await self.submits.submit(owner, job)
        structlog.contextvars.bind_contextvars(job_id=str(row.id))
        if not created and row.request_hash != job.request_hash:
            raise AlreadyExistsError(
                f"request_id {job.request_id} was already used for a different request",
                metadata={"job_id": str(row.id)},
            )
        return jobs_service_pb2.SubmitJobResponse(job=self._proto(row), replayed=not created)

    @unary("GetJob")
    async def GetJob(
        self, request: jobs_service_pb2.GetJobRequest, context: Context, owner: str
    ) -> jobs_service_pb2.GetJobResponse:
        job_id = _job_id(request.job_id)
        structlog.contextvars.bind_contextvars(job_id=str(job_id))
        row = await self._bounded(self.store.get(owner, job_id), self._read_timeout)
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        return jobs_service_pb2.GetJobResponse(job=await self._with_queue(row))

    @unary("ListJobs")
    async def ListJobs(
        self, request: jobs_service_pb2.ListJobsRequest, context: Context, owner: str
    ) -> jobs_service_pb2.ListJobsResponse:
        violations = []
        if request.page_size < 0:
            violations.append(FieldViolation("page_size", "must not be negative"))
        if request.state and request.state not in PROTO_TO_STATE:
            violations.append(FieldViolation("state", f"unknown job state {request.state}"))
        priority = request.priority if request.HasField("priority") else None
        if priority is not None:
            violations += priority_violations("priority", priority)
        before = None
        if request.page_token:
            before = _decode_page_token(request.page_token, request.state, priority)
            if before is None:
                violations.append(
                    FieldViolation(
                        "page_token",
                        "is not a token from a previous ListJobs with the same filter",
                    )
                )
        if violations:
            raise InvalidArgumentError("the list request is invalid", violations)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        state = PROTO_TO_STATE.get(request.state)
        rows = await self._bounded(
            self.store.list_owned(
                owner, state=state, before=before, limit=page_size + 1, priority=priority
            ),
            self._read_timeout,
        )
        response = jobs_service_pb2.ListJobsResponse(
            jobs=[self._proto(row) for row in rows[:page_size]]
        )
        if len(rows) > page_size:
            response.next_page_token = _encode_page_token(
                rows[page_size - 1].id, request.state, priority
            )
        return response

    @unary("ListModels")
    async def ListModels(
        self, request: jobs_service_pb2.ListModelsRequest, context: Context, owner: str
    ) -> jobs_service_pb2.ListModelsResponse:
        counts = await self._bounded(self.store.active_counts(), self._read_timeout)
        models = self.settings.models
        try:  # fresh reads, not the positions' cached ones; all within one Redis timeout
            async with asyncio.timeout(self.settings.enqueue_timeout.total_seconds()):
                capacities = await asyncio.gather(
                    *(self.queue_view.read_capacity(model) for model in models)
                )
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise UnavailableError("the worker registry is unavailable") from exc
        response = jobs_service_pb2.ListModelsResponse()
        for model, capacity in zip(models, capacities, strict=True):
            queued, running = counts.get(model, (0, 0))
            status = response.models.add(model=model, queued_jobs=queued, running_jobs=running)
            for worker in capacity.workers:
                entry = status.workers.add(worker_id=worker.worker_id, busy=worker.busy)
                entry.start_time.FromSeconds(int(worker.started_at))
                entry.heartbeat_time.FromSeconds(int(worker.heartbeat_at))
                if worker.job_started_at is not None:
                    entry.job_start_time.FromSeconds(int(worker.job_started_at))
            status.busy_workers = sum(worker.busy for worker in capacity.workers)
            status.idle_workers = len(capacity.workers) - status.busy_workers
            if capacity.median_run is not None:
                status.median_run_duration.FromTimedelta(capacity.median_run)
        return response

    @unary("CancelJob")
    async def CancelJob(
        self, request: jobs_service_pb2.CancelJobRequest, context: Context, owner: str
    ) -> jobs_service_pb2.CancelJobResponse:
        job_id = _job_id(request.job_id)
        structlog.contextvars.bind_contextvars(job_id=str(job_id))
        row, changed = await self._bounded(
            self.lifecycle.cancel(owner, job_id), self._cancel_timeout
        )
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        if not changed:
            raise FailedPreconditionError(
                f"job {job_id} is already {row.state} and cannot be cancelled",
                metadata={"state": str(row.state)},
            )
        return jobs_service_pb2.CancelJobResponse(job=self._proto(row))


def _encode_page_token(last_id: uuid.UUID, state: int, priority: int | None) -> str:
    values: dict[str, Any] = {"before": str(last_id), "state": state}
    if priority is not None:
        values["priority"] = priority
    payload = json.dumps(values, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_page_token(token: str, state: int, priority: int | None) -> uuid.UUID | None:
    """The id a page starts before, or None when the token is not one `_encode_page_token`
    wrote for `state` and `priority` (whatever else it decodes to)."""
    if len(token) > PAGE_TOKEN_MAX_CHARS:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload: Any = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8 or bad JSON
        return None
    expected = {"before", "state"} | ({"priority"} if priority is not None else set())
    if not isinstance(payload, dict) or payload.keys() != expected:
        return None
    if priority is not None and (
        type(payload["priority"]) is not int or payload["priority"] != priority
    ):
        return None
    # `type` rather than isinstance: JSON's true is not state 1.
    if type(payload["state"]) is not int or payload["state"] != state:
        return None
    before = payload["before"]
    return parse_uuid("page_token", before)[0] if isinstance(before, str) else None
