"""A total-queue checker in the style of Jepsen's: what every fault test's history must hold.

lost: accepted but never terminal; phantom: a row nobody submitted; duplicate effect: a job
whose recorded outputs do not match one attempt's stored bytes, or with more than one
terminal event in its stream; a watcher that missed the terminal, or saw a gap (an event id
out of order, or a repeated one). Duplicate executions (more than one attempt started) are
reported only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis.asyncio

from darkroom import events
from darkroom.models import JobRow, State
from darkroom.store import JobStore
from darkroom.v1 import job_pb2

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


def _order(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@dataclass
class WatchRecord:
    """What one watcher (possibly over several reconnections) received for one job."""

    job_id: str
    events: list[events.JobEvent] = field(default_factory=list)

    def terminal_seen(self) -> bool:
        last = self.events[-1] if self.events else None
        if last is None:
            return False
        if last.WhichOneof("kind") in events.TERMINAL_KINDS:
            return True
        return last.HasField("snapshot") and last.snapshot.job.state in TERMINAL

    def gaps(self) -> int:
        """Events out of order or repeated; a snapshot restarts the count (it says where
        things stand)."""
        problems, previous = 0, None
        for event in self.events:
            if event.HasField("snapshot"):
                previous = event.event_id or None
                continue
            if event.HasField("position"):
                continue  # live-only: not in the log, no id of its own
            if previous is not None and not event.event_id:
                problems += 1  # every logged event has an id
                continue
            if previous is not None and _order(event.event_id) <= _order(previous):
                problems += 1
            previous = event.event_id
        return problems


@dataclass
class Verdict:
    lost: int = 0
    phantom: int = 0
    duplicate_effect: int = 0
    watcher_missed_terminal: int = 0
    watcher_gap: int = 0
    duplicate_executions: int = 0
    details: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        counts = (
            self.lost,
            self.phantom,
            self.duplicate_effect,
            self.watcher_missed_terminal,
            self.watcher_gap,
        )
        assert counts == (0, 0, 0, 0, 0), self


def _outputs_match(row: JobRow) -> bool:
    for output in row.outputs:
        uri = str(output["uri"])
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != output["sha256"]:
            return False
    return len(row.outputs) == (row.num_images if row.state == State.SUCCEEDED else 0)


async def check(
    *,
    accepted: Iterable[str],
    owner: str,
    store: JobStore,
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
    watchers: Iterable[WatchRecord] = (),
) -> Verdict:
    """Judge a history: the accepted job ids, the rows and event logs, the watchers."""
    verdict = Verdict()
    accepted_ids = set(accepted)
    owned = await store.list_owned(owner, state=None, before=None, limit=100_000)
    rows = {str(row.id): row for row in owned}
    for job_id in accepted_ids:
        row = rows.get(job_id)
        if row is None or not row.state.terminal:
            verdict.lost += 1
            verdict.details.append(f"lost {job_id}: {row.state if row else 'no row'}")
            continue
        if not _outputs_match(row):
            verdict.duplicate_effect += 1
            verdict.details.append(f"outputs of {job_id} do not match storage")
        entries = await events.EventLog(redis_client, key_prefix).read(job_id)
        logged = [event for _, event in entries]
        finals = [
            event.WhichOneof("kind")
            for event in logged
            if event.WhichOneof("kind") in events.TERMINAL_KINDS
        ]
        if len(finals) > 1:  # a stream holds at most one terminal event
            verdict.duplicate_effect += 1
            verdict.details.append(f"{job_id} logged {len(finals)} terminal events {finals}")
        started = sum(1 for event in logged if event.HasField("started"))
        verdict.duplicate_executions += max(started - 1, 0)
    verdict.phantom = len(set(rows) - accepted_ids)
    for record in watchers:
        if not record.terminal_seen():
            verdict.watcher_missed_terminal += 1
            verdict.details.append(f"watcher of {record.job_id} missed the terminal")
        verdict.watcher_gap += record.gaps()
    return verdict
