"""`darkroom webhooks …`: endpoints (create, list, delete, rotate), the signing secret,
the delivery log of a job or an endpoint, and redelivery."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from darkroom.v1 import webhook_pb2, webhooks_service_pb2
from darkroom_client.aio import AsyncDarkroomClient
from darkroom_client.cli_output import print_json
from darkroom_client.exit_codes import EXIT_OK
from darkroom_client.webhooks import EVENT_NAMES, AsyncWebhooks

# `command(group, name, help)`: a subcommand of `group` (argparse's private subparsers
# action) with the CLI's common flags.
Command = Callable[[Any, str, str], argparse.ArgumentParser]


def events_of(text: str) -> list[str]:
    """`terminal,started` as a list of event names (checked by the client)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_commands(webhooks: argparse.ArgumentParser, command: Command) -> None:
    """The `webhooks` subcommands, built with the CLI's `command(group, name, help)`."""
    groups = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    endpoints = command(groups, "endpoints", "manage endpoints called for all your jobs")
    actions = endpoints.add_subparsers(dest="endpoint_action", required=True, metavar="ACTION")
    create = command(actions, "create", "register an endpoint and print its secret once")
    create.add_argument("url", metavar="URL", help="an https:// URL")
    create.add_argument(
        "--on",
        dest="webhook_events",
        metavar="EVENTS",
        type=events_of,
        default=[],
        help=f"comma-separated, of {', '.join(EVENT_NAMES)} (default: terminal)",
    )
    command(actions, "list", "list your endpoints, newest first")
    delete = command(actions, "delete", "delete an endpoint")
    delete.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    rotate = command(actions, "rotate", "give an endpoint a new secret (the old one signs on)")
    rotate.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    secret = command(groups, "secret", "print the secret that signs your jobs' own webhooks")
    secret.add_argument(
        "--rotate", action="store_true", help="make a new one (the old one signs on a while)"
    )
    deliveries = command(groups, "deliveries", "show the calls made for a job or to an endpoint")
    target = deliveries.add_mutually_exclusive_group(required=True)
    target.add_argument("--job", metavar="JOB_ID", default="")
    target.add_argument("--endpoint", metavar="ENDPOINT_ID", default="")
    deliveries.add_argument("--page-token", default="", help="the token that ended the last page")
    redeliver = command(groups, "redeliver", "send a delivery again, with the same webhook-id")
    redeliver.add_argument("delivery_id", metavar="DELIVERY_ID")


def _state(delivery: webhooks_service_pb2.WebhookDelivery) -> str:
    name = webhooks_service_pb2.WebhookDeliveryState.Name(delivery.state)
    return name.removeprefix("WEBHOOK_DELIVERY_STATE_").lower()


def _show_delivery(delivery: webhooks_service_pb2.WebhookDelivery) -> None:
    where = delivery.endpoint_id or "job webhook"
    print(f"{delivery.id}  {delivery.type:<13}  {_state(delivery):<9}  {where}  {delivery.url}")
    for attempt in delivery.attempts:
        started = attempt.start_time.ToDatetime().isoformat(timespec="seconds")
        status = attempt.status_code or "-"
        outcome = attempt.error or "ok"
        print(f"    #{attempt.number}  {started}  {status}  {outcome}")


async def run(client: AsyncDarkroomClient, args: argparse.Namespace) -> int:
    """Run one `webhooks` subcommand."""
    webhooks = client.webhooks
    if args.webhooks_command == "endpoints":
        return await _endpoints(webhooks, args)
    if args.webhooks_command == "secret":
        if args.rotate:
            print((await webhooks.rotate_signing_secret()).secret)
        else:
            print(await webhooks.signing_secret())
        return EXIT_OK
    if args.webhooks_command == "redeliver":
        delivery = await webhooks.redeliver(args.delivery_id)
        if args.json:
            print_json(delivery)
        else:
            _show_delivery(delivery)
        return EXIT_OK
    if args.webhooks_command == "deliveries":
        page = await webhooks.list_deliveries(
            job_id=args.job, endpoint_id=args.endpoint, page_token=args.page_token
        )
        if args.json:
            print_json(page)
            return EXIT_OK
        for delivery in page.deliveries:
            _show_delivery(delivery)
        if page.next_page_token:
            print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
        return EXIT_OK
    raise AssertionError(args.webhooks_command)  # pragma: no cover - argparse allows no other


async def _endpoints(webhooks: AsyncWebhooks, args: argparse.Namespace) -> int:
    if args.endpoint_action == "create":
        created = await webhooks.create_endpoint(args.url, args.webhook_events)
        if args.json:
            print_json(created)
        else:
            print(f"{created.endpoint.id}  {created.secret}")
        return EXIT_OK
    if args.endpoint_action == "rotate":
        rotated = await webhooks.rotate_secret(args.endpoint_id)
        if args.json:
            print_json(rotated)
        else:
            print(rotated.secret)
        return EXIT_OK
    if args.endpoint_action == "delete":
        await webhooks.delete_endpoint(args.endpoint_id)
        return EXIT_OK
    listed = await webhooks.list_endpoints()
    if args.json:
        print_json(listed)
        return EXIT_OK
    for endpoint in listed.endpoints:
        events = ",".join(
            webhook_pb2.WebhookEvent.Name(event).removeprefix("WEBHOOK_EVENT_").lower()
            for event in endpoint.events
        )
        print(f"{endpoint.id}  {events:<24}  {endpoint.url}")
    return EXIT_OK
