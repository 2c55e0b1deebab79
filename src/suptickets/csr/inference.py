"""A sparse file as an eval-mode inference module on CPU, and the check that it predicts what the
masked model predicts."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..choices import KERNELS
from ..errors import VerificationFailed
from .files import read
from .layers import SparseConv2d, SparseLinear, direct_calls, sparse_layers
from .timing import choose_kernels, medians

TOLERANCE = 1e-4  # max |logit difference| allowed between the exported and the masked model


def load(path: str | Path, kernel: str = "auto", batch_sizes: Sequence[int] = (1, 256), repeats: int = 10,
         model: nn.Module | None = None, timer: Callable | None = None) -> torch.fx.GraphModule:
    """The sparse file at `path` as an eval-mode inference module on CPU.

    `kernel`: "csr", "dense", or "auto" (time both for each CSR layer, here, at each of
    `batch_sizes`, median of `repeats`, keep the faster, then keep dense kernels at a batch size
    where the whole model runs faster so; `kernels(module)` tells the choice, `module.layer_seconds`
    and `module.model_seconds` the times).
    `model`: the bare architecture the file must fit (default: the one its metadata records).
    `timer`: how "auto" times the kernels (default `medians`; see `choose_kernels`).
    Raises SparseFileError naming the file and the key when the file does not fit the architecture
    or an index array is corrupted."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: not one of {', '.join(KERNELS)}")
    arch, folded, csr, dense = read(path, model)
    for key, weight in csr.items():
        name = key[: -len(".weight")]
        parent, _, child = name.rpartition(".")
        module = folded.get_submodule(name)
        bias = dense.pop(f"{name}.bias", None)
        shape = tuple(module.weight.shape)
        layer = SparseLinear(weight, bias, shape) if isinstance(module, nn.Linear) \
            else SparseConv2d(weight, bias, shape, module)
        setattr(folded.get_submodule(parent) if parent else folded, child, layer)
    folded.load_state_dict(dense, strict=True, assign=True)
    folded.eval().requires_grad_(False)
    folded.layer_seconds, folded.model_seconds = {}, {}
    if kernel == "auto":
        folded.layer_seconds, folded.model_seconds = choose_kernels(folded, arch["input_shape"], batch_sizes, repeats,
                                                                     timer=timer or medians)
    else:
        for layer in sparse_layers(folded).values():
            layer.use({int(b): kernel for b in batch_sizes})
    direct_calls(folded)
    return folded


@torch.inference_mode()
def outputs(model: nn.Module, batches: Iterable[Tensor]) -> Tensor:
    """The model's outputs (eval mode) over all batches, concatenated."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x).float() for x in batches])
    finally:
        model.train(was_training)


def verify(reference: Tensor, logits: Tensor, what: str, tolerance: float = TOLERANCE) -> float:
    """Raise VerificationFailed unless `logits` give the same argmax as `reference` on every sample
    and differ by at most `tolerance`; returns the largest difference."""
    diff = float((reference - logits).abs().max()) if reference.numel() else 0.0
    differ = int((reference.argmax(1) != logits.argmax(1)).sum())
    if differ or not diff <= tolerance:
        raise VerificationFailed(f"{what}: {differ} of {reference.shape[0]} predictions differ from the masked "
                                 f"model's, max |logit difference| {diff:.3g} (allowed {tolerance:g})")
    return diff
