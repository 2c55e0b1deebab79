"""Superposition of tickets: weight averaging (CAA / CIMA) and re-pruning to the budget.

Pure functions over state dicts (`dict[str, Tensor]`); inputs are never modified. Floating-point
tensors are averaged with the explicit formula (1 - w) * prev + w * new in their own dtype;
integer tensors (e.g. BatchNorm's num_batches_tracked) are taken from the newer state.

At the end, what the `superpose` and `landscape` stages share around them: the model files they
combine (T0 and the tickets, checked against T0's masked layers), and a state put into a model with
its BatchNorm statistics recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from suptickets import runtime
from suptickets.artifacts import model_files
from suptickets.choices import REPRUNE_MODES, SCOPES, SUPERPOSE_METHODS as METHODS
from suptickets.comparison import is_ticket
from suptickets.errors import BadModelFile, MissingInput
from suptickets.sparsity.engine import attach_masks
from suptickets.sparsity.masks import global_topk_masks, topk_mask


State = dict[str, Tensor]


def average(prev: State, new: State, weight_new: float) -> State:
    """(1 - w) * prev + w * new for floating tensors; non-floating tensors are taken from `new`."""
    if prev.keys() != new.keys():
        only_prev = sorted(set(prev) - set(new))
        only_new = sorted(set(new) - set(prev))
        raise ValueError(
            f"state keys differ: only in prev {only_prev}, only in new {only_new}"
        )
    w = float(weight_new)
    out: State = {}
    for key, b in new.items():
        a = prev[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{key}: prev is {a.dtype} {tuple(a.shape)}, new is {b.dtype} {tuple(b.shape)}"
            )
        if b.is_floating_point():
            out[key] = a.detach() * (1.0 - w) + b.detach() * w
        else:
            out[key] = b.detach().clone()
    return out


def step_weight(method: str, k: int, cima_factor: float) -> float:
    """Weight of ticket T_k (k >= 1) when it is added: CAA 1/(k+1), CIMA `cima_factor`."""
    if k < 1:
        raise ValueError(f"ticket index k must be >= 1, got {k}")
    if method == "caa":
        return 1.0 / (k + 1)
    if method == "cima":
        if not 0.0 <= cima_factor <= 1.0:
            raise ValueError(f"superpose.cima_factor must be in [0, 1], got {cima_factor}")
        return float(cima_factor)
    raise ValueError(f"superpose.method must be one of {list(METHODS)}, got {method!r}")


def _check_scope(scope: str) -> None:
    """Raise ValueError for an unknown re-prune scope."""
    if scope not in SCOPES:
        raise ValueError(f"superpose.scope must be one of {list(SCOPES)}, got {scope!r}")


def reprune(
    state: State, masked_keys: Sequence[str], counts: Sequence[int], scope: str
) -> tuple[State, dict[str, Tensor]]:
    """Keep the largest-|w| entries of the masked tensors (global or per-layer budget)."""
    _check_scope(scope)
    masked_keys, counts = list(masked_keys), [int(c) for c in counts]
    if len(masked_keys) != len(counts):
        raise ValueError(f"{len(masked_keys)} masked keys but {len(counts)} counts")
    missing = [key for key in masked_keys if key not in state]
    if missing:
        raise ValueError(f"masked keys not in the state: {missing}")
    tensors = [state[key] for key in masked_keys]
    for key, t, c in zip(masked_keys, tensors, counts):
        if not 0 <= c <= t.numel():
            raise ValueError(f"{key}: count {c} outside [0, {t.numel()}]")
    if scope == "global":
        masks = global_topk_masks(tensors, sum(counts))
    else:
        masks = [topk_mask(t.detach().abs(), c) for t, c in zip(tensors, counts)]
    out = dict(state)
    for key, t, m in zip(masked_keys, tensors, masks):
        out[key] = torch.where(m, t.detach(), 0)
    return out, dict(zip(masked_keys, masks))


def superpose_steps(
    states: Iterable[State],
    *,
    method: str,
    cima_factor: float,
    reprune_mode: str,
    masked_keys: Sequence[str],
    counts: Sequence[int],
    scope: str,
) -> Iterator[tuple[int, State, dict[str, Tensor]]]:
    """Yield (k, S_k, masks_k) for k = 1..M from states T_0..T_M, re-pruning each or at the end."""
    if reprune_mode not in REPRUNE_MODES:
        raise ValueError(
            f"superpose.reprune must be one of {list(REPRUNE_MODES)}, got {reprune_mode!r}"
        )
    step_weight(method, 1, cima_factor)  # validate method and factor before anything runs
    _check_scope(scope)
    masked_keys, counts = list(masked_keys), list(counts)

    def steps() -> Iterator[tuple[int, State, dict[str, Tensor]]]:
        tickets = iter(states)
        try:
            running = next(tickets)
        except StopIteration:
            raise ValueError("superpose_steps needs at least T_0") from None
        for k, ticket in enumerate(tickets, start=1):
            averaged = average(running, ticket, step_weight(method, k, cima_factor))
            pruned, masks = reprune(averaged, masked_keys, counts, scope)
            running = pruned if reprune_mode == "each" else averaged
            yield k, pruned, masks

    return steps()


# ----------------------------------------------------------------------------------------------
# the models on disk, and a state on a model (the superpose and landscape stages)


def read_t0(model: nn.Module) -> tuple[tuple[State, dict[str, Tensor]], list[Path], list[int]]:
    """What superposition starts from: T0's (state, masks) from models/warmup.safetensors, checked
    against `model`; the tickets' files, in order; and the budget, T0's weights per masked tensor
    (in the order of its masks)."""
    tickets = [p for name, p in model_files().items() if is_ticket(name)]
    if not tickets:
        raise MissingInput("models/tickets: no ticket_*.safetensors; run the tickets stage first")
    t0 = runtime.read_model_file("models/warmup.safetensors", model)
    return t0, tickets, [int(m.sum()) for m in t0[1].values()]


def starting_point(cfg: dict) -> tuple:
    """What the superpose and landscape stages start from, on the configured device: the prepared
    splits, the training split in order (BatchNorm recomputation), a fresh model of the configured
    architecture, and `read_t0`'s T0 (state, masks), ticket files and budget."""
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.new_model(cfg, summary, device)
    return (data, data["train"].plain(), model, *read_t0(model))


def read_like_t0(path: str | Path, model: nn.Module, masked_keys: Sequence[str]) -> tuple[State, dict[str, Tensor]]:
    """(state, masks) of a ticket's (or the superposed model's) file, checked against the
    architecture; its masks must cover the same layers as T0's (`masked_keys`)."""
    state, masks = runtime.read_model_file(path, model)
    if set(masks) != set(masked_keys):
        raise BadModelFile(f"{path}: masks {sorted(set(masks) ^ set(masked_keys))[:3]} differ from "
                           f"models/warmup.safetensors's masked layers")
    return state, masks


def load_state(model: nn.Module, state: State, masks: dict[str, Tensor], bn_batches=None) -> nn.Module:
    """Put `state` (every weight of the architecture, as `read_model_file` checks) and its masks into
    `model`; with `bn_batches` (a `Batches`), recompute BatchNorm's running statistics with one pass
    over them in train mode (torch.optim.swa_utils.update_bn)."""
    model.load_state_dict(state, strict=False)  # only the mask buffers are absent
    attach_masks(model, masks)
    if bn_batches is not None:
        update_bn(bn_batches.epoch(), model)
    return model
