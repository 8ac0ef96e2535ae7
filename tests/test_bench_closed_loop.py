"""The pure helpers of bench section 10: throughput, /proc parsing, log and profile reading."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import pytest

from bench.closed_loop import Run, jobs_per_second, steady
from bench.cpu import Ledger, parse_stat, threads
from bench.profiling import generate_seconds, top_self


def test_steady_rate_leaves_out_the_first_job_and_counts_to_the_last() -> None:
    # One job every 0.5 s, the first done at t=10: 4 intervals in 2 s.
    assert steady([10.0, 10.5, 11.0, 11.5, 12.0]) == (4, 2.0)
    assert jobs_per_second([Run(finished=[12.0, 10.0, 11.0])]) == pytest.approx(1.0)


def test_a_batch_ending_together_counts_as_the_first_burst() -> None:
    # Batches of 4 every second; the first batch's jobs end within a few ms.
    finished = [t + 0.002 * i for t in (5.0, 6.0, 7.0) for i in range(4)]
    count, span = steady(finished)
    assert count == 8
    assert count / span == pytest.approx(4.0)


def test_rates_pool_over_runs_and_are_nan_without_two_jobs() -> None:
    runs = [Run(finished=[0.0, 1.0, 2.0]), Run(finished=[0.0, 2.0])]
    assert jobs_per_second(runs) == pytest.approx(3 / 4)
    assert math.isnan(jobs_per_second([Run(finished=[1.0])]))
    assert math.isnan(jobs_per_second([]))


def test_parse_stat_reads_names_with_spaces_and_parentheses() -> None:
    fields = " ".join(["S"] + ["0"] * 10 + ["150", "25"] + ["0"] * 30)
    assert parse_stat(f"4242 (pipeline (0) x) {fields}") == ("pipeline (0) x", 175)


def test_the_ledger_moves_a_threads_cpu_from_its_process_to_its_label() -> None:
    pid, tid = os.getpid(), threading.get_native_id()
    assert tid in threads(pid)
    ledger = Ledger({pid: "the rest of me"}, threads={tid: (pid, "this thread")})
    ledger.start()
    began = time.process_time()
    while time.process_time() - began < 0.3:
        pass
    used = ledger.stop()
    assert used["this thread"] >= 0.2
    # The process's and the thread's clocks are read a moment apart: a few ms either way.
    assert -0.05 <= used["the rest of me"] < 0.1


def test_generate_seconds_takes_the_jobs_asked_for() -> None:
    lines = [
        {"event": "attempt_succeeded", "job_id": "a", "generate_ms": 250.0, "total_ms": 300.0},
        {"event": "attempt_succeeded", "job_id": "b", "generate_ms": 100.0},
        {"event": "attempt_started", "job_id": "a"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json attempt_succeeded\n"
    assert generate_seconds(text, {"a"}) == [0.25]


def test_top_self_counts_leaf_frames() -> None:
    collapsed = "main;run;step (x.py:1) 5\nmain;run 2\nmain;other;step (x.py:1) 1\n"
    assert top_self(collapsed, 2) == [("step (x.py:1)", 6), ("run", 2)]
