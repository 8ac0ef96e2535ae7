"""`make chaos` strikes every fault issue 14 added to its mix, and each really strikes: a
short run on the suite's servers, one of each, must lose nothing."""

from __future__ import annotations

import pytest

from tests.faults import chaos
from tests.faults.cluster import Servers

# The faults issue 14 names, by the names `chaos` gives them.
NEW_FAULTS = {
    "poison": "bad queue messages",
    "junk": "junk queue entries",
    "slow_uploads": "slow uploads",
    "ooms": "Redis refusing writes",
    "deadline_sigterms": "SIGTERM of a busy generator past the job's queue deadline",
}


def test_the_default_mix_holds_every_new_fault() -> None:
    args = chaos.parser().parse_args([])
    struck = {fault for fault in chaos.FAULTS if getattr(args, fault) > 0}
    assert set(NEW_FAULTS) - {"slow_uploads"} <= struck  # slow uploads: always on
    assert chaos.SLOW_UPLOADS.endswith("upload_ms=2500")  # longer than the 2 s lease


@pytest.mark.timeout(90)
async def test_a_short_chaos_run_strikes_every_fault_and_loses_nothing(servers: Servers) -> None:
    counts = [f"--{fault.replace('_', '-')}=1" for fault in chaos.FAULTS]
    args = chaos.parser().parse_args(["--jobs=150", "--gap=0.4", *counts])
    summary = await chaos.run(args, servers)
    for fault, what in NEW_FAULTS.items():
        assert summary.struck[fault] >= 1, f"{what} never struck: {summary.rows}"
    assert all(summary.struck[fault] >= 1 for fault in chaos.FAULTS), summary.rows
    assert summary.ok, (summary.rows, summary.details)
