"""The bare loop of section 5: `python -m bench.bare_loop MODEL`.

Loads the model with `darkroom.services.generator.pipeline.load`, as the generator does, then
reads one request a line from stdin, `SIZE STEPS IMAGES`, and answers each with a line
`{"seconds": […]}` (one wall time per image): `generate()` called IMAGES times on one
dedicated thread, as the generator calls it, after WARMUP images the first time a shape
is asked for. It stays loaded between requests so that the section can interleave it with
the system run, and noise drifting over the minutes hits both sides alike.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from darkroom.services.generator import pipeline as pipelines

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


def go_on(step: int, total: int) -> bool:
    return True


class BareLoop:
    """The pipeline and the shapes it has been warmed up for."""

    def __init__(self, model: str) -> None:
        self.pipe = pipelines.load(model, device="cpu")
        self.warm: set[tuple[int, int]] = set()

    def run(self, size: int, steps: int, images: int) -> list[float]:
        job = request(size, steps)
        if (size, steps) not in self.warm:
            for _ in range(WARMUP):
                self.pipe.generate(job, go_on)
            self.warm.add((size, steps))
        seconds = []
        for _ in range(images):
            began = time.perf_counter()
            self.pipe.generate(job, go_on)
            seconds.append(time.perf_counter() - began)
        return seconds


def main(model: str) -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline") as executor:
        loop = executor.submit(BareLoop, model).result()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            size, steps, images = map(int, line.split())
            seconds = executor.submit(loop.run, size, steps, images).result()
            print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
