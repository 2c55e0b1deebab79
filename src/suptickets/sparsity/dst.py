"""Dynamic sparse training rules: magnitude pruning, random / gradient regrowth, schedules.

Pure functions over tensors. Every selection is exact with ties broken by the lower flat index
(lower position in the concatenation for the global prune), and is one `torch.topk` over distinct
keys (`magnitude_keys`); given the masks' counts (`active`, known on the host), a selection reads
nothing back from the device. Randomness only comes from an explicit `torch.Generator`. Input masks
are never modified: new masks are returned.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from suptickets.choices import GROW_RULES, PRUNE_RATE_DECAYS


def _check_pair(tensor: Tensor, mask: Tensor, name: str) -> None:
    """Raise ValueError unless `mask` is a bool tensor shaped like `tensor`."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")
    if tensor.shape != mask.shape:
        raise ValueError(
            f"{name} shape {tuple(tensor.shape)} differs from mask shape {tuple(mask.shape)}"
        )


# A selection ranks int64 keys that are all distinct: the magnitude's float32 bits (an order-preserving
# integer for |x| >= 0) in the high 32 bits, the flat index (or its complement) in the low 32, so one
# `torch.topk` picks exactly the entries a stable sort would, ties broken by index, with no threshold
# to read back and no tie fix-up: no host sync.
_INDEX_BITS = 32
_LAST = (1 << _INDEX_BITS) - 1
_ABOVE_ALL = torch.iinfo(torch.int64).max  # (magnitude keys are < 2**63: bit 31 of |x| is 0)
_EXACT_TO_FP32 = (torch.float32, torch.float16, torch.bfloat16)


def magnitude_keys(values: Tensor, ties: str) -> Tensor:
    """Distinct int64 keys over flat `values`, ordered as |value| and then by index: `ties="lower_first"`
    puts the lower index first (smaller key) among equal magnitudes, `"lower_last"` last. A NaN's
    magnitude ranks above +inf (the loop refuses non-finite values before an update)."""
    if values.dtype not in _EXACT_TO_FP32:
        raise ValueError(f"ranked values must be one of {[str(d) for d in _EXACT_TO_FP32]}, got {values.dtype}")
    if ties not in ("lower_first", "lower_last"):
        raise ValueError(f"ties must be one of ['lower_first', 'lower_last'], got {ties!r}")
    flat = values.detach().reshape(-1)
    if flat.numel() > _LAST + 1:
        raise ValueError(f"cannot rank more than {_LAST + 1} entries at once, got {flat.numel()}")
    bits = flat.abs().to(torch.float32).view(torch.int32).to(torch.int64) << _INDEX_BITS
    index = torch.arange(flat.numel(), device=flat.device)
    return bits | (index if ties == "lower_first" else _LAST - index)


def _active_count(mask: Tensor, active: int | None) -> int:
    """The mask's number of True entries: `active` where the caller knows it (no device read)."""
    return int(torch.count_nonzero(mask)) if active is None else int(active)


def prune_magnitude(weight: Tensor, mask: Tensor, n: int, active: int | None = None) -> Tensor:
    """New mask without the n active entries of smallest |weight| (ties: lower index first).
    `active`: the mask's count if known (then no host sync)."""
    _check_pair(weight, mask, "weight")
    flat = mask.reshape(-1)
    n = max(0, min(int(n), _active_count(flat, active)))
    new = flat.clone()
    if n:
        keys = magnitude_keys(weight, "lower_first").masked_fill_(~flat, _ABOVE_ALL)
        new[torch.topk(keys, n, largest=False, sorted=False).indices] = False
    return new.view(mask.shape)


def random_picks(inactive: int, n: int, generator: torch.Generator) -> Tensor:
    """Bool [inactive] on the generator's device: n of `inactive` ranks chosen uniformly (the first n
    of one `randperm`), n clamped to [0, inactive]."""
    n = max(0, min(int(n), inactive))
    perm = torch.randperm(inactive, generator=generator, device=generator.device)
    picks = torch.zeros(inactive, dtype=torch.bool, device=generator.device)
    picks[perm[:n]] = True
    return picks


