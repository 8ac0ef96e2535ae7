"""Standard Webhooks signing (the `standardwebhooks` library): secrets, headers, body.

Every try of one delivery carries the same `webhook-id` (receivers de-duplicate by it),
its own `webhook-timestamp`, and one `v1,` signature per secret that signs (two while an
endpoint's previous secret is in its grace period)."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from standardwebhooks import Webhook

from darkroom.convert import job_to_proto
from darkroom.models import JobRecord

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 24


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_id(delivery_id: Any) -> str:
    """The `webhook-id` of a delivery (`msg_` and its UUID)."""
    return f"msg_{delivery_id}"


def delivery_id(message_id: str) -> str:
    """The UUID text of a `webhook-id`."""
    return message_id.removeprefix("msg_")


def body(
    event_type: str,
    happened: datetime,
    job: JobRecord,
    url_for: Callable[[str], str] | None,
) -> str:
    """The JSON body: `{"type", "timestamp", "data"}`, data the `Job` in the gateway's JSON
    (proto field names, enums by name), with output URLs and never image bytes."""
    data = json_format.MessageToDict(job_to_proto(job, url_for), preserving_proto_field_name=True)
    payload = {"type": event_type, "timestamp": happened.isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"))


def headers(
    message_id: str, sent: datetime, payload: str, signing: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers of one try, signed with every secret in `signing`."""
    signatures = [Webhook(secret).sign(message_id, sent, payload) for secret in signing]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": "Darkroom-Webhooks/1",
    }
