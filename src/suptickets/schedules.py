"""Epoch budget split, GraNet's pruning window and learning-rate schedules (multi-step for phases,
with an optional linear warm-up, and triangular for cycles): the lr of every step as the training
phases set it (`step_lr`, `cycle_lr`), which the report rebuilds with the same functions."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from .errors import ConfigError

# Products like 0.29 * 100 come out as 28.999999999999996 in floating point; this slack makes
# floor() land on the integer a person would compute by hand.
_FLOOR_EPS = 1e-9


def epoch_split(epochs: int, cycle_rate: float, cycle_epochs: int) -> tuple[int, int, int]:
    """(warmup_epochs, cyclic_epochs, n_tickets) for E epochs, cycle rate c, cycle length L."""
    if epochs <= 0:
        raise ConfigError(f"train.epochs must be positive, got {epochs}")
    if cycle_epochs <= 0:
        raise ConfigError(f"tickets.cycle_epochs must be positive, got {cycle_epochs}")
    if cycle_rate < 0:
        raise ConfigError(f"tickets.cycle_rate must be non-negative, got {cycle_rate}")
    n_tickets = math.floor(epochs * cycle_rate / cycle_epochs + _FLOOR_EPS)
    cyclic = n_tickets * cycle_epochs
    warmup = epochs - cyclic
    settings = (
        f"tickets.cycle_rate={cycle_rate}, tickets.cycle_epochs={cycle_epochs}, "
        f"train.epochs={epochs}"
    )
    if n_tickets == 0:
        raise ConfigError(
            f"no tickets: floor(train.epochs * tickets.cycle_rate / tickets.cycle_epochs) is 0 "
            f"with {settings}; raise tickets.cycle_rate or train.epochs, or lower "
            f"tickets.cycle_epochs"
        )
    if warmup <= 0:
        raise ConfigError(
            f"no warmup: the {cyclic} cyclic epochs leave {warmup} of train.epochs for warmup "
            f"with {settings}; lower tickets.cycle_rate or tickets.cycle_epochs"
        )
    return warmup, cyclic, n_tickets


def split_of(cfg: Mapping) -> tuple[int, int, int]:
    """`epoch_split` of a config: (warmup epochs, cyclic epochs, number of tickets) of `train.epochs`,
    `tickets.cycle_rate` and `tickets.cycle_epochs`."""
    t = cfg["tickets"]
    return epoch_split(cfg["train"]["epochs"], t["cycle_rate"], t["cycle_epochs"])


def prune_window(init_fraction: float, final_fraction: float, epochs: int) -> tuple[int, int]:
    """GraNet's gradual-pruning window in whole epochs of the budget: (floor(init_fraction·E),
    floor(final_fraction·E)). The reference prunes over epochs 0–110 of 250, i.e. fractions 0–0.44; the
    same absolute epochs serve `sparse_baseline` and `warmup`, whose phases differ in length."""
    if not 0 <= init_fraction < final_fraction <= 1:
        raise ValueError(f"the pruning window needs 0 <= init_prune_fraction < final_prune_fraction <= 1, "
                         f"got {init_fraction} and {final_fraction}")
    return (math.floor(init_fraction * epochs + _FLOOR_EPS), math.floor(final_fraction * epochs + _FLOOR_EPS))


def multistep_lr(
    epoch: int,
    epochs: int,
    base_lr: float,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> float:
    """base_lr * gamma^(#milestones m with epoch >= floor(m * epochs)); epoch is 0-based."""
    passed = sum(1 for m in milestones if epoch >= math.floor(m * epochs + _FLOOR_EPS))
    return base_lr * gamma**passed


def triangular_lr(i: int, cycle_steps: int, lr_min: float, lr_max: float) -> float:
    """Triangular lr at iteration i of a cycle: lr_min at both ends, lr_max at mid-cycle."""
    if cycle_steps <= 0:
        raise ValueError(f"cycle_steps must be positive, got {cycle_steps}")
    if not 0 <= i < cycle_steps:
        raise ValueError(f"iteration {i} outside the cycle [0, {cycle_steps})")
    t = 0.0 if cycle_steps == 1 else i / (cycle_steps - 1)
    return lr_min + (lr_max - lr_min) * (1.0 - abs(2.0 * t - 1.0))


def linear_warmup(step: int, warmup_steps: int, lr: float) -> float:
    """lr scaled by (step + 1) / warmup_steps during the first `warmup_steps` steps (0-based), then lr:
    the linear warm-up of large-batch ImageNet training (Goyal et al., 2017)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return lr
    return lr * (step + 1) / warmup_steps


def step_lr(cfg: Mapping, epochs: int, steps_per_epoch: int) -> Callable[[int, int], float]:
    """The lr of step i of epoch `epoch` (both 0-based) in a phase of `epochs` epochs (dense,
    sparse_baseline, warmup): `train.lr`, multiplied by `train.gamma` at each of `train.milestones`
    (fractions of the phase), after `train.lr_warmup_epochs` of linear warm-up."""
    t = cfg["train"]
    warm = t.get("lr_warmup_epochs", 0) * steps_per_epoch
    return lambda epoch, i: linear_warmup(epoch * steps_per_epoch + i, warm,
                                          multistep_lr(epoch, epochs, t["lr"], t["milestones"], t["gamma"]))


def cycle_lr(cfg: Mapping, first_epoch: int, steps_per_epoch: int) -> Callable[[int, int], float]:
    """The lr of step i of epoch `epoch` (both 0-based, absolute) in the cycles that start at
    `first_epoch`: triangular from `tickets.lr_min` to `tickets.lr_max` and back over each cycle of
    `tickets.cycle_epochs` epochs."""
    t = cfg["tickets"]
    length = t["cycle_epochs"]
    cycle_steps = length * steps_per_epoch

    def lr_at(epoch: int, i: int) -> float:
        e = (epoch - first_epoch) % length
        return triangular_lr(e * steps_per_epoch + i, cycle_steps, t["lr_min"], t["lr_max"])

    return lr_at
