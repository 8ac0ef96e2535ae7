"""Retries with exponential backoff and jitter, for calls that are safe to repeat."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from darkroom_client.errors import from_rpc_error

T = TypeVar("T")

UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Reads change nothing, and a submit carries its request id: a repeat is always safe,
# even when the first attempt may have reached the server before its deadline.
IDEMPOTENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    `max_attempts` counts the first try. The delay before retry `n` (from 0) is drawn
    between half and all of `min(max_backoff, initial_backoff * multiplier**n)` seconds.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative and multiplier at least 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not cryptography


DEFAULT_RETRY = RetryPolicy()
# Watches resume with more patience: an Events replica restarting takes a few seconds.
DEFAULT_WATCH_RETRY = RetryPolicy(max_attempts=12)


async def with_retries(
    attempt: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retry_on: frozenset[grpc.StatusCode],
) -> T:
    """Run `attempt(n)` for n = 0, 1, … until it succeeds, retrying only gRPC errors whose
    code is in `retry_on`; the last error is raised as a typed `DarkroomError`."""
    number = 0
    while True:
        try:
            return await attempt(number)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in retry_on or number + 1 >= policy.max_attempts:
                raise from_rpc_error(exc) from exc
        await asyncio.sleep(policy.backoff(number))
        number += 1
