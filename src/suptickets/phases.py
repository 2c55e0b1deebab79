"""The training phases of the pipeline, each one call of the shared loop with its own lr and
topology rules: dense, a DST phase (sparse_baseline, warmup), and the cycles that make the tickets."""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .batches import Batches
from .models import layer_flops, sparse_flops
from .schedules import cycle_lr, step_lr
from .choices import GROW_RULE
from .sparsity.engine import DST, Masked, ReExplore, Topology, init_masks, masks_of
from .train import Speed, train_epochs

log = logging.getLogger("suptickets")


def loop_options(cfg: dict) -> dict:
    """The shared loop's options that come straight from `train.*`."""
    return {"speed": Speed.from_config(cfg["train"]), "label_smoothing": cfg["train"].get("label_smoothing", 0.0),
            "graphs": cfg["train"].get("graphs", False)}


def dense(model: nn.Module, optimizer, data: dict[str, Batches], cfg: dict, *, epochs: int,
          on_epoch: Callable[[dict], None], start_epoch: int = 0, step: int = 0) -> int:
    return train_epochs(model, optimizer, data["train"], data["val"], epochs=range(start_epoch, epochs),
                        step=step, lr_at=step_lr(cfg, epochs, len(data["train"])), on_epoch=on_epoch, stage="dense",
                        **loop_options(cfg))


class FlopsMeter:
    """Training FLOPs relative to dense, counted step by step at the density each step used.

    A DST phase with gradient regrowth (RigL, GraNet) costs RigL's per-step average
    (3·f_S·ΔT + 2·f_S + f_D)/(ΔT + 1), SET and the cycles 3·f_S per step (`topology_updates=False`);
    f_S is the forward cost of the masks in place. The masks only change at topology updates, so
    the steps are counted in runs: `advance(step)` books every step before `step` at the current
    f_S, and `refresh()` re-reads the masks after they changed (GraNet's dense start counts dense).
    """

    def __init__(self, model: nn.Module, input_shape, method: str | None, update_frequency: int | None,
                 topology_updates: bool = True):
        self.model = model
        self.layers = layer_flops(model, tuple(input_shape))
        self.dense = sum(self.layers.values())
        self.method, self.dt, self.topology_updates = method, update_frequency, topology_updates
        self.cost = self.dense_cost = 0.0
        self.counted_to: int | None = None
        self.per_step = 0.0

    def state(self) -> dict:
        return {"cost": self.cost, "dense_cost": self.dense_cost, "counted_to": self.counted_to}

    def restore(self, state: dict) -> None:
        self.cost, self.dense_cost = state.get("cost", 0.0), state.get("dense_cost", 0.0)
        self.counted_to = state.get("counted_to")

    def begin(self, step: int) -> None:
        """Start counting at `step` (a resumed meter goes on from where its state says)."""
        if self.counted_to is None:
            self.counted_to = step
        self.refresh()

    def refresh(self) -> None:
        fs, fd, dt = sparse_flops(self.layers, masks_of(self.model)), self.dense, self.dt
        gradient_regrowth = self.topology_updates and GROW_RULE.get(self.method) == "gradient"
        self.per_step = (3 * fs * dt + 2 * fs + fd) / (dt + 1) if gradient_regrowth else 3 * fs

    def advance(self, step: int) -> None:
        """Book the steps from the last one counted up to (not including) `step` at the current cost."""
        steps = step - self.counted_to
        self.cost += steps * self.per_step
        self.dense_cost += steps * 3 * self.dense
        self.counted_to = step

    @property
    def ratio(self) -> float:
        return self.cost / self.dense_cost if self.dense_cost else 1.0


class Metered:
    """A `Topology` whose mask changes are booked by a `FlopsMeter`: the steps up to and including
    the update step ran with the old masks."""

    def __init__(self, rule: Topology, flops: FlopsMeter):
        self.rule, self.flops = rule, flops

    def due(self, step: int, epoch: int, i: int) -> bool:
        return self.rule.due(step, epoch, i)

    def update(self, masked: Masked, step: int, grads) -> None:
        self.flops.advance(step + 1)
        self.rule.update(masked, step, grads)
        self.flops.refresh()


def sparse_phase(model: nn.Module, optimizer, data: dict[str, Batches], cfg: dict, *, epochs: int,
                 on_epoch: Callable[[dict], None], stage: str, flops: FlopsMeter,
                 start_epoch: int = 0, step: int = 0) -> int:
    """A DST method for `epochs` epochs from a fresh random mask (or, with `start_epoch` > 0, from
    the masks already on the model), with the multi-step lr."""
    d = cfg["dst"]
    spe = len(data["train"])
    rule = DST.from_config(d, steps_per_epoch=spe, epochs=epochs, budget_epochs=cfg["train"]["epochs"],
                           seed=cfg["seed"])
    if start_epoch == 0:
        init_masks(model, rule.initial_density, d["distribution"], d["keep_first_dense"],
                   torch.Generator().manual_seed(cfg["seed"]))
    masked = Masked(model, optimizer, check_ranks=cfg.get("launcher", {}).get("check_sync", False))
    flops.begin(step)

    def epoch_done(row):
        flops.advance(row["step"])
        on_epoch(row)

    step = train_epochs(model, optimizer, data["train"], data["val"], epochs=range(start_epoch, epochs), step=step,
                        lr_at=step_lr(cfg, epochs, spe), masked=masked, topology=Metered(rule, flops),
                        on_epoch=epoch_done, stage=stage, **loop_options(cfg))
    rule.finish(masked)
    report_rank_checks(stage, masked)
    return step


def cycles(model: nn.Module, optimizer, data: dict[str, Batches], cfg: dict, *, first_epoch: int,
           n_tickets: int, step: int, on_epoch: Callable[[dict], None],
           on_ticket: Callable[[int, dict], None], flops: FlopsMeter, start_epoch: int | None = None) -> int:
    """Sup-tickets' cyclic phase: per cycle a re-explore after the first step, on that step's fresh
    dense gradient, a triangular lr set every iteration, no periodic topology updates, a ticket at
    the cycle's end (`on_ticket(k, row)`, before `on_epoch(row)`). Cycles start at `first_epoch`; a
    resumed run passes the epoch it goes on from as `start_epoch`."""
    t, d = cfg["tickets"], cfg["dst"]
    length = t["cycle_epochs"]
    masked = Masked(model, optimizer, check_ranks=cfg.get("launcher", {}).get("check_sync", False))
    re_explore = ReExplore(first_epoch, length, t["re_explore_rate"], d["method"], cfg["seed"], d["repicked"])
    flops.begin(step)

    def epoch_done(row):
        flops.advance(row["step"])
        k, e = divmod(row["epoch"] - first_epoch, length)
        if e == 0:
            on_ticket(k, row)
        on_epoch(row)

    last = first_epoch + n_tickets * length
    start = first_epoch if start_epoch is None else start_epoch
    step = train_epochs(model, optimizer, data["train"], data["val"], epochs=range(start, last),
                        step=step, lr_at=cycle_lr(cfg, first_epoch, len(data["train"])), masked=masked,
                        topology=Metered(re_explore, flops), on_epoch=epoch_done, stage="tickets",
                        **loop_options(cfg))
    report_rank_checks("tickets", masked)
    return step


def report_rank_checks(stage: str, masked: Masked) -> None:
    if masked.check_ranks and dist.get_rank() == 0:
        log.info("%s: masks and weights identical on all %d ranks at each of %d topology updates", stage,
                 dist.get_world_size(), masked.rank_checks)
