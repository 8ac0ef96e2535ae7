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

    # -- fair share (see `darkroom.scheduling`): beside each queue, its owners' turns --

    @staticmethod
    def turns(queue: str) -> str:
        """The owners with work in a queue, by virtual time (a sorted set): the owner with
        the lowest goes next, and each start moves it on by 1 / its weight."""
        return f"{queue}:turns"

    @staticmethod
    def clock(queue: str) -> str:
        """A queue's virtual clock: the virtual time of the last owner served. An owner
        that comes (back) with work starts from it, so waiting banks no turns."""
        return f"{queue}:clock"

    @staticmethod
    def owner_line(queue: str, owner: str) -> str:
        """One owner's messages in a queue that wait (no worker holds them), in the order
        they start (a sorted set: priority, then age)."""
        return f"{Keys.owner_lines(queue)}{owner}"

    @staticmethod
    def owner_lines(queue: str) -> str:
        """The prefix of a queue's owner lines (the take script builds their names)."""
        return f"{queue}:owner:"

    @staticmethod
    def message_owners(queue: str) -> str:
        """Whose each message of a queue is, and its place in its owner's line (a hash:
        message id -> "order owner")."""
        return f"{queue}:owners"

    @staticmethod
    def sleeping(queue: str) -> str:
        """Owners of a queue whose waiting messages are all backing off (a sorted set:
        owner -> when the soonest is due, ms), out of the turns until then."""
        return f"{queue}:sleeping"

    @staticmethod
    def parked(queue: str) -> str:
        """Owners of a queue at their running limit (a sorted set: owner -> its virtual
        time), out of the turns until one of their jobs ends."""
        return f"{queue}:parked"

    @property
    def policies(self) -> str:
        """Each owner's weight and running limit, as the take script reads them (a hash:
        owner -> "weight max_running"), written by every enqueue."""
        return f"{self.prefix}:policies"

    def running(self, owner: str) -> str:
        """The messages an owner's workers hold, over every model (a sorted set: message
        id -> when the hold ends, ms), counted against its running limit."""
        return f"{self.running_prefix}{owner}"

    @property
    def running_prefix(self) -> str:
        return f"{self.prefix}:running:"

    @property
    def queues_intact(self) -> str:
        """Written by the reconciler once it has enqueued every queued row: when it is
        missing, Redis lost the queues and the reconciler rebuilds them whole."""
        return f"{self.prefix}:queues-intact"

    # -- admission (see `darkroom.admission`) --

    def submit_bucket(self, owner: str) -> str:
        """An owner's submit token bucket (a hash: tokens, last refill ms)."""
        return f"{self.prefix}:bucket:{owner}"

    def watches(self, owner: str) -> str:
        """An owner's open WatchJob streams (a hash: Events process token -> count); a
        process's count stops counting when its `alive` key vanishes."""
        return f"{self.prefix}:watches:{owner}"

    # -- capacity (see `darkroom.capacity`) --

    def workers(self, model: str) -> str:
        """The workers serving a model (a sorted set: worker id -> when its registration
        expires, ms)."""
        return f"{self.prefix}:workers:{model}"

    def worker(self, worker_id: str) -> str:
        """One worker's registration (JSON), expiring unless renewed."""
        return f"{self.prefix}:worker:{worker_id}"

    def run_times(self, model: str) -> str:
        """The run times of a model's recent successful attempts (a list of ms, newest first)."""
        return f"{self.prefix}:run-times:{model}"

    def message_id(self, job_id: uuid.UUID | str, attempt: int) -> str:
        """The queue message id of one attempt: one per attempt, so a finished attempt
        never blocks the next one in arq."""
        return f"{self.prefix}:{job_id}:{attempt}"

    @property
    def everything(self) -> list[str]:
        """Patterns that match every key of this deployment, arq's included (for tests)."""
        return [f"{self.prefix}*", f"arq:*:{self.prefix}*"]
