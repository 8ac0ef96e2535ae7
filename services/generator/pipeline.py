"""Text-to-image pipelines behind one small interface.

`DiffusersPipeline` loads any diffusers text-to-image pipeline (a local folder or a Hugging
Face id) once; `FakePipeline` paints flat colours at a set pace for tests, which inject
it (a deployed generator cannot select it). Both are called on one dedicated thread: torch
runs fastest when load, warm-up and generation all happen on the same thread.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from PIL import Image

from darkroom.services.generator.invariance import make_batch_invariant
from darkroom.spec import Spec

# (completed step, total steps) -> whether to go on.
StepCallback = Callable[[int, int], bool]


@dataclass(frozen=True)
class GenerationRequest:
    """What one attempt generates: one image per seed (`num_images` of them from `seed`)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: list[int]

    @classmethod
    def for_spec(cls, spec: Spec) -> GenerationRequest:
        """The request for a job's spec: image `i` gets seed `seed + i` (mod 2**32); the
        model is the generator's own."""
        seeds = [(spec.seed + index) % SEED_SPACE for index in range(spec.num_images)]
        given = spec.values()
        return cls(**{name: given[name] for name in REQUEST_FIELDS if name != "seeds"}, seeds=seeds)


REQUEST_FIELDS = tuple(field.name for field in fields(GenerationRequest))

SEED_SPACE = 2**32


class PipelineInterrupted(Exception):
    """The pipeline stopped early because the step callback said so."""


class Pipeline(Protocol):
    """A loaded model that turns a request into images."""

    model_id: str
    model_version: str

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        """Generate (blocking). Raises `PipelineInterrupted` when `on_step` returned False."""


class BatchPipeline(Pipeline, Protocol):
    """A pipeline that can run several requests sharing `darkroom.spec.BATCH_SHARED` in one
    call."""

    def batch_invariant(self) -> None:
        """From now on, each image is the same whatever shares its call (once, at start)."""

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback
    ) -> list[list[Image.Image]]:
        """Each request's images, in order (blocking; `PipelineInterrupted` as above)."""


def can_batch(pipeline: Pipeline) -> bool:
    """Whether `pipeline` runs batches (test fakes may not)."""
    return hasattr(pipeline, "generate_batch")


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(str(path.relative_to(folder)).encode())
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _hub_revision(model_id: str, revision: str) -> str:
    """The commit of a Hugging Face model in the local cache, or the pinned revision."""
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

    cached = try_to_load_from_cache(model_id, "model_index.json", revision=revision or None)
    if isinstance(cached, str):
        return Path(cached).parent.name
    return revision or "unknown"


class DiffusersPipeline:
    """A diffusers text-to-image pipeline on one device."""

    def __init__(self, pipe: Any, model_id: str, model_version: str) -> None:
        self._pipe = pipe
        self.model_id = model_id
        self.model_version = model_version

    @classmethod
    def load(
        cls, model: str, *, revision: str = "", device: str = "auto", dtype: str = "auto"
    ) -> DiffusersPipeline:
        """Load `model` (a folder or a Hugging Face id) onto `device`."""
        # Keep the process's stderr JSON: transformers' notices (that torchvision is absent,
        # which a text-to-image pipeline does not need) and tqdm bars go unless asked for.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch  # noqa: PLC0415 - only generator processes pay for torch
        from diffusers import AutoPipelineForText2Image  # noqa: PLC0415
        from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
        from transformers.utils import logging as transformers_logging  # noqa: PLC0415

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        folder = Path(model)
        local = folder.is_dir()
        pipe = AutoPipelineForText2Image.from_pretrained(
            str(folder) if local else model,
            dtype=getattr(torch, dtype),
            revision=None if local else (revision or None),
            local_files_only=local,
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        version = _weights_digest(folder) if local else _hub_revision(model, revision)
        return cls(pipe, str(folder.resolve()) if local else model, version)

    def batch_invariant(self) -> None:
        make_batch_invariant(self._pipe)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback
    ) -> list[list[Image.Image]]:
        """One call for every image of `requests` (which share `spec.BATCH_SHARED`): prompts
        repeated once per image, one CPU generator per image (seeds reproduce on any
        device), so that with `batch_invariant` each image is what its request alone
        would give."""
        import torch  # noqa: PLC0415

        first = requests[0]
        prompts = [r.prompt for r in requests for _ in r.seeds]
        negatives = [r.negative_prompt for r in requests for _ in r.seeds]
        generators = [torch.Generator("cpu").manual_seed(s) for r in requests for s in r.seeds]

        def callback(
            pipe: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            total = int(getattr(pipe, "num_timesteps", first.steps) or first.steps)
            if not on_step(step_index + 1, total):
                # Raised, not diffusers' `_interrupt` flag: that one still runs the VAE
                # decode on latents nobody wants (seconds for large images on a CPU).
                raise PipelineInterrupted("the pipeline was interrupted")
            return kwargs

        result = self._pipe(
            prompt=prompts,
            # An empty negative prompt is what diffusers uses for None.
            negative_prompt=negatives if any(negatives) else None,
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=1,
            generator=generators,
            callback_on_step_end=callback,
            output_type="pil",
        )
        images: list[Image.Image] = result.images
        split, at = [], 0
        for r in requests:
            split.append(images[at : at + len(r.seeds)])
            at += len(r.seeds)
        return split


class FakePipeline:
    """Flat-colour images at a set pace, for tests: `from_query("step_ms=20&fail=raise")`.

    `fail=raise` raises on every run (a poison job); `fail=exit` ends the whole process
    (a job that kills its worker); `fail=hang` stops calling back (no heartbeats).
    """

    def __init__(self, step_seconds: float, fail: str = "") -> None:
        self.model_id = "fake"
        self.model_version = f"fake-{step_seconds:g}s"
        self._step_seconds = step_seconds
        self._fail = fail

    @classmethod
    def from_query(cls, text: str) -> FakePipeline:
        """`step_ms=N` (default 10) and `fail=raise|exit|hang` (default none)."""
        query = parse_qs(text)
        return cls(float(query.get("step_ms", ["10"])[0]) / 1000, query.get("fail", [""])[0])

    def batch_invariant(self) -> None:
        pass  # flat colours are

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback
    ) -> list[list[Image.Image]]:
        request = requests[0]
        for step in range(1, request.steps + 1):
            time.sleep(self._step_seconds)
            if self._fail == "raise":
                raise RuntimeError("the fake pipeline was told to fail")
            if self._fail == "exit":
                os._exit(70)
            if self._fail == "hang":
                time.sleep(3600)
            if not on_step(step, request.steps):
                raise PipelineInterrupted("the pipeline was interrupted")
        return [
            [Image.new("RGB", (r.width, r.height), _colour(r.prompt, seed)) for seed in r.seeds]
            for r in requests
        ]


def _colour(prompt: str, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}:{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def load(model: str, *, revision: str = "", device: str = "auto", dtype: str = "auto") -> Pipeline:
    """The pipeline for a model path: a diffusers folder or a Hugging Face id."""
    return DiffusersPipeline.load(model, revision=revision, device=device, dtype=dtype)
