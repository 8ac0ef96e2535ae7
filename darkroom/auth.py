"""Caller identity: `authorization: Bearer <token>` metadata mapped to an owner.

The token table (`DARKROOM_AUTH_TOKENS`) maps each token to its owner. A key may be the
raw token or `sha256:<64 hex digits>`, the SHA-256 of the token, so that a configuration
that leaks (a ConfigMap, a dump of the environment) leaks no credential.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from darkroom.config import DEV_TOKEN, TOKEN_DIGEST_PREFIX
from darkroom.errors import UnauthenticatedError


def token_digest(token: str) -> str:
    """The `sha256:<hex>` key that stands for `token` in the token table."""
    return TOKEN_DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def _digest_bytes(key: str) -> bytes:
    if key.startswith(TOKEN_DIGEST_PREFIX):  # the settings checked its form
        return bytes.fromhex(key.removeprefix(TOKEN_DIGEST_PREFIX))
    return hashlib.sha256(key.encode()).digest()


def holds_dev_token(tokens: Mapping[str, str]) -> bool:
    """Whether the published development token (raw or as its digest) is in the table."""
    return DEV_TOKEN in tokens or token_digest(DEV_TOKEN) in tokens


class Authenticator:
    """Maps bearer tokens to owners through a configured token table."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        # Every key is compared as a digest, raw or not, in constant time.
        self._digests = [(_digest_bytes(key), owner) for key, owner in tokens.items()]

    def owner_for(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The owner the call's metadata authenticates, or UnauthenticatedError."""
        header = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        if header is None:
            raise UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
        presented = hashlib.sha256(token.strip().encode()).digest()
        owner = None
        # Compare against every entry so timing reveals nothing about which matched.
        for known, known_owner in self._digests:
            if hmac.compare_digest(known, presented):
                owner = known_owner
        if owner is None:
            raise UnauthenticatedError("unknown token")
        return owner
