"""Dynamic sparse training rules: magnitude pruning, random / gradient regrowth, schedules.

Pure functions over tensors. Every selection is exact with ties broken by the lower flat index
(lower position in the concatenation for the global prune); randomness only comes from an
explicit `torch.Generator`. Input masks are never modified: new masks are returned.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from suptickets.choices import GROW_RULES, PRUNE_RATE_DECAYS
from suptickets.sparsity.masks import global_topk_masks, select_largest, select_smallest



def _check_pair(tensor: Tensor, mask: Tensor, name: str) -> None:
    """Raise ValueError unless `mask` is a bool tensor shaped like `tensor`."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")
    if tensor.shape != mask.shape:
        raise ValueError(
            f"{name} shape {tuple(tensor.shape)} differs from mask shape {tuple(mask.shape)}"
        )


def prune_magnitude(weight: Tensor, mask: Tensor, n: int) -> Tensor:
    """New mask without the n active entries of smallest |weight| (ties: lower index first)."""
    _check_pair(weight, mask, "weight")
    flat = mask.reshape(-1)
    active = torch.nonzero(flat).flatten()
    n = max(0, min(int(n), active.numel()))
    magnitudes = weight.detach().reshape(-1)[active].abs()
    drop = active[select_smallest(magnitudes, n)]
    new = flat.clone()
    new[drop] = False
    return new.view(mask.shape)


def grow_random(mask: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """New mask with n more entries chosen uniformly at random among the inactive ones."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")
    flat = mask.reshape(-1)
    inactive = torch.nonzero(~flat).flatten()
    n = max(0, min(int(n), inactive.numel()))
    perm = torch.randperm(inactive.numel(), generator=generator, device=generator.device)
    chosen = inactive[perm[:n].to(inactive.device)]
    new = flat.clone()
    new[chosen] = True
    return new.view(mask.shape)


def grow_by_score(mask: Tensor, score: Tensor, n: int) -> Tensor:
    """New mask with the n inactive entries of largest |score| added (ties: lower index first)."""
    _check_pair(score, mask, "score")
    flat = mask.reshape(-1)
    n = max(0, min(int(n), flat.numel() - int(torch.count_nonzero(flat))))
    # ranked in place over the whole layer: active entries get -1, below every |score| of an inactive
    # one, so the n largest are the same entries, in the same tie order, as among the inactive alone
    magnitudes = score.detach().reshape(-1).abs().masked_fill_(flat, -1)
    return (flat | select_largest(magnitudes, n)).view(mask.shape)


def prune_and_regrow(
    weight: Tensor,
    mask: Tensor,
    n: int,
    rule: str,
    grad: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune n active entries by magnitude, regrow as many by `rule`; return (new_mask, grown)."""
    if rule not in GROW_RULES:
        raise ValueError(f"grow rule must be one of {list(GROW_RULES)}, got {rule!r}")
    if rule == "random" and generator is None:
        raise ValueError("grow rule 'random' needs a torch.Generator")
    if rule == "gradient" and grad is None:
        raise ValueError("grow rule 'gradient' needs the dense gradient")
    pruned = prune_magnitude(weight, mask, n)
    removed = int(torch.count_nonzero(mask)) - int(torch.count_nonzero(pruned))
    if rule == "random":
        new = grow_random(pruned, removed, generator)
    else:
        new = grow_by_score(pruned, grad, removed)
    return new, new & ~pruned


def prune_rate_at(step: int, total_steps: int, rate: float, decay: str) -> float:
    """Prune rate at `step`: constant, or cosine-decayed from `rate` to 0 over `total_steps`."""
    if decay == "constant":
        return float(rate)
    if decay == "cosine":
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive for cosine decay, got {total_steps}")
        t = min(max(step, 0), total_steps) / total_steps
        return float(rate) * (1.0 + math.cos(math.pi * t)) / 2.0
    raise ValueError(
        f"dst.prune_rate_decay must be one of {list(PRUNE_RATE_DECAYS)}, got {decay!r}"
    )


def cubic_density(
    step: int, start_step: int, end_step: int, init_density: float, final_density: float
) -> float:
    """Zhu & Gupta cubic schedule: d_f + (d_i - d_f)(1 - t)^3, t = progress in [0, 1]."""
    if end_step < start_step:
        raise ValueError(f"end_step ({end_step}) must not precede start_step ({start_step})")
    if end_step == start_step:
        t = 1.0 if step >= start_step else 0.0
    else:
        t = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final_density + (init_density - final_density) * (1.0 - t) ** 3


def global_magnitude_prune(
    weights: Sequence[Tensor], masks: Sequence[Tensor], keep: int
) -> list[Tensor]:
    """Keep the `keep` active entries of largest |w| over all layers together; new ⊆ old masks."""
    weights, masks = list(weights), list(masks)
    if len(weights) != len(masks):
        raise ValueError(f"{len(weights)} weights but {len(masks)} masks")
    for w, m in zip(weights, masks):
        _check_pair(w, m, "weight")
    if keep < 0:
        raise ValueError(f"keep must be non-negative, got {keep}")
    active = sum(int(torch.count_nonzero(m)) for m in masks)
    if keep >= active:
        return [m.clone() for m in masks]
    active_idx = [torch.nonzero(m.reshape(-1)).flatten() for m in masks]
    values = [w.detach().reshape(-1)[idx] for w, idx in zip(weights, active_idx)]
    kept = global_topk_masks(values, keep)
    out = []
    for m, idx, k in zip(masks, active_idx, kept):
        new = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        new[idx[k]] = True
        out.append(new.view(m.shape))
    return out
