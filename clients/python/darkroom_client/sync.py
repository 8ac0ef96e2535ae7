"""`DarkroomClient`: the blocking client.

It drives an `AsyncDarkroomClient` on a private event loop in a background thread, so both
clients share one implementation of deadlines, retries and watch resumption. Callbacks
and iteration happen on the caller's thread.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc

from darkroom.v1 import events_service_pb2, job_pb2, jobs_service_pb2
from darkroom_client import jobs
from darkroom_client.aio import AsyncDarkroomClient, EventCallback, JobCallback
from darkroom_client.defaults import DEFAULT_TIMEOUT
from darkroom_client.outputs import fetch_outputs
from darkroom_client.retry import DEFAULT_RETRY, DEFAULT_WATCH_RETRY, RetryPolicy
from darkroom_client.sync_webhooks import Webhooks

T = TypeVar("T")


async def _next(iterator: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await anext(iterator)
    except StopAsyncIteration:
        return False, None


class DarkroomClient:
    """Submit, read, cancel and watch Darkroom jobs from blocking code.

    Same arguments and methods as `AsyncDarkroomClient`, without `await`. Close it with
    `close()` or a `with` block; it is safe to use from several threads.
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
        self._client = AsyncDarkroomClient(
            jobs_target,
            events_target,
            token=token,
            timeout=timeout,
            retry=retry,
            watch_retry=watch_retry,
            credentials=credentials,
            interceptors=interceptors,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="darkroom-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def jobs_target(self) -> str:
        return self._client.jobs_target

    @property
    def events_target(self) -> str:
        return self._client.events_target

    @property
    def webhooks(self) -> Webhooks:
        """The caller's webhook endpoints, signing secret and delivery log."""
        return Webhooks(self._client.webhooks, self._run)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting
            raise

    def close(self) -> None:
        """Close the channels and stop the client's thread."""
        if self._closed:
            return
        self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        prompt: str,
        *,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        timeout: float | None = None,
        **spec: Unpack[jobs.SpecFields],
    ) -> job_pb2.Job:
        """See `AsyncDarkroomClient.submit`."""
        return self._run(
            self._client.submit(
                prompt,
                request_id=request_id,
                queue_timeout=queue_timeout,
                timeout=timeout,
                **spec,
            )
        )

    def get(self, job_id: str, *, timeout: float | None = None) -> job_pb2.Job:
        """See `AsyncDarkroomClient.get`."""
        return self._run(self._client.get(job_id, timeout=timeout))

    def list(
        self,
        *,
        state: jobs.JobStateValue | str | None = None,
        priority: int | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> jobs_service_pb2.ListJobsResponse:
        """See `AsyncDarkroomClient.list`."""
        return self._run(
            self._client.list(
                state=state,
                priority=priority,
                page_size=page_size,
                page_token=page_token,
                timeout=timeout,
            )
        )

    def list_models(
        self, *, timeout: float | None = None
    ) -> builtins.list[jobs_service_pb2.ModelStatus]:
        """See `AsyncDarkroomClient.list_models`."""
        return self._run(self._client.list_models(timeout=timeout))

    def cancel(self, job_id: str, *, timeout: float | None = None) -> job_pb2.Job:
        """See `AsyncDarkroomClient.cancel`."""
        return self._run(self._client.cancel(job_id, timeout=timeout))

    def watch(
        self, job_id: str, after_event_id: str = "", *, timeout: float | None = None
    ) -> Iterator[events_service_pb2.JobEvent]:
        """See `AsyncDarkroomClient.watch`. Closing the iterator ends the stream."""
        events = self._client.watch(job_id, after_event_id, timeout=timeout)
        try:
            while True:
                more, event = self._run(_next(events))
                if not more or event is None:
                    return
                yield event
        finally:
            if isinstance(events, AsyncGenerator) and not self._closed:
                self._run(events.aclose())

    def wait(self, job_id: str, *, on_event: EventCallback | None = None) -> job_pb2.Job:
        """See `AsyncDarkroomClient.wait`."""
        last = None
        for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
            last = event
        return jobs.final_job(last) or self.get(job_id)

    def generate(
        self,
        prompt: str,
        *,
        on_event: EventCallback | None = None,
        on_submitted: JobCallback | None = None,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        timeout: float | None = None,
        **spec: Unpack[jobs.SpecFields],
    ) -> jobs.GenerateResult:
        """See `AsyncDarkroomClient.generate`; the callbacks run on the caller's thread."""
        job = self.submit(
            prompt, request_id=request_id, queue_timeout=queue_timeout, timeout=timeout, **spec
        )
        if on_submitted is not None:
            on_submitted(job)
        job = jobs.check_outcome(self.wait(job.id, on_event=on_event))
        return jobs.GenerateResult(job, fetch_outputs(job))
