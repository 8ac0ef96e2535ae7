# mypy: disable-error-code="no-untyped-call"
"""`python -m bench.gpu` (`make bench-gpu`): Stable Diffusion 1.5-sized generation speed.

Builds an SD 1.5-shaped pipeline with random weights (UNet, VAE and CLIP text encoder with
SD 1.5's configurations; a tokenizer written locally; nothing downloaded), then times
512x512, 50 steps, batch 1 and 4, eager and torch.compile, through the generator's own
`DiffusersPipeline.generate`. Without a CUDA device it says so and exits 0.
`--cpu-smoke` checks the model-building code on CPU instead: the full-size configurations
on the meta device (parameter counts) and a scaled-down pipeline generating for real.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Published parameter counts of SD 1.5's parts, to check the configurations below.
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


@dataclass(frozen=True)
class Shape:
    """Sizes of the three models; `SD15` is Stable Diffusion 1.5, `SMOKE` a toy version."""

    unet_channels: tuple[int, ...]
    unet_layers: int
    unet_heads: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    norm_groups: int


SD15 = Shape((320, 640, 1280, 1280), 2, 8, (128, 256, 512, 512), 2, 768, 12, 12, 3072, 32)
SMOKE = Shape((32, 64, 64, 64), 1, 2, (32, 32, 32, 32), 1, 32, 2, 4, 37, 32)
CLIP_VOCAB = 49_408


def build(shape: Shape, folder: Path, device: str = "cpu") -> dict[str, Any]:
    """The models (created on `device`), scheduler and tokenizer of an SD 1.5-shaped
    pipeline with random weights."""
    import torch  # noqa: PLC0415 - torch only when asked

    from darkroom.services.generator import tiny_model  # noqa: PLC0415

    tokenizer = tiny_model.tokenizer(folder)
    with torch.device(device):
        models = _models(shape, tokenizer)
    return {**models, "tokenizer": tokenizer, "scheduler": tiny_model.scheduler()}


def _models(shape: Shape, tokenizer: Any) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB,
            hidden_size=shape.text_hidden,
            intermediate_size=shape.text_intermediate,
            num_attention_heads=shape.text_heads,
            num_hidden_layers=shape.text_layers,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=shape.text_hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=shape.unet_layers,
        block_out_channels=shape.unet_channels,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=shape.text_hidden,
        attention_head_dim=shape.unet_heads,
        norm_num_groups=shape.norm_groups,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    )
    vae = AutoencoderKL(
        sample_size=512,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=shape.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=shape.vae_layers,
        norm_num_groups=shape.norm_groups,
        act_fn="silu",
        scaling_factor=0.18215,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def pipeline(parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline  # noqa: PLC0415

    pipe: Any = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def request(size: int, steps: int, batch: int) -> Any:
    from darkroom.services.generator.pipeline import GenerationRequest  # noqa: PLC0415

    return GenerationRequest(
        prompt="a lighthouse at dusk, oil on canvas",
        negative_prompt="",
        width=size,
        height=size,
        steps=steps,
        guidance_scale=7.5,
        seeds=list(range(1234, 1234 + batch)),
    )


def job_requests(size: int, steps: int, jobs: int) -> list[Any]:
    """`jobs` one-image jobs of one shape, each its own prompt and seed (a micro-batch)."""
    from dataclasses import replace  # noqa: PLC0415

    base = request(size, steps, 1)
    return [
        replace(base, prompt=f"{base.prompt}, variation {i}", seeds=[1234 + i]) for i in range(jobs)
    ]


def digests(images: list[Any]) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def cpu_smoke() -> int:
    """Check the full-size configurations (on the meta device) and run a toy pipeline."""
    import torch  # noqa: PLC0415

    from darkroom.services.generator.pipeline import DiffusersPipeline  # noqa: PLC0415

    ok = True
    with tempfile.TemporaryDirectory() as folder:
        full = build(SD15, Path(folder) / "sd15", "meta")
        for name, expected in SD15_PARAMETERS.items():
            count = parameters(full[name])
            match = count == expected
            ok &= match
            print(
                f"SD 1.5 {name}: {count:,} parameters (SD 1.5: {expected:,}) "
                f"{'ok' if match else 'MISMATCH'}"
            )
        torch.manual_seed(0)
        toy = DiffusersPipeline(pipeline(build(SMOKE, Path(folder) / "smoke")), "smoke", "0")
        steps: list[int] = []

        def on_step(step: int, total: int) -> bool:
            steps.append(step)
            return True

        began = time.perf_counter()
        images = toy.generate(request(64, 2, 2), on_step)
        print(
            f"scaled-down pipeline: {len(images)} images {images[0].size} in "
            f"{time.perf_counter() - began:.2f} s, steps reported {steps}"
        )
        ok &= len(images) == 2 and images[0].size == (64, 64) and steps == [1, 2]
        toy.batch_invariant()
        jobs = job_requests(64, 2, 3)
        batched = [image for images in toy.generate_batch(jobs, on_step) for image in images]
        alone = [toy.generate(job, on_step)[0] for job in jobs]
        same = digests(batched) == digests(alone)
        print(f"micro-batch of 3 jobs: byte-identical to each run alone: {same}")
        ok &= same
    print("cpu smoke:", "ok" if ok else "FAILED")
    return 0 if ok else 1


@dataclass
class Timing:
    mode: str
    batch: int
    seconds_per_batch: float
    seconds_per_image: float
    images_per_second: float
    warmup_seconds: float


def measure(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from darkroom.services.generator.pipeline import DiffusersPipeline  # noqa: PLC0415

    if not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA device here (torch.cuda.is_available() is False); "
            "nothing measured. Run it on a GPU node."
        )
        return 0
    card = torch.cuda.get_device_name()
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(
        f"card: {card}; torch {torch.__version__}; {args.dtype}; {args.size}x{args.size}, "
        f"{args.steps} steps",
        flush=True,
    )
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        began = time.perf_counter()
        parts = build(SD15, Path(folder), "cuda")
        pipe = pipeline(parts).to("cuda", dtype)
        print(f"built SD 1.5-sized pipeline in {time.perf_counter() - began:.1f} s", flush=True)
        eager_unet = pipe.unet
        for mode in args.modes.split(","):
            pipe.unet = torch.compile(eager_unet) if mode == "compile" else eager_unet
            runner = DiffusersPipeline(pipe, "sd15-random", "random")
            for batch in (int(b) for b in args.batches.split(",")):
                job = request(args.size, args.steps, batch)
                warm = time.perf_counter()
                for _ in range(args.warmup):
                    runner.generate(job, lambda step, total: True)
                torch.cuda.synchronize()
                warmup_s = time.perf_counter() - warm
                runs = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    runner.generate(job, lambda step, total: True)
                    torch.cuda.synchronize()
                    runs.append(time.perf_counter() - start)
                per_batch = sorted(runs)[len(runs) // 2]
                timing = Timing(
                    mode, batch, per_batch, per_batch / batch, batch / per_batch, warmup_s
                )
                timings.append(timing)
                print(
                    f"{mode:8} batch {batch}: {timing.seconds_per_image:.3f} s/image, "
                    f"{timing.images_per_second:.2f} images/s "
                    f"(median of {args.runs}; warm-up {warmup_s:.1f} s)",
                    flush=True,
                )
        batched_rows = _micro_batches(pipe, args)
    document = {
        "micro_batches": batched_rows,
        "card": card,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "timings": [asdict(t) for t in timings],
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document))
    return 0


def _micro_batches(pipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The generator's micro-batching (`DARKROOM_BATCH_SIZES`): N one-image jobs as one
    batch-invariant call against the same N jobs one by one on the same (batch-invariant)
    pipeline, and whether each image came out the same both ways."""
    import torch  # noqa: PLC0415

    from darkroom.services.generator.pipeline import DiffusersPipeline  # noqa: PLC0415

    runner = DiffusersPipeline(pipe, "sd15-random", "random")
    runner.batch_invariant()  # in place, for good: the last thing measured
    rows = []
    for jobs in (int(b) for b in args.job_batches.split(",")):
        requests = job_requests(args.size, args.steps, jobs)
        for _ in range(args.warmup):
            runner.generate_batch(requests, lambda step, total: True)
        alone_s, batched_s = [], []
        for _ in range(args.runs):  # taking turns: drift hits both alike
            start = time.perf_counter()
            alone = [runner.generate(job, lambda step, total: True)[0] for job in requests]
            torch.cuda.synchronize()
            alone_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            batched = runner.generate_batch(requests, lambda step, total: True)
            torch.cuda.synchronize()
            batched_s.append(time.perf_counter() - start)
        flat = [images[0] for images in batched]
        row = {
            "jobs": jobs,
            "alone_images_per_second": jobs / sorted(alone_s)[len(alone_s) // 2],
            "batched_images_per_second": jobs / sorted(batched_s)[len(batched_s) // 2],
            "byte_identical": digests(flat) == digests(alone),
        }
        row["gain"] = row["batched_images_per_second"] / row["alone_images_per_second"]
        rows.append(row)
        print(
            f"micro-batch of {jobs} jobs (batch-invariant): "
            f"{row['batched_images_per_second']:.2f} images/s against "
            f"{row['alone_images_per_second']:.2f} one by one ({row['gain']:.2f}x); "
            f"byte-identical: {row['byte_identical']}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="check the model code on CPU")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--job-batches", default="4", help="micro-batch sizes in jobs")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # NaNs of random fp16 weights
    from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
    from transformers.utils import logging as transformers_logging  # noqa: PLC0415

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    return cpu_smoke() if args.cpu_smoke else measure(args)


if __name__ == "__main__":
    sys.exit(main())
