"""Making a diffusers pipeline batch-invariant: each image comes out byte for byte the same
whatever else shares its pipeline call.

Batched kernels are not: a matrix product over 8 rows sums in another order than over 2
(GEMM against GEMV, other blocking), a convolution picks its algorithm by the batch's size,
and a transcendental activation's vectorised loop leaves a size-dependent remainder to a
scalar version of the function. CPU float32 runs of the tiny model and of a scaled-down SD
1.5 changed in the last bits when a job shared its call, and PNG bytes with them. So every
`Linear`, `Conv2d`, activation and timestep embedding of the pipeline evaluates each
sample of its batch on its own, as the same call a lone job makes, and the VAE decodes
image by image (diffusers' own slicing). What stays batched is the rest: norms, attention,
residual arithmetic, the scheduler and the per-call overhead, which is where a small
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


# Modules whose math is elementwise but whose kernels are not: a vectorised loop over a
# tensor leaves a remainder, computed by the scalar version of the function (another
# exp, another sigmoid), and where the remainder falls depends on the tensor's size.
_ELEMENTWISE_MODULES = ("diffusers.models.activations", "transformers.activations")
_TIMESTEP_NAMES = {"Timesteps"}  # diffusers' sinusoidal timestep embedding


def _elementwise(module: Any) -> bool:
    import torch  # noqa: PLC0415

    kind = type(module)
    return (
        kind.__module__ == "torch.nn.modules.activation"
        and not isinstance(module, torch.nn.MultiheadAttention)
    ) or kind.__module__ in _ELEMENTWISE_MODULES


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
            if isinstance(module, torch.nn.Conv2d):
                _per_sample(module, 4)
            elif type(module).__name__ in _TIMESTEP_NAMES:
                _per_sample(module, 1)  # a batch of timesteps
            elif isinstance(module, torch.nn.Linear) or _elementwise(module):
                _per_sample(module, 2)
            else:
                continue
            patched += 1
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    return patched
