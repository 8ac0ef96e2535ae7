"""Safe defaults: loopback by default; off loopback, no development token and no plaintext
unless asked for; token tables that hold digests instead of tokens."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from darkroom import devservers
from darkroom.auth import Authenticator, holds_dev_token, token_digest
from darkroom.config import DEV_TOKEN, Settings
from darkroom.errors import UnauthenticatedError
from darkroom.server import ExposureError, check_exposure, is_loopback, prepare_listener


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:0", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("[::]:50051", False),
        ("0.0.0.0:50051", False),
        ("10.0.0.7:50051", False),
        ("darkroom.example.com:50051", False),
        (":50051", False),
    ],
)
def test_loopback_is_only_this_machine(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_the_defaults_listen_on_loopback() -> None:
    fields = Settings.model_fields
    assert is_loopback(fields["jobs_address"].default)
    assert is_loopback(fields["events_address"].default)
    # The development token is fine there.
    check_exposure(fields["jobs_address"].default, Settings(auth_tokens={DEV_TOKEN: "dev"}))


def test_off_loopback_the_development_token_is_refused_even_as_a_digest() -> None:
    for tokens in ({DEV_TOKEN: "dev"}, {token_digest(DEV_TOKEN): "dev", "x" * 20: "ops"}):
        settings = Settings(auth_tokens=tokens, allow_insecure=True)
        with pytest.raises(ExposureError, match="DARKROOM_AUTH_TOKENS"):
            check_exposure("0.0.0.0:50051", settings)


def test_off_loopback_plaintext_needs_tls_or_an_explicit_opt_in(tmp_path: Path) -> None:
    own = {"s3cret-token-of-ours": "ops"}
    with pytest.raises(ExposureError, match=r"DARKROOM_TLS_CERT_FILE.*DARKROOM_ALLOW_INSECURE"):
        check_exposure("[::]:50051", Settings(auth_tokens=own))
    check_exposure("[::]:50051", Settings(auth_tokens=own, allow_insecure=True))
    check_exposure("[::]:50051", Settings(auth_tokens=own, tls_cert_file="c", tls_key_file="k"))


def test_tls_settings_that_cannot_work_name_the_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases = [
        ({"tls_cert_file": missing}, "both DARKROOM_TLS_CERT_FILE and DARKROOM_TLS_KEY_FILE"),
        ({"tls_client_ca_file": missing}, "DARKROOM_TLS_CLIENT_CA_FILE needs"),
        ({"tls_cert_file": missing, "tls_key_file": missing}, "DARKROOM_TLS_CERT_FILE: cannot"),
        ({"tls_cert_file": str(not_pem), "tls_key_file": missing}, "holds no PEM block"),
    ]
    for changes, message in cases:
        with pytest.raises(ExposureError, match=message):
            prepare_listener("127.0.0.1:0", Settings().model_copy(update=changes))


def test_a_table_of_digests_authenticates_without_holding_the_tokens() -> None:
    table = {token_digest("alice-secret"): "alice", "bob-secret": "bob"}
    authenticator = Authenticator(table)
    assert authenticator.owner_for([("authorization", "Bearer alice-secret")]) == "alice"
    assert authenticator.owner_for([("authorization", "Bearer bob-secret")]) == "bob"
    # The digest itself is no token: presenting what the table holds gets nobody in.
    for presented in (token_digest("alice-secret"), "nobody"):
        with pytest.raises(UnauthenticatedError):
            authenticator.owner_for([("authorization", f"Bearer {presented}")])
    assert "alice-secret" not in json.dumps(table)
    assert not holds_dev_token(table)


def test_a_malformed_digest_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="64 lowercase hex digits"):
        Settings(auth_tokens={"sha256:abc": "alice"})


async def _start(settings: Settings, **env: str) -> tuple[int | None, str]:
    """Start `darkroom.services.jobs`; its exit code (None while it still runs) and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "darkroom.services.jobs",
        env={
            **os.environ,
            "DARKROOM_DATABASE_URL": settings.database_url,
            "DARKROOM_REDIS_URL": settings.redis_url,
            "DARKROOM_KEY_PREFIX": settings.key_prefix,
            **env,
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        return process.returncode, stderr.decode()
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, ""


async def test_a_public_address_with_the_development_token_refuses_to_start(
    settings: Settings,
) -> None:
    port = devservers.free_port()
    code, stderr = await _start(settings, DARKROOM_JOBS_ADDRESS=f"0.0.0.0:{port}")
    assert code == 1
    assert "DARKROOM_AUTH_TOKENS" in stderr
    assert "development token" in stderr
    assert "Traceback" not in stderr

    own = json.dumps({token_digest("ours"): "ops"})
    code, stderr = await _start(
        settings, DARKROOM_JOBS_ADDRESS=f"0.0.0.0:{port}", DARKROOM_AUTH_TOKENS=own
    )
    assert code == 1
    assert "DARKROOM_ALLOW_INSECURE" in stderr
    assert "Traceback" not in stderr
