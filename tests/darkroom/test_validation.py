"""`validate_submit` on its own: every rule, every default, and the request hash."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from darkroom.config import Settings
from darkroom.errors import InvalidArgumentError
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import PROMPT_MAX_CHARS, validate_submit

REQUEST_ID = str(uuid.UUID(int=1))


def _submit(**spec: Any) -> jobs_service_pb2.SubmitJobRequest:
    spec.setdefault("prompt", "a fox")
    return jobs_service_pb2.SubmitJobRequest(request_id=REQUEST_ID, spec=job_pb2.JobSpec(**spec))


def _violations(request: jobs_service_pb2.SubmitJobRequest, settings: Settings) -> list[str]:
    with pytest.raises(InvalidArgumentError) as raised:
        validate_submit(request, settings)
    return [violation.field for violation in raised.value.violations]


def test_unset_fields_take_the_defaults_and_a_seed_is_picked(settings: Settings) -> None:
    spec = validate_submit(_submit(), settings).spec
    assert (spec.width, spec.height, spec.steps, spec.num_images, spec.model) == (
        settings.default_width,
        settings.default_height,
        settings.default_steps,
        1,
        settings.model_default,
    )
    assert spec.guidance_scale == settings.default_guidance_scale
    assert 0 <= spec.seed < 2**32
    # An explicit zero guidance or seed is kept: presence, not truthiness, decides.
    kept = validate_submit(_submit(guidance_scale=0.0, seed=0), settings).spec
    assert (kept.guidance_scale, kept.seed) == (0.0, 0)


@pytest.mark.parametrize(
    "prompt", [" ", "\n\t", "\u200b\u200d", "\u0301\u0302", "\u3000\u00a0", "\u3164"]
)
def test_a_prompt_nobody_could_see_is_refused(settings: Settings, prompt: str) -> None:
    assert _violations(_submit(prompt=prompt), settings) == ["spec.prompt"]


def test_every_violation_comes_in_one_answer(settings: Settings) -> None:
    request = _submit(prompt="", width=7, steps=999, num_images=9, model="nope")
    request.request_id = "not-a-uuid"
    assert _violations(request, settings) == [
        "request_id",
        "spec.prompt",
        "spec.width",
        "spec.steps",
        "spec.num_images",
        "spec.model",
    ]


def test_the_request_hash_ignores_the_request_id_only(settings: Settings) -> None:
    first = validate_submit(_submit(seed=5), settings)
    again = _submit(seed=5)
    again.request_id = str(uuid.UUID(int=2))
    assert validate_submit(again, settings).request_hash == first.request_hash
    assert validate_submit(_submit(seed=6), settings).request_hash != first.request_hash


def _with_timeout(seconds: int, nanos: int) -> jobs_service_pb2.SubmitJobRequest:
    request = _submit()
    request.queue_timeout.seconds = seconds
    request.queue_timeout.nanos = nanos
    return request


def _queue_timeout_problem(seconds: int, nanos: int, settings: Settings) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        validate_submit(_with_timeout(seconds, nanos), settings)
    [violation] = raised.value.violations
    assert violation.field == "queue_timeout"
    return violation.description


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (2**62, 0),  # ToTimedelta overflows
        (-(2**62), 0),
        (2**63 - 1, 999_999_999),
        (315_576_000_001, 0),  # past Duration's 10,000 years, though a timedelta holds it
        (60, 1_000_000_000),  # ToTimedelta would take it as 61 s
        (60, -(2**31)),
        (60, -1),  # signs differ
        (-60, 1),
    ],
)
def test_a_queue_timeout_that_is_no_valid_duration_is_refused_as_such(
    settings: Settings, seconds: int, nanos: int
) -> None:
    assert _queue_timeout_problem(seconds, nanos, settings).startswith("is not a valid Duration")


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(0, 999_999_999), (0, -1), (86_400, 1), (315_576_000_000, 0)]
)
def test_a_valid_duration_outside_the_range_is_refused_for_its_range(
    settings: Settings, seconds: int, nanos: int
) -> None:
    assert _queue_timeout_problem(seconds, nanos, settings).startswith("must be from 1 second")


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (1, 0, timedelta(seconds=1)),
        (86_399, 999_999_999, timedelta(seconds=86_399, microseconds=999_999)),
        (86_400, 0, timedelta(hours=24)),
    ],
)
def test_queue_timeouts_at_the_edges_are_taken_exactly(
    settings: Settings, seconds: int, nanos: int, expected: timedelta
) -> None:
    assert validate_submit(_with_timeout(seconds, nanos), settings).queue_timeout == expected


def test_an_over_long_prompt_is_scanned_only_as_far_as_the_limit(settings: Settings) -> None:
    # The NUL past the limit is not looked for: the length alone refuses the prompt, and a
    # megabyte scanned character by character would hold up the server.
    request = _submit(prompt="p" * PROMPT_MAX_CHARS + "\x00" * 1_000_000)
    with pytest.raises(InvalidArgumentError) as raised:
        validate_submit(request, settings)
    [violation] = raised.value.violations
    assert (violation.field, violation.description) == (
        "spec.prompt",
        f"must be at most {PROMPT_MAX_CHARS:,} characters (got {PROMPT_MAX_CHARS + 1_000_000:,})",
    )
    # Within the limit, a control character is still found wherever it is.
    assert _violations(_submit(prompt="p" * (PROMPT_MAX_CHARS - 1) + "\x00"), settings) == [
        "spec.prompt"
    ]
