"""The rules of a webhook URL and its events (limits written in `webhook.proto` too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from darkroom.config import Settings
from darkroom.errors import FieldViolation
from darkroom.v1 import webhook_pb2
from darkroom.webhooks.addresses import AddressPolicy, literal

URL_MAX_CHARS = 2_048
DEFAULT_EVENTS = ("WEBHOOK_EVENT_TERMINAL",)
_LOOPBACK_NAMES = frozenset({"localhost"})


def url_violations(field: str, url: str, settings: Settings) -> list[FieldViolation]:
    """What is wrong with a webhook URL, if anything."""
    problem = _problem(url, settings)
    return [] if problem is None else [FieldViolation(field, problem)]


def _problem(url: str, settings: Settings) -> str | None:
    if not url:
        return "is required"
    if len(url) > URL_MAX_CHARS:
        return f"must be at most {URL_MAX_CHARS:,} characters (got {len(url):,})"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # the port only to refuse a bad one
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    problem = None
    if parts.scheme not in {"https", "http"} or not host:
        problem = "must be an absolute https:// URL with a host"
    elif parts.username is not None or parts.password is not None:
        problem = "must not hold a user name or password"
    elif parts.fragment:
        problem = "must not have a #fragment"
    else:
        problem = _host_problem(parts.scheme, host, settings)
    return problem


def _host_problem(scheme: str, host: str, settings: Settings) -> str | None:
    address = literal(host)
    loopback = host in _LOOPBACK_NAMES or (address is not None and address.is_loopback)
    if scheme == "http" and not (settings.webhook_allow_http and loopback):
        return (
            "must use https:// (http:// only for loopback hosts, with DARKROOM_WEBHOOK_ALLOW_HTTP)"
        )
    policy = AddressPolicy.of(settings.webhook_allow_networks)
    if address is not None and not policy.permits(address):
        return f"must not name a loopback, private, link-local or reserved address ({address})"
    return None


def event_names(field: str, events: Sequence[int]) -> tuple[list[str], list[FieldViolation]]:
    """The names of `events` (the default when empty), or what is wrong with them."""
    if not events:
        return list(DEFAULT_EVENTS), []
    names: list[str] = []
    for event in events:
        if (
            event == webhook_pb2.WEBHOOK_EVENT_UNSPECIFIED
            or event not in webhook_pb2.WebhookEvent.values()
        ):
            return [], [FieldViolation(field, f"must list WebhookEvent values (got {event})")]
        name = webhook_pb2.WebhookEvent.Name(webhook_pb2.WebhookEvent.ValueType(event))
        if name in names:
            return [], [FieldViolation(field, f"must not list {name} twice")]
        names.append(name)
    return names, []


def job_webhook(
    field: str, webhook: webhook_pb2.JobWebhook, settings: Settings
) -> tuple[dict[str, Any] | None, list[FieldViolation]]:
    """A submit's webhook as recorded in the spec, or its violations."""
    violations = url_violations(f"{field}.url", webhook.url, settings)
    events, problems = event_names(f"{field}.events", webhook.events)
    violations += problems
    return {"url": webhook.url, "events": events}, violations
