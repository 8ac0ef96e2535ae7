"""`python -m darkroom.services.jobs`: run the Jobs service until SIGTERM."""

from __future__ import annotations

from darkroom import process
from darkroom.services.jobs.app import start


def main() -> None:
    process.main("darkroom-jobs", start)


if __name__ == "__main__":
    main()
