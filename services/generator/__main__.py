"""`python -m darkroom.services.generator`: run one Generator (one per GPU) until SIGTERM."""

from __future__ import annotations

from darkroom import process
from darkroom.services.generator.worker import start


def main() -> None:
    process.main("darkroom-generator", start)


if __name__ == "__main__":
    main()
