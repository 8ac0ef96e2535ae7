"""Every Redis key Darkroom writes, named in one place.

All of them start with the deployment's `DARKROOM_KEY_PREFIX`, so several deployments (or
test runs) share one Redis without meeting. arq's own keys for a queue message
(`arq:job:…`, `arq:in-progress:…`) are arq's business: `darkroom.queue` names those.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The keys of one deployment, under `prefix`."""

    prefix: str

    def events(self, job_id: uuid.UUID | str) -> str:
        """The stream of one job's events (see `darkroom.events`)."""
        return f"{self.prefix}:job:{job_id}:events"

    def ended(self, job_id: uuid.UUID | str) -> str:
        """Set when a job's terminal event is appended to its stream: from then on the
        stream takes no more events, so it never holds two terminal events."""
        return f"{self.prefix}:job:{job_id}:ended"

    @property
    def notify_channel(self) -> str:
        """The pub/sub channel that carries the id of every job that has a new event.

        Events services subscribe once per process and then read only the streams of the
        jobs they watch, so the cost of an event does not grow with the number of watchers.
        """
        return f"{self.prefix}:events"

    def alive(self, token: str) -> str:
        """A key only one Events process writes: when it vanishes, Redis lost its data."""
        return f"{self.notify_channel}:alive:{token}"

    def queue(self, model: str) -> str:
        """The queue of one model (an arq sorted set): each generator serves one model."""
        return f"{self.prefix}:queue:{model}"

    @staticmethod
    def wake(queue: str) -> str:
        """The wake-up list of a queue: each enqueue pushes a token, and an idle generator
        blocks on it (BLPOP) instead of polling. Tokens are capped and expire: nobody may
        be listening."""
        return f"{queue}:wake"

    @staticmethod
    def deliveries(queue: str) -> str:
        """How often each message of a queue was taken without finishing (a hash: message
        id -> count): a message taken too often is poison and is set aside."""
        return f"{queue}:deliveries"

    @staticmethod
    def dead_letter(queue: str) -> str:
        """The messages set aside from a queue (a hash: message id -> JSON with the reason,
        the time and the message), never retried; an operator reads them."""
        return f"{queue}:dead"

    def message_id(self, job_id: uuid.UUID | str, attempt: int) -> str:
        """The queue message id of one attempt: one per attempt, so a finished attempt
        never blocks the next one in arq."""
        return f"{self.prefix}:{job_id}:{attempt}"

    @property
    def everything(self) -> list[str]:
        """Patterns that match every key of this deployment, arq's included (for tests)."""
        return [f"{self.prefix}*", f"arq:*:{self.prefix}*"]
