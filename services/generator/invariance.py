"""Making a diffusers pipeline batch-invariant: each image comes out byte for byte the same
whatever else shares its pipeline call.

Batched kernels are not: a matrix product over 8 rows sums in another order than over 2
(GEMM against GEMV, other blocking), and a convolution picks its algorithm by the batch's
size; a CPU float32 run of the tiny model changed in the last bits when its job shared the
call, and PNG bytes with them. So every `Linear` and `Conv2d` of the pipeline evaluates
each sample of its batch on its own, as the same call a lone job makes, and the VAE decodes
image by image (diffusers' own slicing). What stays batched is everything else: norms,
activations, attention, the scheduler and the per-call overhead, which is where a small
model's batching gain is. A generator turns this on when it batches, for every job it runs,
alone or not (`DiffusersPipeline.batch_invariant`).
"""

from __future__ import annotations

from typing import Any


def _per_sample(module: Any, batched_rank: int) -> None:
    """Run `module` on one sample at a time when its input has `batched_rank` dimensions
    or more (a Linear's rows are independent whatever its rank; an unbatched conv input
    has no batch dimension to split)."""
    import torch  # noqa: PLC0415 - only generator processes pay for torch

    forward = module.forward

    def each_sample(x: Any, *args: Any, **kwargs: Any) -> Any:
        if x.dim() < batched_rank or x.shape[0] == 1:
            return forward(x, *args, **kwargs)
        return torch.cat([forward(x[i : i + 1], *args, **kwargs) for i in range(x.shape[0])])

    module.forward = each_sample


def make_batch_invariant(pipe: Any) -> int:
    """Patch `pipe`'s torch components in place (once); how many layers now run sample by
    sample."""
    import torch  # noqa: PLC0415

    if getattr(pipe, "_darkroom_batch_invariant", False):
        return 0
    pipe._darkroom_batch_invariant = True
    patched = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, torch.nn.Linear):
                _per_sample(module, 2)
            elif isinstance(module, torch.nn.Conv2d):
                _per_sample(module, 4)
            else:
                continue
            patched += 1
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    return patched
