"""The sender alone (its resolver replaced): a name is checked by what it resolves to when
the POST is made, so DNS that turns to an internal address is refused."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

import pytest

from darkroom.services.webhooks.sender import Sender
from darkroom.webhooks.addresses import AddressPolicy


def _answers(*addresses: str) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses
        ]

    return getaddrinfo


async def test_a_name_that_resolves_to_an_internal_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = Sender(AddressPolicy(), timedelta(seconds=2))
    loop = asyncio.get_running_loop()
    try:
        monkeypatch.setattr(loop, "getaddrinfo", _answers("93.184.215.14", "169.254.169.254"))
        outcome = await sender.post("https://rebound.example/hook", "{}", {})
        assert outcome.status == 0
        assert outcome.error.startswith("refused: rebound.example resolves to 169.254.169.254")
        monkeypatch.setattr(loop, "getaddrinfo", _answers("10.0.0.7"))
        outcome = await sender.post("https://rebound.example/hook", "{}", {})
        assert "resolves to 10.0.0.7" in outcome.error
    finally:
        await sender.close()


async def test_an_internal_address_literal_is_refused_without_resolving() -> None:
    sender = Sender(AddressPolicy(), timedelta(seconds=2))
    try:
        outcome = await sender.post("http://[::1]:9/hook", "{}", {})
        assert outcome.error.startswith("refused: ::1 resolves to ::1")
    finally:
        await sender.close()
