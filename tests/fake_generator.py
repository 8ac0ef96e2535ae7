"""`python -m tests.fake_generator [PACE] [FAULT]`: a real Generator process on the fake pipeline.

For the fault suite, the stack test and the bench: the seams are this module's arguments,
never settings of a deployed generator. PACE is the fake pipeline's query, as
`step_ms=20` or `step_ms=5&fail=raise` (see `FakePipeline`); FAULT is a fault point
(`after_upload`, `after_commit`) at which the process ends with status 137, as if killed.
Everything else comes from the `DARKROOM_*` settings, as for `darkroom-generator`.
"""

from __future__ import annotations

import sys
from functools import partial

from darkroom import process
from darkroom.services.generator.faults import Faults, KillAt
from darkroom.services.generator.pipeline import FakePipeline
from darkroom.services.generator.worker import start

FAULT_POINTS = ("after_upload", "after_commit")


def main(argv: list[str]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] not in FAULT_POINTS):
        print(f"usage: python -m tests.fake_generator [PACE] [{'|'.join(FAULT_POINTS)}]")
        raise SystemExit(2)
    pipeline = FakePipeline.from_query(argv[0] if argv else "")
    faults = KillAt(argv[1]) if len(argv) == 2 else Faults()
    process.main("darkroom-generator", partial(start, pipeline=pipeline, faults=faults))


if __name__ == "__main__":
    main(sys.argv[1:])
