"""`AsyncDarkroomClient`: the asyncio client of the Jobs and Events services.

Every call carries a deadline (`timeout` per attempt). Calls that are safe to repeat are
retried with exponential backoff and jitter: reads and submits (a submit always sends a
request id, chosen once per logical submit) on UNAVAILABLE and DEADLINE_EXCEEDED, cancels
on UNAVAILABLE. `watch` resumes by itself from the last event it yielded.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Self, Unpack

import grpc

from darkroom.v1 import (
    events_service_pb2,
    events_service_pb2_grpc,
    job_pb2,
    jobs_service_pb2,
    jobs_service_pb2_grpc,
)
from darkroom_client import jobs
from darkroom_client.channels import Stubs
from darkroom_client.defaults import (
    DEFAULT_EVENTS_TARGET,
    DEFAULT_JOBS_TARGET,
    DEFAULT_TIMEOUT,
    DEV_TOKEN,
    credentials_from_env,
    events_target_from_env,
    jobs_target_from_env,
    token_from_env,
)
from darkroom_client.errors import from_rpc_error
from darkroom_client.outputs import fetch_outputs
from darkroom_client.retry import (
    DEFAULT_RETRY,
    DEFAULT_WATCH_RETRY,
    IDEMPOTENT,
    UNAVAILABLE,
    RetryPolicy,
    with_retries,
)
from darkroom_client.watching import WatchCall, follow
from darkroom_client.webhooks import AsyncWebhooks

EventCallback = Callable[[events_service_pb2.JobEvent], object]
JobCallback = Callable[[job_pb2.Job], object]


class AsyncDarkroomClient:
    """Submit, read, cancel and watch Darkroom jobs from asyncio code.

    Channels open on first use, on the running event loop; close them with `close()` or
    `async with`. `timeout` is the deadline of each attempt of a unary call.
    """

    def __init__(
        self,
        jobs_target: str | None = None,
        events_target: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        watch_retry: RetryPolicy = DEFAULT_WATCH_RETRY,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.jobs_target = jobs_target or jobs_target_from_env()
        self.events_target = events_target or events_target_from_env()
        self.timeout = timeout
        self.retry = retry
        self.watch_retry = watch_retry
        self._metadata = (("authorization", f"Bearer {token or token_from_env()}"),)
        if credentials is None:
            credentials = credentials_from_env()
        self._stubs = Stubs(self.jobs_target, self.events_target, credentials, interceptors)

    @property
    def _jobs_stub(self) -> jobs_service_pb2_grpc.JobsServiceAsyncStub:
        return self._stubs.jobs

    @property
    def _events_stub(self) -> events_service_pb2_grpc.EventsServiceAsyncStub:
        return self._stubs.events

    @property
    def webhooks(self) -> AsyncWebhooks:
        """The caller's webhook endpoints, signing secret and delivery log."""
        return AsyncWebhooks(lambda: self._stubs.webhooks, self._metadata, self.timeout, self.retry)

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        await self._stubs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def submit(
        self,
        prompt: str,
        *,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
        **spec: Unpack[jobs.SpecFields],
    ) -> job_pb2.Job:
        """Submit a job and return it as recorded (QUEUED), without waiting for it.

        `request_id` (default: a new UUID) is sent on every retry, so a retried submit
        never creates a second job. `queue_timeout` is how many seconds the job may wait
        for a worker.
        """
        request = jobs_service_pb2.SubmitJobRequest(
            request_id=request_id or str(uuid.uuid4()), spec=jobs.build_spec(prompt, spec)
        )
        if queue_timeout is not None:
            request.queue_timeout.FromNanoseconds(round(queue_timeout * 1e9))
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> jobs_service_pb2.SubmitJobResponse:
            return await self._jobs_stub.SubmitJob(
                request, metadata=self._metadata, timeout=deadline
            )

        response = await with_retries(attempt, policy=self.retry, retry_on=IDEMPOTENT)
        return response.job

    async def get(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
    ) -> job_pb2.Job:
        """One of the caller's jobs."""
        request = jobs_service_pb2.GetJobRequest(job_id=job_id)
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> jobs_service_pb2.GetJobResponse:
            return await self._jobs_stub.GetJob(request, metadata=self._metadata, timeout=deadline)

        return (await with_retries(attempt, policy=self.retry, retry_on=IDEMPOTENT)).job

    async def list(
        self,
        *,
        state: jobs.JobStateValue | str | None = None,
        priority: int | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
    ) -> jobs_service_pb2.ListJobsResponse:
        """One page of the caller's jobs, newest first; pass `next_page_token` on for more.

        `state` filters by state: a `JobState` value or a name such as `"queued"`;
        `priority` by priority (-10 to 10).
        """
        request = jobs_service_pb2.ListJobsRequest(
            page_size=page_size, page_token=page_token, state=jobs.parse_state(state)
        )
        if priority is not None:
            request.priority = priority
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> jobs_service_pb2.ListJobsResponse:
            return await self._jobs_stub.ListJobs(
                request, metadata=self._metadata, timeout=deadline
            )

        return await with_retries(attempt, policy=self.retry, retry_on=IDEMPOTENT)

    async def list_models(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
    ) -> builtins.list[jobs_service_pb2.ModelStatus]:
        """Every model the server accepts: its live workers (busy, idle), queued and
        running jobs, and recent median run time."""
        request = jobs_service_pb2.ListModelsRequest()
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> jobs_service_pb2.ListModelsResponse:
            return await self._jobs_stub.ListModels(
                request, metadata=self._metadata, timeout=deadline
            )

        return list((await with_retries(attempt, policy=self.retry, retry_on=IDEMPOTENT)).models)

    async def cancel(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
    ) -> job_pb2.Job:
        """Cancel a job: QUEUED becomes CANCELLED, RUNNING gets `cancel_requested`.

        A finished job raises `FailedPrecondition`. Retried on UNAVAILABLE only; when a
        retry finds the job CANCELLED (the first attempt did it), the job is returned.
        """
        request = jobs_service_pb2.CancelJobRequest(job_id=job_id)
        deadline = self._deadline(timeout)

        async def attempt(number: int) -> job_pb2.Job:
            try:
                response = await self._jobs_stub.CancelJob(
                    request, metadata=self._metadata, timeout=deadline
                )
            except grpc.aio.AioRpcError as exc:
                if number > 0 and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    error = from_rpc_error(exc)
                    if error.metadata.get("state") == "CANCELLED":
                        return await self.get(job_id, timeout=timeout)
                raise
            return response.job

        return await with_retries(attempt, policy=self.retry, retry_on=UNAVAILABLE)

    async def watch(
        self,
        job_id: str,
        after_event_id: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - bounds every stream of the watch
    ) -> AsyncIterator[events_service_pb2.JobEvent]:
        """The job's events, from a snapshot (or after `after_event_id`) to its end.

        Stops after the terminal event, or a snapshot of a finished job. After
        UNAVAILABLE, a CANCELLED it did not ask for, or a dropped stream it resumes from
        the last event it received, with backoff; it never yields an event twice.
        `timeout` bounds the whole watch (default: none; each stream still carries a
        deadline and is resumed after it). The stream is read as it arrives, whatever
        your pace: if you fall behind, the progress events waiting for you collapse to
        the latest one, and every other event still comes, in order.
        """

        def open_stream(after: str, deadline: float) -> WatchCall:
            request = events_service_pb2.WatchJobRequest(job_id=job_id, after_event_id=after)
            return self._events_stub.WatchJob(request, metadata=self._metadata, timeout=deadline)

        async for event in follow(
            open_stream, job_id, after_event_id, timeout=timeout, retry=self.watch_retry
        ):
            yield event

    async def wait(self, job_id: str, *, on_event: EventCallback | None = None) -> job_pb2.Job:
        """Watch a job to its end (calling `on_event` with each event) and return it."""
        last = None
        async for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
            last = event
        # The last event carries the final job: read it again only when its output URLs
        # have (nearly) expired, as after a long watch of a job that ended long ago.
        return jobs.final_job(last) or await self.get(job_id)

    async def generate(
        self,
        prompt: str,
        *,
        on_event: EventCallback | None = None,
        on_submitted: JobCallback | None = None,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
        **spec: Unpack[jobs.SpecFields],
    ) -> jobs.GenerateResult:
        """Submit, watch to the end and fetch the images.

        Returns the final job and each output's PNG bytes; raises `JobFailed` or
        `JobCancelled` (with the final job) when the job does not succeed, and
        `OutputError` when an image cannot be fetched. `on_submitted` gets the job as soon
        as it is accepted (before it runs), `on_event` every event.
        `timeout` is the deadline of each unary call.
        """
        job = await self.submit(
            prompt, request_id=request_id, queue_timeout=queue_timeout, timeout=timeout, **spec
        )
        if on_submitted is not None:
            on_submitted(job)
        job = jobs.check_outcome(await self.wait(job.id, on_event=on_event))
        images = await asyncio.to_thread(fetch_outputs, job)
        return jobs.GenerateResult(job, images)


__all__ = [
    "DEFAULT_EVENTS_TARGET",
    "DEFAULT_JOBS_TARGET",
    "DEV_TOKEN",
    "AsyncDarkroomClient",
    "EventCallback",
    "JobCallback",
]
