"""Masks on a model, and the rules that change them during training (a DST method, the cycles'
re-explore).

Masks live with the model as float buffers `<module>.weight_mask` (0/1, the weight's dtype), so
they follow `.to(device)` and `state_dict()`. The hot path is one `torch._foreach_mul_` per step on
the gradients before the optimizer step, plus one on the weights after it for optimizers other than
plain SGD (see `step_keeps_zeros`); the topology decisions are the pure functions of `masks.py` and
`dst.py`.

Order of a step with a topology update, as the reference: backward → the dense gradient kept →
gradients masked → optimizer step → weights masked → prune and regrow (`Topology.update`), regrowth
ranked by the kept dense gradient. A newly grown weight (inactive before the update) is exactly 0
with zero momentum when the update ends, and first moves on the next step. A re-picked weight
(pruned and regrown in the same update) keeps its value and momentum, as in the reference, which
only rewrites the masks (`dst.repicked: keep`); `dst.repicked: zero` resets it like a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..choices import GROW_RULE, REPICKED
from ..schedules import prune_window
from . import MASK_BUFFER
from .dst import cubic_density, global_magnitude_prune, prune_and_regrow, prune_rate_at, random_picks
from .masks import layer_counts, random_mask



def maskable(model: nn.Module, keep_first_dense: bool = False) -> list[tuple[str, nn.Module]]:
    """(parameter name, module) of every Conv2d / Linear weight, in model order."""
    found = [(f"{name}.weight" if name else "weight", m) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    return found[1:] if keep_first_dense else found


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Register (or overwrite) each mask as a buffer beside its weight and zero the weight outside it."""
    modules = dict(model.named_modules())
    for pname, mask in masks.items():
        module = modules[pname.rsplit(".", 1)[0] if "." in pname else ""]
        if mask.shape != module.weight.shape:
            raise ValueError(f"mask for {pname}: shape {tuple(mask.shape)} != weight {tuple(module.weight.shape)}")
        buf = torch.empty_like(module.weight, requires_grad=False)  # the weight's memory format (channels_last)
        buf.copy_(mask)
        if hasattr(module, MASK_BUFFER):
            getattr(module, MASK_BUFFER).copy_(buf)
        else:
            module.register_buffer(MASK_BUFFER, buf)
        with torch.no_grad():
            module.weight.mul_(getattr(module, MASK_BUFFER))


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name → mask buffer (live tensors, in model order)."""
    return {(f"{name}.weight" if name else "weight"): getattr(m, MASK_BUFFER)
            for name, m in model.named_modules() if hasattr(m, MASK_BUFFER)}


def init_masks(model: nn.Module, density: float, distribution: str, keep_first_dense: bool,
               generator: torch.Generator) -> None:
    """Random masks with exactly round(d_l·n_l) weights per layer (ERK or uniform d_l)."""
    layers = maskable(model, keep_first_dense)
    counts = layer_counts([tuple(m.weight.shape) for _, m in layers], density, distribution)
    attach_masks(model, {name: random_mask(m.weight.shape, k, generator, device=m.weight.device)
                         for (name, m), k in zip(layers, counts)})


def step_keeps_zeros(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` leaves a weight that is zero, with a zero gradient and zero
    momentum, at exactly zero: true of plain `torch.optim.SGD` with any lr, momentum, dampening,
    nesterov, weight decay, maximize, foreach or fused setting, since every term of its update
    (±g, g + wd·w, μ·buf + (1 − τ)·g, g + μ·buf, w − lr·d) is then a sum or product of zeros. A
    subclass may override `step`, so only the exact type counts. Other optimizers keep state that
    `set_masks` does not zero (Adam's moments, for one), so their steps may move such a weight."""
    return type(optimizer) is torch.optim.SGD


