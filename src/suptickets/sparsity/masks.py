"""Mask math: ERK / uniform layer budgets, random and top-k masks, counting.

Every function is pure and deterministic: randomness only comes from an explicit
`torch.Generator`, and every top-k selection is exact, breaking ties by the lower flat index.
Masks are `torch.bool` tensors shaped like the weight they mask.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..choices import DISTRIBUTIONS


# Above this many entries, the k-th largest value is found by bracketing it with a strided
# sample first (a few linear passes) instead of one large top-k over everything.
_SAMPLED_KTH_MIN = 1 << 20
_SAMPLE_SIZE = 1 << 16


def _check_density(density: float) -> None:
    """Raise ValueError unless 0 < density <= 1."""
    if not (isinstance(density, (int, float)) and 0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density!r}")


def _check_shapes(shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Return the shapes as tuples; raise ValueError for an empty list or an empty shape."""
    out = [tuple(int(s) for s in shape) for shape in shapes]
    if not out:
        raise ValueError("need at least one layer shape")
    for shape in out:
        if len(shape) == 0 or any(s <= 0 for s in shape):
            raise ValueError(f"layer shapes must have positive dimensions, got {shape}")
    return out


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Per-layer densities of the Erdős–Rényi-Kernel distribution at overall `density`."""
    _check_density(density)
    dims = _check_shapes(shapes)
    if density == 1.0:
        return [1.0] * len(dims)
    sizes = [math.prod(shape) for shape in dims]
    raw = [sum(shape) / n for shape, n in zip(dims, sizes)]
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        sparse = [i for i in range(len(dims)) if i not in dense]
        if not sparse:
            break
        left = budget - sum(sizes[i] for i in dense)
        eps = left / sum(raw[i] * sizes[i] for i in sparse)
        newly_dense = {i for i in sparse if eps * raw[i] >= 1.0}
        if not newly_dense:
            break
        dense |= newly_dense
    if len(dense) == len(dims):
        return [1.0] * len(dims)
    return [1.0 if i in dense else eps * raw[i] for i in range(len(dims))]


def layer_counts(
    shapes: Sequence[Sequence[int]], density: float, distribution: str
) -> list[int]:
    """Exact kept count per layer: round(d_l * n_l) clamped to [1, n_l]."""
    dims = _check_shapes(shapes)
    if distribution == "erk":
        densities = erk_densities(dims, density)
    elif distribution == "uniform":
        _check_density(density)
        densities = [float(density)] * len(dims)
    else:
        raise ValueError(
            f"dst.distribution must be one of {list(DISTRIBUTIONS)}, got {distribution!r}"
        )
    counts = []
    for shape, d in zip(dims, densities):
        n = math.prod(shape)
        counts.append(min(n, max(1, round(d * n))))
    return counts


def random_mask(
    shape: Sequence[int],
    k: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bool mask of `shape` with exactly k True at uniformly random positions."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] for shape {shape}, got {k}")
    perm = torch.randperm(n, generator=generator, device=generator.device)
    mask = torch.zeros(n, dtype=torch.bool, device=generator.device)
    mask[perm[:k]] = True
    return mask.view(shape).to(device if device is not None else generator.device)


def _kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest entry (1 <= k <= numel) of a 1-D tensor, as a 0-d tensor, without a sort."""
    n = values.numel()
    if n >= _SAMPLED_KTH_MIN:
        # Bracket the answer between two order statistics of a strided sample, with a margin of
        # ~6 standard deviations of the sample rank; verify the bracket exactly and only run the
        # selection on the few entries inside it. Falls back to a full top-k if the bracket misses.
        step = (n // _SAMPLE_SIZE) | 1
        sample = torch.sort(values[::step], descending=True).values
        m = sample.numel()
        q = k / n
        margin = 6.0 * math.sqrt(m * q * (1.0 - q)) + 8.0
        hi = sample[max(1, math.floor(q * m - margin)) - 1]
        lo = sample[min(m, math.ceil(q * m + margin)) - 1]
        n_above = int(torch.count_nonzero(values > hi))
        need = k - n_above
        if need > 0 and bool(hi == lo):  # heavy ties (e.g. all zeros): no selection needed
            if int(torch.count_nonzero(values == hi)) >= need:
                return hi
        elif need > 0:
            candidates = values[(values <= hi) & (values >= lo)]
            if candidates.numel() >= need:
                return torch.topk(candidates, need, sorted=False).values.min()
    return torch.topk(values, k, sorted=False).values.min()


def _check_no_nan(values: Tensor) -> None:
    """Raise ValueError if a floating `values` holds a NaN (a one-pass sum screens for it first)."""
    if values.is_floating_point() and values.numel() and bool(torch.isnan(values.sum())):
        if bool(torch.isnan(values).any()):  # (a NaN sum may also come from +inf and -inf)
            raise ValueError("cannot rank values containing NaN")


def select_largest(values: Tensor, k: int) -> Tensor:
    """Bool 1-D mask of the exact k largest entries of 1-D `values`; ties: lower index wins."""
    n = values.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    _check_no_nan(values)
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    threshold = _kth_largest(values, k)
    keep = values >= threshold
    extra = int(torch.count_nonzero(keep)) - k
    if extra > 0:  # more entries tie at the threshold than places left: the later ones drop out
        ties = torch.nonzero(values == threshold).flatten()
        keep[ties[ties.numel() - extra:]] = False
    return keep


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Bool mask shaped like `scores` of its exact k largest entries; ties: lower index wins."""
    flat = scores.detach().reshape(-1)
    return select_largest(flat, k).view(scores.shape)


def global_topk_masks(tensors: Sequence[Tensor], k: int) -> list[Tensor]:
    """Masks keeping the exact k largest |values| over all tensors together; ties: earlier wins.

    Only the nonzero entries are ranked (superposed tickets are mostly zeros): a zero comes after
    all of them, so the zeros that fill up k, if any, are the first ones.
    """
    tensors = list(tensors)
    if not tensors:
        if k != 0:
            raise ValueError(f"k must be 0 for an empty list of tensors, got {k}")
        return []
    sizes = [t.numel() for t in tensors]
    n = sum(sizes)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)  # (a widening cast: nonzero stays nonzero)
    flats = [t.detach().reshape(-1) for t in tensors]
    found = [torch.nonzero(f).flatten() for f in flats]
    values = torch.cat([f[i].to(dtype).abs() for f, i in zip(flats, found)])
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    positions = torch.cat([i + s for i, s in zip(found, starts)])
    keep = torch.zeros(n, dtype=torch.bool, device=tensors[0].device)
    if k <= values.numel():
        keep[positions[select_largest(values, k)]] = True
    else:
        _check_no_nan(values)
        keep[positions] = True
        keep[torch.nonzero(~keep).flatten()[: k - values.numel()]] = True
    return [m.view(t.shape) for m, t in zip(torch.split(keep, sizes), tensors)]


def count(masks: Iterable[Tensor]) -> int:
    """Number of active (True) entries over all masks."""
    return sum(int(torch.count_nonzero(m)) for m in masks)


def densities(masks: Mapping[str, Tensor]) -> tuple[float, dict[str, float]]:
    """The density of a model, counted from its masks (parameter name → mask, 0/1 or bool): overall
    (active entries over all masks / their total size) and per layer; (1.0, {}) without masks
    (nothing is masked: a dense model)."""
    if not masks:
        return 1.0, {}
    active = {name: int(torch.count_nonzero(m)) for name, m in masks.items()}
    layers = {name: active[name] / m.numel() for name, m in masks.items()}
    return sum(active.values()) / sum(m.numel() for m in masks.values()), layers


def jaccard(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Intersection over union of two mask sets (1.0 when both are empty)."""
    if len(a) != len(b):
        raise ValueError(f"mask sets differ in length: {len(a)} vs {len(b)}")
    inter = union = 0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise ValueError(f"mask shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        inter += int(torch.count_nonzero(x & y))
        union += int(torch.count_nonzero(x | y))
    return 1.0 if union == 0 else inter / union
