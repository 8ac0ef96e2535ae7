"""`AsyncDarkroomClient`: the asyncio client of the Jobs and Events services.

Every call carries a deadline (`timeout` per attempt). Calls that are safe to repeat are
retried with exponential backoff and jitter: reads and submits (a submit always sends a
request id, chosen once per logical submit) on UNAVAILABLE and DEADLINE_EXCEEDED, cancels
on UNAVAILABLE. `watch` resumes by itself from the last event it yielded.
"""

from __future__ import annotations

import asyncio
import os
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
from darkroom_client.errors import DeadlineExceeded, Unavailable, from_rpc_error
from darkroom_client.outputs import fetch_outputs
from darkroom_client.retry import (
    DEFAULT_RETRY,
    DEFAULT_WATCH_RETRY,
    IDEMPOTENT,
    UNAVAILABLE,
    RetryPolicy,
    with_retries,
)

DEFAULT_JOBS_TARGET = "localhost:50051"
DEFAULT_EVENTS_TARGET = "localhost:50052"
DEV_TOKEN = "darkroom-dev-token"  # noqa: S105 - the documented development token
DEFAULT_TIMEOUT = 10.0
# Each WatchJob stream carries this deadline; when it passes, the watch simply resumes.
WATCH_STREAM_DEADLINE = 300.0
# Reconnect soon after a server comes back, instead of gRPC's default 1 s to 2 min backoff.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)

EventCallback = Callable[[events_service_pb2.JobEvent], object]
JobCallback = Callable[[job_pb2.Job], object]


def jobs_target_from_env() -> str:
    """The Jobs address: `DARKROOM_JOBS_TARGET`, else `localhost:50051`."""
    return os.environ.get("DARKROOM_JOBS_TARGET") or DEFAULT_JOBS_TARGET


def events_target_from_env() -> str:
    """The Events address: `DARKROOM_EVENTS_TARGET`, else `localhost:50052`."""
    return os.environ.get("DARKROOM_EVENTS_TARGET") or DEFAULT_EVENTS_TARGET


def token_from_env() -> str:
    """The bearer token: `DARKROOM_TOKEN`, else the development token."""
    return os.environ.get("DARKROOM_TOKEN") or DEV_TOKEN


def _event_key(event_id: str) -> tuple[int, int] | None:
    """An event id (`1718000000000-0`) as a comparable pair; None when it is not one."""
    millis, _, sequence = event_id.partition("-")
    if not (millis.isdigit() and sequence.isdigit()):
        return None
    return int(millis), int(sequence)


class _Cursor:
    """Where a watch resumes, and which events it has already yielded."""

    def __init__(self, after_event_id: str) -> None:
        self.after = after_event_id
        self._seen = _event_key(after_event_id)

    def accept(self, event: events_service_pb2.JobEvent) -> bool:
        """Whether to yield `event` (False for a logged event yielded before); moves the
        cursor. A snapshot is always yielded and covers the events up to its id."""
        key = _event_key(event.event_id)
        if key is None:
            return True  # a snapshot taken while the event log is gone
        if self._seen is not None and key <= self._seen:
            return event.WhichOneof("kind") == "snapshot"
        self.after, self._seen = event.event_id, key
        return True


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
        self._credentials = credentials
        self._interceptors = list(interceptors)
        self._channels: list[grpc.aio.Channel] = []
        self._jobs: jobs_service_pb2_grpc.JobsServiceAsyncStub | None = None
        self._events: events_service_pb2_grpc.EventsServiceAsyncStub | None = None

    def _channel(self, target: str) -> grpc.aio.Channel:
        options = list(CHANNEL_OPTIONS)
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options, interceptors=self._interceptors)
        else:
            channel = grpc.aio.secure_channel(
                target, self._credentials, options, interceptors=self._interceptors
            )
        self._channels.append(channel)
        return channel

    @property
    def _jobs_stub(self) -> jobs_service_pb2_grpc.JobsServiceAsyncStub:
        if self._jobs is None:
            self._jobs = jobs_service_pb2_grpc.JobsServiceStub(self._channel(self.jobs_target))
        return self._jobs

    @property
    def _events_stub(self) -> events_service_pb2_grpc.EventsServiceAsyncStub:
        if self._events is None:
            channel = self._channel(self.events_target)
            self._events = events_service_pb2_grpc.EventsServiceStub(channel)
        return self._events

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        channels, self._channels = self._channels, []
        self._jobs = self._events = None
        for channel in channels:
            await channel.close()

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
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline
    ) -> jobs_service_pb2.ListJobsResponse:
        """One page of the caller's jobs, newest first; pass `next_page_token` on for more.

        `state` filters by state: a `JobState` value or a name such as `"queued"`.
        """
        request = jobs_service_pb2.ListJobsRequest(
            page_size=page_size, page_token=page_token, state=jobs.parse_state(state)
        )
        deadline = self._deadline(timeout)

        async def attempt(_: int) -> jobs_service_pb2.ListJobsResponse:
            return await self._jobs_stub.ListJobs(
                request, metadata=self._metadata, timeout=deadline
            )

        return await with_retries(attempt, policy=self.retry, retry_on=IDEMPOTENT)

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
        UNAVAILABLE or a dropped stream it resumes from the last event it yielded, with
        backoff; it never yields an event twice. `timeout` bounds the whole watch
        (default: none; each stream still carries a deadline and is resumed after it).
        """
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        cursor = _Cursor(after_event_id)
        failures = 0
        while True:
            stream_deadline = WATCH_STREAM_DEADLINE
            if end is not None:
                stream_deadline = min(stream_deadline, end - loop.time())
                if stream_deadline <= 0:
                    raise DeadlineExceeded(f"job {job_id} did not end within {timeout:g} s")
            started = loop.time()
            call = self._events_stub.WatchJob(
                events_service_pb2.WatchJobRequest(job_id=job_id, after_event_id=cursor.after),
                metadata=self._metadata,
                timeout=stream_deadline,
            )
            error: grpc.aio.AioRpcError | None = None
            try:
                async for response in call:
                    failures = 0
                    if not cursor.accept(response.event):
                        continue
                    yield response.event
                    if jobs.ends_watch(response.event):
                        return
            except grpc.aio.AioRpcError as exc:
                error = exc
            finally:
                call.cancel()
            if (
                error is not None
                and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and loop.time() - started >= stream_deadline * 0.9
            ):
                continue  # this stream's deadline passed: open the next (or end, above)
            failures += 1
            await asyncio.sleep(self._resume_delay(job_id, error, failures))

    def _resume_delay(
        self, job_id: str, error: grpc.aio.AioRpcError | None, failures: int
    ) -> float:
        """How long to wait before resuming a watch whose stream ended with `error` (None:
        closed before the job ended); raises when that cannot be resumed, or too often."""
        if error is not None and (
            error.code() not in IDEMPOTENT or failures >= self.watch_retry.max_attempts
        ):
            raise from_rpc_error(error) from error
        if failures >= self.watch_retry.max_attempts:
            raise Unavailable(f"the watch of job {job_id} kept closing before the job ended")
        return self.watch_retry.backoff(failures - 1)

    async def wait(self, job_id: str, *, on_event: EventCallback | None = None) -> job_pb2.Job:
        """Watch a job to its end (calling `on_event` with each event) and return it."""
        async for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
        # Read the row: the terminal event's output URLs may have expired by now.
        return await self.get(job_id)

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
