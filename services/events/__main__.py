"""`python -m darkroom.services.events`: run the Events service until SIGTERM."""

from __future__ import annotations

from darkroom import process
from darkroom.services.events.app import start


def main() -> None:
    process.main("darkroom-events", start)


if __name__ == "__main__":
    main()
