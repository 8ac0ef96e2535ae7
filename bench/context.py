"""What every section of the suite gets: the environment, the sizes, a log folder."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import BenchEnv
from bench.options import Options


@dataclass
class Context:
    env: BenchEnv
    options: Options
    log_dir: Path
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        """A progress line on stderr (the reports hold the results)."""
        print(
            f"[bench {time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True
        )
