"""Caller identity: `authorization: Bearer <token>` metadata mapped to an owner."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from darkroom.errors import UnauthenticatedError


class Authenticator:
    """Maps bearer tokens to owners through a configured token table."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = [(token.encode(), owner) for token, owner in tokens.items()]

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
        presented = token.strip().encode()
        owner = None
        # Compare against every token in constant time so timing reveals nothing.
        for known, known_owner in self._tokens:
            if hmac.compare_digest(known, presented):
                owner = known_owner
        if owner is None:
            raise UnauthenticatedError("unknown token")
        return owner
