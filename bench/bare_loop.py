"""The bare loop of section 5: `python -m bench.bare_loop MODEL SIZE STEPS IMAGES`.

Loads the model with `services.generator.pipeline.load`, warms it up and calls
`generate()` IMAGES times, all on one dedicated thread as the generator does, and prints
`{"seconds": […]}` (one wall time per image).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from services.generator import pipeline as pipelines

WARMUP = 2
PROMPT = "a lighthouse at dusk"
SEED = 1234
GUIDANCE = 7.5


def request(size: int, steps: int) -> pipelines.GenerationRequest:
    return pipelines.GenerationRequest(
        prompt=PROMPT,
        negative_prompt="",
        width=size,
        height=size,
        steps=steps,
        guidance_scale=GUIDANCE,
        seeds=[SEED],
    )


def run(model: str, size: int, steps: int, images: int) -> list[float]:
    def go_on(step: int, total: int) -> bool:
        return True

    def work() -> list[float]:
        pipe = pipelines.load(model, device="cpu")
        job = request(size, steps)
        for _ in range(WARMUP):
            pipe.generate(job, go_on)
        seconds = []
        for _ in range(images):
            began = time.perf_counter()
            pipe.generate(job, go_on)
            seconds.append(time.perf_counter() - began)
        return seconds

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline") as executor:
        return executor.submit(work).result()


if __name__ == "__main__":
    model, size, steps, images = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps({"seconds": run(model, size, steps, images)}), flush=True)
