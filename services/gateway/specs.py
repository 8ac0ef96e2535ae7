"""Reading a create-job body: `{"spec": JobSpec as JSON, "queue_timeout": "60s"}`.

Each field is read against the contract's own descriptors (so a field added to `JobSpec`
is accepted here as soon as the client takes it) and each bad one becomes a field
violation named by its path, as the Jobs service names its own (`spec.width`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom_client.errors import FieldViolation

BODY_FIELDS = ("spec", "queue_timeout")


@dataclass
class SubmitBody:
    """A create-job body, read; `violations` lists what is wrong with it."""

    prompt: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    queue_timeout: float | None = None
    violations: list[FieldViolation] = field(default_factory=list)


def _parse_error(error: json_format.ParseError) -> str:
    return str(error).rsplit(": ", 1)[-1] or "cannot be read"


def read_submit(body: object) -> SubmitBody:
    """The prompt, spec fields and queue timeout of a create-job body."""
    result = SubmitBody()
    if not isinstance(body, dict):
        result.violations.append(FieldViolation("", "the body must be a JSON object"))
        return result
    for name in body:
        if name not in BODY_FIELDS:
            result.violations.append(FieldViolation(str(name), "unknown field"))
    spec_json = body.get("spec")
    if not isinstance(spec_json, dict):
        result.violations.append(FieldViolation("spec", "must be an object with a prompt"))
        return result
    spec = job_pb2.JobSpec()
    by_name = {f.name: f for f in spec.DESCRIPTOR.fields}
    by_name.update({f.json_name: f for f in spec.DESCRIPTOR.fields})
    for name, value in spec_json.items():
        descriptor = by_name.get(name)
        if descriptor is None:
            result.violations.append(FieldViolation(f"spec.{name}", "unknown field"))
            continue
        try:
            json_format.ParseDict({name: value}, spec, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            result.violations.append(
                FieldViolation(f"spec.{descriptor.name}", f"wrong type: {_parse_error(exc)}")
            )
    if "queue_timeout" in body:
        request = jobs_service_pb2.SubmitJobRequest()
        try:
            json_format.ParseDict({"queue_timeout": body["queue_timeout"]}, request)
        except json_format.ParseError:
            result.violations.append(
                FieldViolation("queue_timeout", 'must be a duration such as "60s"')
            )
        else:
            result.queue_timeout = request.queue_timeout.ToTimedelta().total_seconds()
    result.prompt = spec.prompt
    result.fields = {f.name: value for f, value in spec.ListFields() if f.name != "prompt"}
    return result
