"""The client's channels and stubs: opened on first use, on the running event loop."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from darkroom.v1 import events_service_pb2_grpc, jobs_service_pb2_grpc, webhooks_service_pb2_grpc
from darkroom_client.defaults import CHANNEL_OPTIONS


class Stubs:
    """The Jobs and Events stubs over channels of their own, with the client's options."""

    def __init__(
        self,
        jobs_target: str,
        events_target: str,
        credentials: grpc.ChannelCredentials | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor],
    ) -> None:
        self._targets = (jobs_target, events_target)
        self._credentials = credentials
        self._interceptors = list(interceptors)
        self._channels: list[grpc.aio.Channel] = []
        self._jobs: jobs_service_pb2_grpc.JobsServiceAsyncStub | None = None
        self._events: events_service_pb2_grpc.EventsServiceAsyncStub | None = None
        self._webhooks: webhooks_service_pb2_grpc.WebhooksServiceAsyncStub | None = None
        self._jobs_opened: grpc.aio.Channel | None = None

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

    def _jobs_channel(self) -> grpc.aio.Channel:
        """The Jobs target's one channel (JobsService and WebhooksService share it)."""
        if self._jobs_opened is None:
            self._jobs_opened = self._channel(self._targets[0])
        return self._jobs_opened

    @property
    def jobs(self) -> jobs_service_pb2_grpc.JobsServiceAsyncStub:
        """The JobsService stub (its channel opens now, the first time)."""
        if self._jobs is None:
            self._jobs = jobs_service_pb2_grpc.JobsServiceStub(self._jobs_channel())
        return self._jobs

    @property
    def events(self) -> events_service_pb2_grpc.EventsServiceAsyncStub:
        """The EventsService stub (its channel opens now, the first time)."""
        if self._events is None:
            channel = self._channel(self._targets[1])
            self._events = events_service_pb2_grpc.EventsServiceStub(channel)
        return self._events

    @property
    def webhooks(self) -> webhooks_service_pb2_grpc.WebhooksServiceAsyncStub:
        """The WebhooksService stub, on the Jobs channel."""
        if self._webhooks is None:
            self._webhooks = webhooks_service_pb2_grpc.WebhooksServiceStub(self._jobs_channel())
        return self._webhooks

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled); stubs reopen on next use."""
        channels, self._channels = self._channels, []
        self._jobs = self._events = None
        self._webhooks = None
        self._jobs_opened = None
        for channel in channels:
            await channel.close()
