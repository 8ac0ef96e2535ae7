"""`validate_submit` on its own: every rule, every default, and the request hash."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from darkroom.config import Settings
from darkroom.errors import InvalidArgumentError
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit

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
