"""`python -m tests.fake_generator [PACE] [FAULT]`: a real Generator process on the fake pipeline.

For the fault suite, the stack test and the bench: the seams are this module's arguments,
never settings of a deployed generator. PACE is the fake pipeline's query, as
`step_ms=20` or `step_ms=5&fail=raise` (see `FakePipeline`), plus two keys for its
storage: `upload_ms=N` makes every upload take N ms more, and `upload_fail=K` makes the
first K uploads fail after that time (as a storage service that keeps answering 503s).
FAULT is a fault point (`after_upload`, `after_commit`) at which the process ends with
status 137, as if killed. Everything else comes from the `DARKROOM_*` settings, as for
`darkroom-generator`.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs

from google.api_core import exceptions as google_errors

from darkroom import process
from darkroom.config import Settings
from darkroom.services.generator.faults import Faults, KillAt
from darkroom.services.generator.pipeline import FakePipeline
from darkroom.services.generator.worker import Generator, start
from darkroom.storage import Storage

FAULT_POINTS = ("after_upload", "after_commit")


class SlowStorage:
    """Storage whose uploads take `delay_s` longer, the first `failures` of them failing."""

    def __init__(self, inner: Storage, delay_s: float, failures: int) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._failures = failures

    async def _slow(self) -> None:
        await asyncio.sleep(self._delay_s)
        if self._failures > 0:
            self._failures -= 1
            raise google_errors.ServiceUnavailable("the storage service is unavailable")

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        await self._slow()
        return await self._inner.create(key, data, content_type)

    async def replace(self, key: str, data: bytes, content_type: str, generation: str) -> str:
        await self._slow()
        return await self._inner.replace(key, data, content_type, generation)

    async def read(self, uri: str) -> bytes:
        return await self._inner.read(uri)

    async def delete(self, uri: str) -> None:
        await self._inner.delete(uri)

    def url_for(self, uri: str) -> str:
        return self._inner.url_for(uri)


def main(argv: list[str]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] not in FAULT_POINTS):
        print(f"usage: python -m tests.fake_generator [PACE] [{'|'.join(FAULT_POINTS)}]")
        raise SystemExit(2)
    pace = argv[0] if argv else ""
    query = parse_qs(pace)
    delay_s = float(query.get("upload_ms", ["0"])[0]) / 1000
    failures = int(query.get("upload_fail", ["0"])[0])
    pipeline = FakePipeline.from_query(pace)
    faults = KillAt(argv[1]) if len(argv) == 2 else Faults()

    async def start_fake(settings: Settings) -> Generator:
        generator = await start(settings, pipeline=pipeline, faults=faults)
        if delay_s or failures:
            services = generator.runner.services
            services.storage = SlowStorage(services.storage, delay_s, failures)
        return generator

    process.main("darkroom-generator", start_fake)


if __name__ == "__main__":
    main(sys.argv[1:])
