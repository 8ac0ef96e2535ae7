"""The error reasons the contract documents are exactly the ones the servers send."""

from __future__ import annotations

import re
from pathlib import Path

from google.rpc import error_details_pb2

from darkroom import errors

CONTRACT = Path(__file__).resolve().parents[2] / "protos" / "darkroom" / "v1"
SERVICES = ("jobs_service.proto", "webhooks_service.proto")


def _documented() -> dict[str, str]:
    """`reason -> code` from the `// - `REASON` (CODE): …` lines of the services' comments."""
    text = "\n".join((CONTRACT / name).read_text() for name in SERVICES)
    return dict(re.findall(r"^// - `([A-Z_]+)` \(([A-Z_]+)\)", text, re.MULTILINE))


def _sent() -> dict[str, str]:
    pending, sent = list(errors.DarkroomError.__subclasses__()), {}
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        sent[cls.reason] = cls.code.name
    return sent


def test_every_reason_the_servers_send_is_documented_with_its_code() -> None:
    assert _documented() == _sent()


def test_status_carries_error_info_and_every_violation() -> None:
    error = errors.InvalidArgumentError(
        "bad",
        [
            errors.FieldViolation("spec.prompt", "too long"),
            errors.FieldViolation("spec.prompt", "NUL"),
        ],
    )
    status = errors.to_status(error)
    assert status.code == 3
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad_request)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "darkroom")
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("spec.prompt", "too long"),
        ("spec.prompt", "NUL"),
    ]