def grow_picked(mask: Tensor, picks: Tensor) -> Tensor:
    """New mask with the inactive entries turned on whose rank among the inactive ones (in index
    order) is picked in `picks` (bool, one per inactive entry, on the mask's device)."""
    flat = mask.reshape(-1)
    if picks.numel() == 0:
        return flat.clone().view(mask.shape)
    rank = (torch.cumsum(~flat, 0) - 1).clamp_(0, picks.numel() - 1)
    return (flat | (~flat & picks[rank])).view(mask.shape)


def grow_random(mask: Tensor, n: int, generator: torch.Generator, active: int | None = None) -> Tensor:
    """New mask with n more entries chosen uniformly at random among the inactive ones."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")
    picks = random_picks(mask.numel() - _active_count(mask, active), n, generator)
    return grow_picked(mask, picks.to(mask.device))


def grow_by_score(mask: Tensor, score: Tensor, n: int, active: int | None = None) -> Tensor:
    """New mask with the n inactive entries of largest |score| added (ties: lower index first)."""
    _check_pair(score, mask, "score")
    flat = mask.reshape(-1)
    n = max(0, min(int(n), flat.numel() - _active_count(flat, active)))
    new = flat.clone()
    if n:  # active entries get -1, below every inactive entry's key
        keys = magnitude_keys(score, "lower_last").masked_fill_(flat, -1)
        new[torch.topk(keys, n, sorted=False).indices] = True
    return new.view(mask.shape)


def _check_rule(rule: str, grad: Tensor | None, generator: torch.Generator | None, picks: Tensor | None) -> None:
    if rule not in GROW_RULES:
        raise ValueError(f"grow rule must be one of {list(GROW_RULES)}, got {rule!r}")
    if rule == "random" and generator is None and picks is None:
        raise ValueError("grow rule 'random' needs a torch.Generator")
    if rule == "gradient" and grad is None:
        raise ValueError("grow rule 'gradient' needs the dense gradient")


def prune_and_regrow(
    weight: Tensor,
    mask: Tensor,
    n: int,
    rule: str,
    grad: Tensor | None = None,
    generator: torch.Generator | None = None,
    active: int | None = None,
    picks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune n active entries by magnitude, regrow as many by `rule`; return (new_mask, grown).

    `active`: the mask's count if known; with it (and, for "random", `picks` from
    `random_picks(numel - active + n, n, generator)` already on the mask's device) no host sync."""
    _check_rule(rule, grad, generator, picks)
    active = _active_count(mask, active)
    n = max(0, min(int(n), active))
    pruned = prune_magnitude(weight, mask, n, active)
    if rule == "random":
        if picks is None:
            picks = random_picks(mask.numel() - active + n, n, generator).to(mask.device)
        new = grow_picked(pruned, picks)
    else:
        new = grow_by_score(pruned, grad, n, active - n)
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
    weights: Sequence[Tensor], masks: Sequence[Tensor], keep: int, active: int | None = None
) -> list[Tensor]:
    """Keep the `keep` active entries of largest |w| over all layers together (ties: the earlier in
    the concatenation stays); new ⊆ old masks. `active`: their total count if known (no host sync)."""
    weights, masks = list(weights), list(masks)
    if len(weights) != len(masks):
        raise ValueError(f"{len(weights)} weights but {len(masks)} masks")
    for w, m in zip(weights, masks):
        _check_pair(w, m, "weight")
    if keep < 0:
        raise ValueError(f"keep must be non-negative, got {keep}")
    if active is None:
        active = sum(int(torch.count_nonzero(m)) for m in masks)
    if keep >= active:
        return [m.clone() for m in masks]
    flats = [m.reshape(-1) for m in masks]
    keys = magnitude_keys(torch.cat([w.detach().reshape(-1) for w in weights]), "lower_last")
    keys.masked_fill_(~torch.cat(flats), _ABOVE_ALL)
    new = torch.cat(flats)
    new[torch.topk(keys, active - keep, largest=False, sorted=False).indices] = False
    return [n.view(m.shape) for n, m in zip(torch.split(new, [f.numel() for f in flats]), masks)]
