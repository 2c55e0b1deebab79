"""The one training loop every stage uses, and evaluation.

The loop takes its mini-batches from a `batches.Batches` (or anything with its interface, such as
`imagefolder.FolderBatches`). Metrics are accumulated on the device and read once per epoch (no host
sync per step).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .batches import Batches
from .errors import ConfigError, TrainingDiverged
from .graphs import GraphedStep, side_stream
from .sparsity.engine import Masked, Topology, masks_of
from .sparsity.masks import densities

log = logging.getLogger("suptickets")


def no_turn() -> None:
    """Outside lanes (suptickets.lanes) nothing happens between training steps."""


turn: Callable[[], None] = no_turn  # called before each training step; lanes hand the turn on there


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': CUDA is not available on this machine; use device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@torch.no_grad()
def predict(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs over the whole split and the labels, in eval mode."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in batches.epoch():
        probs.append(F.softmax(model(x).float(), dim=1))
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of predicted probabilities."""
    acc = (probs.argmax(1) == labels).float().mean().item()
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item()
    return acc, loss


def evaluate(model: nn.Module, batches: Batches) -> tuple[float, float]:
    return score(*predict(model, batches))


@dataclass(frozen=True)
class Speed:
    """The training fast paths (`train.amp`, `train.channels_last`, `train.compile`); all off is the
    plain fp32 path. Masks, gradients and the optimizer stay fp32 either way."""

    amp: str = "none"  # one of choices.AMP_MODES
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, train_cfg: dict) -> "Speed":
        return cls(train_cfg.get("amp", "none"), train_cfg.get("channels_last", False), train_cfg.get("compile", False))

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def wrap(self, net: nn.Module) -> nn.Module:
        """(The model itself is put in channels_last when it is built, before masks exist.)"""
        if not self.compile:
            return net
        # the eager flag is set (runtime.deterministic_kernels); the compiler reads its own config
        torch.use_deterministic_algorithms(True, warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
        return torch.compile(net)


def wrap_ddp(model: nn.Module) -> nn.Module:
    """The model wrapped in DistributedDataParallel when a process group is up, else the model itself.

    Per step only the gradients are all-reduced (in backward). Buffers are not broadcast: the masks
    change only at topology updates, where every rank takes the same decision from the same
    all-reduced gradients and weights (`launcher.check_sync` verifies it), and BatchNorm's running
    statistics on rank 0, the only rank that writes, are the same with or without a broadcast
    (DDP's broadcast copies rank 0's buffers to the others, never the reverse)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    ddp = nn.parallel.DistributedDataParallel
    # `forward_sync_buffers` replaces `broadcast_buffers` in newer PyTorch (both still sync once at init)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False})


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


# torch imports its compiler (torch._dynamo: about 1.2 s of CPU, as much as torch itself) at the first
# call of an optimizer's step, and of the Optimizer methods it wraps in `torch._disable_dynamo`, only to
# keep torch.compile from tracing into them. The loop calls them outside compiled code; these two
# functions spare an eager process that import (every training stage paid it once).
_DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_compiler_import() -> None:
    """Give `torch._disable_dynamo`'s wrappers of the Optimizer methods their answer up front (the
    method itself: what they call outside compiled code), before an optimizer is built."""
    for name in _DYNAMO_WRAPPED:
        fn = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn


def optimizer_step(optimizer: torch.optim.Optimizer, speed: "Speed") -> None:
    """`optimizer.step()`: eagerly, the step itself under no_grad (what its wrappers run it under),
    without the wrappers (a profiler label, step hooks, which the stages register none of, and
    torch.compile's graph break that imports the compiler); with `train.compile`, or a `step` set on
    the optimizer itself (a wrapper of the caller's), `optimizer.step()` as it is."""
    if speed.compile or "step" in vars(optimizer):
        optimizer.step()
        return
    with torch.no_grad():
        inspect.unwrap(type(optimizer).step)(optimizer)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr to `lr`: a Python float replaced, or a device tensor (`lr_on_device`) written
    in place, so that a replayed CUDA graph reads this step's value."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def lr_on_device(optimizer: torch.optim.Optimizer) -> None:
    """Each group's lr moved into a float32 0-d tensor on its parameters' device (then `set_lr` writes
    it in place each step): what a captured optimizer step needs, since a Python float would be
    frozen into the graph. float32 is the dtype fused CUDA SGD reads its lr tensor as, and loses
    nothing for float32 weights: their update rounds the lr to float32 either way (unfused SGD with
    the tensor lr gives the float path's bits; fused SGD gives the same bits with a float or a
    tensor lr; fused and unfused SGD differ from each other by rounding)."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            device = group["params"][0].device
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def progress_postfix(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, lr: float,
                     masked: Masked | None) -> dict[str, str]:
    """What the progress bar shows: this epoch's running loss and accuracy (this rank), lr, density."""
    density = 1.0 if masked is None else masked.active() / masked.total()
    return {"loss": f"{loss_sum.item() / max(seen, 1):.4f}", "acc": f"{correct.item() / max(seen, 1):.4f}",
            "lr": f"{lr:.4g}", "density": f"{density:.4f}"}


def forward_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, speed: Speed,
                 label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of a training batch: the forward of every step, eager or captured (`graphs`)."""
    with speed.autocast(x.device):
        out = net(speed.layout(x))
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    return loss, out


class Tally:
    """An epoch's running counts on the device, updated in place by every step (so a captured step
    updates them too) and read once at the epoch's end: the loss sum, the correct predictions, the
    first step whose loss was not finite (-1: none) and the step counter that names it."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self.step = torch.zeros((), device=device, dtype=torch.long)

    def reset(self, step: int) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad_step.fill_(-1)
        self.step.fill_(step)

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(loss), self.step, self.bad_step))
        self.loss_sum += loss * y.shape[0]
        self.correct += (out.argmax(1) == y).sum()
        self.step += 1


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               step: int, epoch: int = 0, i: int = 0, masked: Masked | None = None,
               topology: Topology | None = None, speed: "Speed | None" = None,
               label_smoothing: float = 0.0, stage: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step, as every stage takes it (the lr is already set): forward; backward; if
    `topology.due(step, epoch, i)`, a copy of the dense gradients is kept; gradients masked;
    optimizer step; `masked.apply()` (weights masked again, except after plain SGD, whose steps keep
    them at zero); then `topology.update(masked, step, grads)`, so newly grown weights start at
    zero with zero momentum and first move on the next step. Before an update, a non-finite loss,
    weight or dense gradient raises `TrainingDiverged` (the update would rank NaNs); other steps
    are checked once per epoch by `train_epochs`. Returns the detached loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    speed = speed or Speed()
    loss, out = forward_loss(net, x, y, speed, label_smoothing)
    loss.backward()
    grads = masked.dense_grads() if topology is not None and topology.due(step, epoch, i) else None
    if masked is not None:
        masked.mask_grads()
    optimizer_step(optimizer, speed)
    if masked is not None:
        masked.apply()
    if grads is not None:
        check_finite_before_update(loss, masked, grads, stage=stage, epoch=epoch, step=step)
        topology.update(masked, step, grads)
    return loss.detach(), out.detach()


