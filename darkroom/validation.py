"""Every limit on a job request, checked in one pass so a caller sees every bad field.

The same limits are written in the comments of `protos/darkroom/v1/`; change both together.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2

from darkroom.config import Settings
from darkroom.errors import FieldViolation, InvalidArgumentError
from darkroom.spec import FIELDS, Spec
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.webhooks.urls import job_webhook

PROMPT_MAX_CHARS = 2_000
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2_048, 8
STEPS_MIN, STEPS_MAX = 1, 150
GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 30.0
IMAGES_MIN, IMAGES_MAX = 1, 4
SEED_MAX = 2**32 - 1
PRIORITY_MIN, PRIORITY_MAX = -10, 10
QUEUE_TIMEOUT_MIN, QUEUE_TIMEOUT_MAX = timedelta(seconds=1), timedelta(hours=24)
# What google.protobuf.Duration allows: about 10,000 years, nanos of the seconds' sign.
DURATION_SECONDS_MAX, DURATION_NANOS_MAX = 315_576_000_000, 999_999_999
# Bidirectional controls reorder how text displays without changing it ("Trojan Source");
# a prompt never needs them. Zero-width joiners stay allowed: emoji and scripts use them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Nothing a person could see: separators and spaces (Z*), format characters such as
# zero-width spaces and joiners (Cf), combining marks (M*), and the blank letters that
# Unicode classes as letters or symbols (Hangul fillers, the blank Braille pattern).
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cf", "Cc", "Mn", "Mc", "Me"})
BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


@dataclass(frozen=True)
class JobRequest:
    """A validated submit with every default filled in, ready to become a row."""

    request_id: uuid.UUID
    request_hash: str
    spec: Spec
    queue_timeout: timedelta
    # The W3C trace context of the submit, kept on the row (None: tracing is off).
    traceparent: str | None = None


def _visible(char: str) -> bool:
    return unicodedata.category(char) not in INVISIBLE_CATEGORIES and char not in BLANK_CHARACTERS


def _text(field: str, value: str, *, required: bool) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    problems = []
    if required and not any(_visible(char) for char in value[:PROMPT_MAX_CHARS]):
        problems.append(
            FieldViolation(
                field,
                "must contain a visible character (it has only spaces, zero-width or "
                "combining characters)",
            )
        )
    if len(value) > PROMPT_MAX_CHARS:
        problems.append(
            FieldViolation(
                field, f"must be at most {PROMPT_MAX_CHARS:,} characters (got {len(value):,})"
            )
        )
    # Only as far as the limit: the rest is refused anyway, and scanning megabytes of it
    # character by character would hold up the server's event loop.
    for position, char in enumerate(value[:PROMPT_MAX_CHARS]):
        if char in "\n\t":
            continue
        if unicodedata.category(char) == "Cc" or char in BIDI_CONTROLS:
            problems.append(
                FieldViolation(
                    field,
                    f"must not contain control character U+{ord(char):04X} "
                    f"(at character {position}); only newline and tab are allowed",
                )
            )
            break
    return problems


def _size(field: str, value: int) -> list[FieldViolation]:
    if value == 0:
        return []
    if not SIZE_MIN <= value <= SIZE_MAX or value % SIZE_MULTIPLE:
        return [
            FieldViolation(
                field,
                f"must be a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX:,} "
                f"(got {value})",
            )
        ]
    return []


def priority_violations(field: str, value: int) -> list[FieldViolation]:
    """A priority out of its range, said."""
    if PRIORITY_MIN <= value <= PRIORITY_MAX:
        return []
    return [FieldViolation(field, f"must be from {PRIORITY_MIN} to {PRIORITY_MAX} (got {value})")]


def parse_uuid(field: str, value: str) -> tuple[uuid.UUID | None, list[FieldViolation]]:
    """Parse a canonical UUID (`8-4-4-4-12` hexadecimal), or say what is wrong with it."""
    if not value:
        return None, [FieldViolation(field, "is required")]
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value.lower():
        shown = value if len(value) <= 64 else value[:64] + "…"
        return None, [
            FieldViolation(field, f"must be a UUID such as {uuid.UUID(int=0)} ({shown!r})")
        ]
    return parsed, []


def parse_duration(
    field: str, value: duration_pb2.Duration
) -> tuple[timedelta | None, list[FieldViolation]]:
    """A Duration as a timedelta, or say why it is not a valid Duration (out-of-range
    nanos or seconds, or nanos of the other sign, which `ToTimedelta` would accept or
    overflow on)."""
    seconds, nanos = value.seconds, value.nanos
    if abs(nanos) > DURATION_NANOS_MAX or seconds * nanos < 0:
        return None, [
            FieldViolation(
                field,
                f"is not a valid Duration: nanos must be from -{DURATION_NANOS_MAX:,} to "
                f"{DURATION_NANOS_MAX:,} and of the same sign as seconds "
                f"(got seconds={seconds}, nanos={nanos})",
            )
        ]
    if abs(seconds) > DURATION_SECONDS_MAX:
        return None, [
            FieldViolation(
                field,
                f"is not a valid Duration: seconds must be from -{DURATION_SECONDS_MAX:,} to "
                f"{DURATION_SECONDS_MAX:,} (got {seconds})",
            )
        ]
    return value.ToTimedelta(), []


def _within(value: duration_pb2.Duration, low: timedelta, high: timedelta) -> bool:
    """Whether a valid Duration is from `low` to `high` to the nanosecond (a timedelta
    holds microseconds: 24 hours and 1 ns would round to 24 hours)."""
    microsecond = timedelta(microseconds=1)
    return low // microsecond * 1_000 <= value.ToNanoseconds() <= high // microsecond * 1_000


def _seconds(value: duration_pb2.Duration) -> str:
    """A valid Duration in seconds, every digit kept: `86400.000000001`, `-0.5`."""
    nanos = value.ToNanoseconds()
    whole, fraction = divmod(abs(nanos), 1_000_000_000)
    shown = f"{'-' if nanos < 0 else ''}{whole:,}"
    return f"{shown}.{fraction:09d}".rstrip("0") if fraction else shown


def _request_hash(request: jobs_service_pb2.SubmitJobRequest) -> str:
    """What makes two submits with one request_id 'the same request' (AIP-155)."""
    body = jobs_service_pb2.SubmitJobRequest()
    body.CopyFrom(request)
    body.ClearField("request_id")
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def validate_submit(request: jobs_service_pb2.SubmitJobRequest, settings: Settings) -> JobRequest:
    """Check every field of a submit; raise InvalidArgumentError listing all violations."""
    spec: job_pb2.JobSpec = request.spec
    request_id, violations = parse_uuid("request_id", request.request_id)
    violations += _text("spec.prompt", spec.prompt, required=True)
    violations += _text("spec.negative_prompt", spec.negative_prompt, required=False)
    violations += _size("spec.width", spec.width)
    violations += _size("spec.height", spec.height)
    width = spec.width or settings.default_width
    height = spec.height or settings.default_height

    if spec.steps and not STEPS_MIN <= spec.steps <= STEPS_MAX:
        violations.append(
            FieldViolation(
                "spec.steps", f"must be from {STEPS_MIN} to {STEPS_MAX} (got {spec.steps})"
            )
        )
    guidance = spec.guidance_scale if spec.HasField("guidance_scale") else None
    if guidance is not None and not (
        math.isfinite(guidance) and GUIDANCE_MIN <= guidance <= GUIDANCE_MAX
    ):
        violations.append(
            FieldViolation(
                "spec.guidance_scale",
                f"must be a finite number from {GUIDANCE_MIN:g} to {GUIDANCE_MAX:g} "
                f"(got {guidance})",
            )
        )
    if spec.num_images and not IMAGES_MIN <= spec.num_images <= IMAGES_MAX:
        violations.append(
            FieldViolation(
                "spec.num_images",
                f"must be from {IMAGES_MIN} to {IMAGES_MAX} (got {spec.num_images})",
            )
        )
    num_images = spec.num_images or 1
    if spec.HasField("seed") and not 0 <= spec.seed <= SEED_MAX:
        violations.append(
            FieldViolation("spec.seed", f"must be from 0 to {SEED_MAX:,} (got {spec.seed})")
        )
    violations += priority_violations("spec.priority", spec.priority)
    webhook = None
    if spec.HasField("webhook"):
        webhook, problems = job_webhook("spec.webhook", spec.webhook, settings)
        violations += problems
    model = spec.model or settings.model_default
    if model not in settings.models:
        allowed = ", ".join(settings.models)
        violations.append(
            FieldViolation("spec.model", f"must be one of: {allowed} (got {spec.model[:256]!r})")
        )
    pixels = width * height * num_images
    if not any(
        v.field in {"spec.width", "spec.height", "spec.num_images"} for v in violations
    ) and (pixels > settings.pixel_budget):
        violations.append(
            FieldViolation(
                "spec",
                f"width x height x num_images must be at most {settings.pixel_budget:,} pixels "
                f"(got {width} x {height} x {num_images} = {pixels:,})",
            )
        )

    queue_timeout: timedelta | None = settings.queue_timeout
    if request.HasField("queue_timeout"):
        queue_timeout, problems = parse_duration("queue_timeout", request.queue_timeout)
        violations += problems
        if queue_timeout is not None and not _within(
            request.queue_timeout, QUEUE_TIMEOUT_MIN, QUEUE_TIMEOUT_MAX
        ):
            violations.append(
                FieldViolation(
                    "queue_timeout",
                    f"must be from 1 second to 24 hours (got {_seconds(request.queue_timeout)} s)",
                )
            )

    if violations or request_id is None or queue_timeout is None:
        raise InvalidArgumentError("the job request is invalid", violations)
    return JobRequest(
        request_id=request_id,
        request_hash=_request_hash(request),
        spec=_spec(
            spec,
            width=width,
            height=height,
            steps=spec.steps or settings.default_steps,
            guidance_scale=settings.default_guidance_scale if guidance is None else guidance,
            seed=spec.seed if spec.HasField("seed") else secrets.randbelow(SEED_MAX + 1),
            num_images=num_images,
            model=model,
            webhook=webhook,
        ),
        queue_timeout=queue_timeout,
    )


def _spec(given: job_pb2.JobSpec, **filled: Any) -> Spec:
    """The recorded spec: the request's own values, with the defaults `filled` in."""
    return Spec(
        **{name: filled[name] if name in filled else getattr(given, name) for name in FIELDS}
    )