class Masked:
    """Keeps masked weights, their gradients and momentum at exactly zero (the per-step work).

    Per step: `mask_grads()` before the optimizer step, `apply()` after it. Under plain SGD the
    weights outside the masks stay zero by themselves (`step_keeps_zeros`: their gradients are
    masked, their momentum is zeroed whenever the masks change, and both hold from construction
    on), so `apply()` does nothing there; masking them would multiply ±0 by 0, which changes no bit.
    Code that writes the weights outside the optimizer after construction calls `zero_outside()`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, check_ranks: bool = False):
        self.model, self.optimizer = model, optimizer
        modules = dict(model.named_modules())
        self.names = list(masks_of(model))
        self.masks = list(masks_of(model).values())
        self.weights = [modules[n.rsplit(".", 1)[0] if "." in n else ""].weight for n in self.names]
        self.check_ranks = check_ranks and dist.is_available() and dist.is_initialized()
        self.rank_checks = 0
        self.apply_each_step = not step_keeps_zeros(optimizer)
        self.counts = read_counts(self.masks)  # active entries per layer, on the host (see set_masks)
        self.zero_outside()

    @torch.no_grad()
    def assert_ranks_agree(self) -> None:
        """Under DDP: every rank must hold the same masks and weights (checked by exact sums)."""
        # on the weights' device: NCCL gathers CUDA tensors only
        local = torch.stack([t.double().sum() for pair in zip(self.masks, self.weights) for t in pair])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"rank {dist.get_rank()}: masks or weights differ between ranks after a topology update")
        self.rank_checks += 1

    def dense_grads(self) -> list[torch.Tensor | None]:
        """Copies of the weights' gradients before they are masked: what RigL regrows by."""
        return [None if w.grad is None else w.grad.detach().clone() for w in self.weights]

    def mask_grads(self) -> None:
        grads = [w.grad for w in self.weights]
        if all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.masks)
        elif any(g is not None for g in grads):  # a layer unused in this forward has no gradient
            present = [(g, m) for g, m in zip(grads, self.masks) if g is not None]
            torch._foreach_mul_([g for g, _ in present], [m for _, m in present])

    @torch.no_grad()
    def apply(self) -> None:
        """After an optimizer step: weights outside the masks back to zero (nothing to do under SGD)."""
        if self.apply_each_step:
            torch._foreach_mul_(self.weights, self.masks)

    @torch.no_grad()
    def zero_outside(self) -> None:
        """Weights and momentum outside the masks to zero, whatever the optimizer."""
        if self.weights:
            torch._foreach_mul_(self.weights, self.masks)
        for w, m in zip(self.weights, self.masks):
            buf = self.optimizer.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    @torch.no_grad()
    def set_masks(self, new: Sequence[torch.Tensor], grown: Sequence[torch.Tensor] | None = None,
                  counts: Sequence[int] | None = None) -> None:
        """Install new masks: weights and momentum outside them become zero, and so do the `grown`
        positions (each layer's bool tensor) where given. Positions inactive before are zero already.
        `counts`: the new masks' active entries per layer where the caller knows them; else they are
        read back, all layers in one host sync."""
        for i, (w, m) in enumerate(zip(self.weights, self.masks)):
            m.copy_(new[i])
            keep = m if grown is None else m * (~grown[i]).to(m.dtype)
            w.mul_(keep)
            buf = self.optimizer.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(keep)
        self.counts = list(counts) if counts is not None else read_counts(self.masks)
        if self.check_ranks:
            self.assert_ranks_agree()

    def prune_and_regrow(self, rate: float, rule: str, generator: torch.Generator,
                         grads: Sequence[torch.Tensor | None], repicked: str = "keep") -> None:
        """Per layer, move round(rate·active) weights: magnitude prune, regrow by `rule` (`grads`:
        the dense gradient of each weight, from `dense_grads()`). `repicked` (`dst.repicked`): a weight
        pruned and regrown in this update keeps its value and momentum (`keep`, the reference's rule)
        or restarts at zero like a newly grown one (`zero`).

        No host sync: the layers' counts are known on the host (an update moves weights, it keeps
        each layer's count), each selection is one top-k, and SET's random picks are drawn on the
        CPU generator for all layers first (the same numbers, in the same order, as layer by layer)
        and cross to the device in one copy."""
        if repicked not in REPICKED:
            raise ValueError(f"dst.repicked must be one of {list(REPICKED)}, got {repicked!r}")
        moves = [max(0, min(round(rate * k), k)) for k in self.counts]
        picks = self.draw_picks(moves, generator) if rule == "random" else [None] * len(moves)
        new, regrown = [], []
        for w, m, grad, k, n, p in zip(self.weights, self.masks, grads, self.counts, moves, picks):
            nm, g = prune_and_regrow(w.detach(), m.bool(), n, rule, grad=grad, generator=generator,
                                     active=k, picks=p)
            new.append(nm)
            regrown.append(g)
        self.set_masks(new, regrown if repicked == "zero" else None, counts=self.counts)

    def draw_picks(self, moves: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
        """Each layer's `dst.random_picks` for moving `moves[l]` weights, on the masks' device."""
        sizes = [m.numel() - k + n for m, k, n in zip(self.masks, self.counts, moves)]
        drawn = torch.cat([random_picks(s, n, generator) for s, n in zip(sizes, moves)])
        return list(torch.split(drawn.to(self.masks[0].device), sizes))

    def global_prune(self, keep: int) -> None:
        """Keep the `keep` largest |w| over all layers; the layers' new counts are read in one sync."""
        new = global_magnitude_prune([w.detach() for w in self.weights], [m.bool() for m in self.masks], keep,
                                     active=self.active())
        self.set_masks(new)

    def active(self) -> int:
        return sum(self.counts)

    def total(self) -> int:
        return sum(m.numel() for m in self.masks)


def read_counts(masks: Sequence[torch.Tensor]) -> list[int]:
    """Active entries of each mask, exact (a float32 sum would round past 2^24), in one host read."""
    return torch.stack([torch.count_nonzero(m) for m in masks]).tolist() if masks else []


class Topology(Protocol):
    """A rule that changes the masks during training: `due` is asked after backward (so the loop
    keeps the dense gradient only when an update follows), `update` runs after the optimizer step."""

    def due(self, step: int, epoch: int, i: int) -> bool: ...

    def update(self, masked: Masked, step: int, grads: Sequence[torch.Tensor | None]) -> None: ...


def update_generator(seed: int, step: int) -> torch.Generator:
    """The random source of a topology update (SET's regrowth): seeded by (seed, step), the same on every rank."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class DST:
    """When and how a DST method changes the topology during one training phase (a `Topology`).

    `epochs` is the phase's length (prune-rate decay, stop fraction); GraNet's pruning window is
    in epochs of the whole budget (`schedules.prune_window`), so `sparse_baseline` and `warmup`
    prune on the same absolute schedule.
    """

    method: str
    update_frequency: int
    prune_rate: float
    prune_rate_decay: str
    total_steps: int
    stop_step: int
    seed: int
    target_density: float
    init_density: float | None = None
    prune_start_step: int = 0
    prune_end_step: int = 0
    repicked: str = "keep"

    @classmethod
    def from_config(cls, dst: dict, *, steps_per_epoch: int, epochs: int, budget_epochs: int, seed: int) -> "DST":
        total = steps_per_epoch * epochs
        granet = dst["method"] == "granet"
        first, last = prune_window(dst["init_prune_fraction"], dst["final_prune_fraction"], budget_epochs) \
            if granet else (0, 0)
        return cls(method=dst["method"], update_frequency=dst["update_frequency"],
                   prune_rate=dst["prune_rate"], prune_rate_decay=dst["prune_rate_decay"],
                   total_steps=total, stop_step=int(dst["stop_fraction"] * total), seed=seed,
                   target_density=dst["density"],
                   init_density=dst["init_density"] if granet else None,
                   prune_start_step=first * steps_per_epoch, prune_end_step=last * steps_per_epoch,
                   repicked=dst["repicked"])

    @property
    def initial_density(self) -> float:
        return self.init_density if self.method == "granet" else self.target_density

    def due(self, step: int, epoch: int = 0, i: int = 0) -> bool:
        """Topology updates every `update_frequency` steps (not at step 0), until `stop_step`."""
        return step > 0 and step % self.update_frequency == 0 and step < self.stop_step

    def update(self, masked: Masked, step: int, grads: Sequence[torch.Tensor | None]) -> None:
        """After the optimizer step: GraNet's global magnitude prune to the cubic schedule's density,
        then the per-layer prune and regrow (by `grads`, the step's dense gradient, or at random)."""
        if self.method == "granet" and step >= self.prune_start_step:
            d = cubic_density(step, self.prune_start_step, self.prune_end_step,
                              self.init_density, self.target_density)
            keep = round(d * masked.total())
            if masked.active() > keep:
                masked.global_prune(keep)
        rate = prune_rate_at(step, self.total_steps, self.prune_rate, self.prune_rate_decay)
        masked.prune_and_regrow(rate, GROW_RULE[self.method], update_generator(self.seed, step), grads,
                                self.repicked)

    def finish(self, masked: Masked) -> None:
        """GraNet: make sure the phase ends at the budget even if no update fell after the schedule's end."""
        if self.method == "granet":
            keep = round(self.target_density * masked.total())
            if masked.active() > keep:
                masked.global_prune(keep)


@dataclass
class ReExplore:
    """Sup-tickets' re-explore (a `Topology`): on the first step of every cycle of `length` epochs from
    `first_epoch`, move `rate` of each layer's active weights, regrown by the step's dense gradient
    (RigL, GraNet) or at random (SET)."""

    first_epoch: int
    length: int
    rate: float
    method: str
    seed: int
    repicked: str = "keep"

    def due(self, step: int, epoch: int, i: int) -> bool:
        return self.rate > 0 and i == 0 and (epoch - self.first_epoch) % self.length == 0

    def update(self, masked: Masked, step: int, grads: Sequence[torch.Tensor | None]) -> None:
        masked.prune_and_regrow(self.rate, GROW_RULE[self.method], update_generator(self.seed, step), grads,
                                self.repicked)
