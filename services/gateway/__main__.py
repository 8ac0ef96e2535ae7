"""`python -m darkroom.services.gateway`: run the HTTP gateway until SIGTERM."""

from __future__ import annotations

from darkroom import process
from darkroom.services.gateway.app import start


def main() -> None:
    process.main("darkroom-gateway", start)


if __name__ == "__main__":
    main()