def check_finite_before_update(loss: torch.Tensor, masked: Masked, grads, *, stage: str, epoch: int,
                               step: int) -> None:
    """Raise `TrainingDiverged` (stage, 1-based epoch, step) if the loss, a masked weight or a dense
    gradient a topology update would rank is NaN or infinite; one host sync, on update steps only."""
    tensors = [loss.detach().reshape(1).float(), *(w.detach().reshape(-1) for w in masked.weights),
               *(g.reshape(-1) for g in grads if g is not None)]
    if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise TrainingDiverged(f"{stage}: training diverged (loss {loss.item()}) at epoch {epoch + 1}, step {step}, "
                               "before a topology update; lower train.lr or tickets.lr_max")


def train_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, train: Batches, val: Batches, *,
                 epochs: range, step: int, lr_at: Callable[[int, int], float],
                 masked: Masked | None = None, topology: Topology | None = None,
                 on_epoch: Callable[[dict], None] | None = None, stage: str = "train",
                 speed: "Speed | None" = None, label_smoothing: float = 0.0, graphs: bool = False) -> int:
    """Train over `epochs` (0-based, absolute), starting at global `step`; returns the final step.

    Per step: lr ← lr_at(epoch, i), then `train_step` (the topology update after the optimizer step).
    After each epoch `on_epoch(row)` gets the history row (epoch is 1-based). `train` is a
    `Batches` or any object with its interface (`device`, `len()`, `epoch(e)`), e.g. the
    DataLoader-backed `imagefolder.FolderBatches`. `graphs` (CUDA, a `Batches`, one process): the
    step is captured in CUDA graphs after a few eager steps and replayed (`suptickets.graphs`).
    """
    if topology is not None and masked is None:
        raise ValueError("train_epochs: a topology rule needs the masks it changes (masked=...)")
    speed = speed or Speed()
    device = train.device
    tally = Tally(device)
    if graphs:
        lr_on_device(optimizer)
    graphed = GraphedStep(model, optimizer, masked, tally, train,
                          lambda x, y: forward_loss(model, x, y, speed, label_smoothing),
                          lambda opt: optimizer_step(opt, speed)) if graphs else None
    net = model if graphs else speed.wrap(wrap_ddp(model))
    with side_stream(device, graphs):  # (graphs are warmed up and captured off the default stream)
        for epoch in epochs:
            model.train()
            tally.reset(step)
            seen = 0
            lr = 0.0
            batches = train.epoch(epoch) if graphed is None else graphed.epoch(epoch)
            bar = tqdm(batches, total=len(train), desc=f"{stage} {epoch + 1}/{epochs.stop}", leave=False, disable=None)
            for i, (x, y) in enumerate(bar):
                turn()
                lr = lr_at(epoch, i)
                set_lr(optimizer, lr)
                if graphed is not None and graphed.captured:
                    due = topology is not None and topology.due(step, epoch, i)
                    loss, grads = graphed.replay(x, y, keep_dense_grads=due)
                    if grads is not None:
                        check_finite_before_update(loss, masked, grads, stage=stage, epoch=epoch, step=step)
                        topology.update(masked, step, grads)
                        graphed.check()
                else:
                    xb = x if graphed is None else graphed.normalize(x)
                    loss, out = train_step(net, optimizer, xb, y, step=step, epoch=epoch, i=i, masked=masked,
                                           topology=topology, speed=speed, label_smoothing=label_smoothing,
                                           stage=stage)
                    tally.add(loss, out, y)
                    if graphed is not None:
                        graphed.eager_step_done(x, y)
                seen += y.shape[0]
                step += 1
                if not bar.disable and i % 50 == 0:  # only on a terminal: reading these syncs the device
                    bar.set_postfix(progress_postfix(tally.loss_sum, tally.correct, seen, lr, masked), refresh=False)
            totals = all_reduce_sum(torch.stack([tally.loss_sum, tally.correct.to(tally.loss_sum.dtype),
                                                 torch.tensor(float(seen), device=device)]))
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
            if int(tally.bad_step) >= 0:
                raise TrainingDiverged(f"{stage}: training diverged (loss {loss_sum.item()}) at epoch {epoch + 1}, "
                                       f"step {int(tally.bad_step)}; lower train.lr or tickets.lr_max")
            val_acc, val_loss = evaluate(model, val)
            row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum.item() / seen,
                   "train_acc": round(correct.item()) / seen, "val_acc": val_acc, "val_loss": val_loss,
                   "density": densities(masks_of(model))[0]}
            log.info("%s epoch %d/%d: loss %.4f train_acc %.4f val_acc %.4f lr %.5f density %.4f", stage,
                     row["epoch"], epochs.stop, row["train_loss"], row["train_acc"], val_acc, lr, row["density"])
            if on_epoch is not None:
                on_epoch(row)
        return step
