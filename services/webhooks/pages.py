"""Page tokens and sizes of the webhook lists: the (time, id) a page continues after."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from darkroom.errors import FieldViolation, InvalidArgumentError

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 100
PAGE_TOKEN_MAX_CHARS = 256


def page_size(value: int) -> int:
    """The page size asked for, or INVALID_ARGUMENT."""
    if not 0 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            "the page size is invalid",
            [FieldViolation("page_size", f"must be from 0 to {MAX_PAGE_SIZE} (got {value})")],
        )
    return value or DEFAULT_PAGE_SIZE


def encode(created_at: datetime, last_id: uuid.UUID, scope: str) -> str:
    """The token of the page after the row (`created_at`, `last_id`) of list `scope`."""
    payload = json.dumps({"t": created_at.isoformat(), "id": str(last_id), "s": scope})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(token: str, scope: str) -> tuple[datetime, uuid.UUID] | None:
    """Where a page continues (None for the first page); INVALID_ARGUMENT for a token
    `encode` did not write for `scope`."""
    if not token:
        return None
    try:
        if len(token) > PAGE_TOKEN_MAX_CHARS:
            raise ValueError(token)
        padded = token + "=" * (-len(token) % 4)
        payload: Any = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(payload, dict) or payload.get("s") != scope:
            raise ValueError(token)
        return datetime.fromisoformat(payload["t"]), uuid.UUID(payload["id"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgumentError(
            "the page token is invalid",
            [FieldViolation("page_token", "is not a token from the previous page of this list")],
        ) from None
