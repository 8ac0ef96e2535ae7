"""`make bench-gpu` runs only on GPU nodes; its model code is checked here on the CPU."""

from __future__ import annotations

import subprocess
import sys


def test_gpu_bench_builds_sd15_shapes_and_generates_on_cpu() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cpu smoke: ok" in result.stdout
    assert "SD 1.5 unet: 859,520,964 parameters" in result.stdout
