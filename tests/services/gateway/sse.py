"""Reading a `text/event-stream` as a browser does: events, their ids, and comments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Sse:
    """One server-sent event; `id` is None when it had no `id:` line."""

    event: str
    data: dict[str, Any]
    id: str | None
    retry: int | None = None

    @property
    def ends(self) -> bool:
        if self.event in TERMINAL:
            return True
        job = self.data.get("snapshot", {}).get("job", {})
        return (
            self.event == "snapshot"
            and job.get("state", "").removeprefix("JOB_STATE_").lower() in TERMINAL
        )


@dataclass
class Reading:
    """What a stream sent so far."""

    events: list[Sse] = field(default_factory=list)
    comments: int = 0

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events if e.id is not None and e.event != "snapshot"]


async def events(response: httpx.Response, reading: Reading) -> AsyncIterator[Sse]:
    """The events of a stream as they come (comments are counted in `reading`)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            reading.comments += 1
            continue
        if line == "":
            if "data" in fields:
                sse = Sse(
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                    fields.get("id"),
                    int(fields["retry"]) if "retry" in fields else None,
                )
                reading.events.append(sse)
                yield sse
            fields = {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
