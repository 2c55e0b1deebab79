"""The training step captured in CUDA graphs and replayed (`train.graphs`: CUDA, one process).

A step of a small CNN is hundreds of kernel launches from Python; replaying a captured graph
launches them all at once. `train_epochs` runs the first `WARMUP` steps of a phase eagerly (real
training steps, as without graphs), then captures two graphs and replays them for every further step:

1. forward and backward: the step's batch is copied into a static input (uint8, as the epoch was
   built at its start by `Batches.epoch_batches`, normalized inside the graph) and static labels;
   backward writes the gradients into tensors allocated at the capture, which every replay
   overwrites (what zeroing them and accumulating once does);
2. the rest of the step: gradients masked, the optimizer's step (fused SGD, its lr a device tensor
   that `train.set_lr` writes in place each step, so the cyclic schedule reaches the graph), weights
   masked (optimizers other than plain SGD), the epoch's counts (`train.Tally`).

On a topology-update step the loop keeps the dense gradient between the two replays and runs the
update eagerly after the second: the eager step's order (backward, dense gradient kept, gradients
masked, optimizer step, update). An update writes masks, weights and momentum in place, so the graphs
stay valid; anything that would give one of these tensors new memory after the capture (a resume,
`zero_grad(set_to_none=True)`, a new buffer) would leave the graphs reading dead memory: `check()`
compares their addresses at each epoch's start and after each update and refuses to go on.

A graphed run is meant to equal an eager run with the same fused SGD bit for bit (tests/test_graphs.py,
on CUDA), not the default eager run: fused and unfused SGD round differently (see
`train.lr_on_device`); the GPU check measures how far apart those two end.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .sparsity.engine import Masked

WARMUP = 3  # eager steps before the capture (lazy initialisation: momentum buffers, cuDNN's choices)


class GraphedStep:
    """One phase's captured step. `forward(x, y) -> (loss, logits)` is the loop's forward, `step(optimizer)`
    its optimizer step; `tally` the loop's device counts (`train.Tally`); `train` the training `Batches`
    (epochs built at once)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, masked: Masked | None, tally,
                 train, forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 step: Callable[[torch.optim.Optimizer], None]):
        if train.device.type != "cuda":
            raise ValueError(f"train.graphs: CUDA graphs need the data on a CUDA device, not {train.device}")
        if not hasattr(train, "epoch_batches"):
            raise ValueError("train.graphs: the training data must be tensors on the device (Batches)")
        if not all(isinstance(g["lr"], torch.Tensor) and g["lr"].device == train.device
                   for g in optimizer.param_groups):
            raise ValueError("train.graphs: the optimizer's lr must be a device tensor (train.lr_on_device)")
        self.model, self.optimizer, self.masked, self.tally, self.forward = model, optimizer, masked, tally, forward
        self.step = step  # the loop's optimizer step (train.optimizer_step)
        self.train = train
        self.normalize: Callable[[torch.Tensor], torch.Tensor] | None = None  # the built epochs' (uint8 → float)
        self.eager_steps = 0
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        self.addresses: list[int] = []

    @property
    def captured(self) -> bool:
        return self.graphs is not None

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's raw batches (uint8 images, labels), built at its start; every batch full.
        The loop normalizes an eager step's batch with `normalize`; a graph normalizes its own."""
        self.check()
        built = self.train.epoch_batches(epoch)
        if built.last is not None:
            raise ValueError("train.graphs: every training batch must be full (drop_last)")
        self.normalize = built.normalize
        return ((built.x[i], built.y[i]) for i in range(built.x.shape[0]))

    def eager_step_done(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """After each eager step: capture once `WARMUP` of them have run (x, y: that step's batch)."""
        self.eager_steps += 1
        if self.eager_steps >= WARMUP and not self.captured:
            self.capture(x, y)

    def capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the two graphs (recording runs nothing: the next step is the first replay)."""
        self.x, self.y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)  # backward then allocates the graph's own gradients
        forward_backward = torch.cuda.CUDAGraph()
        with torch.cuda.graph(forward_backward, capture_error_mode="thread_local"):
            loss, out = self.forward(self.normalize(self.x), self.y)
            loss.backward()
        self.loss, self.out = loss.detach(), out.detach()
        rest = torch.cuda.CUDAGraph()
        with torch.cuda.graph(rest, pool=forward_backward.pool(), capture_error_mode="thread_local"):
            if self.masked is not None:
                self.masked.mask_grads()
            self.step(self.optimizer)
            if self.masked is not None:
                self.masked.apply()
            self.tally.add(self.loss, self.out, self.y)
        self.graphs = (forward_backward, rest)
        self.addresses = self.memory()

    def replay(self, x: torch.Tensor, y: torch.Tensor, keep_dense_grads: bool
               ) -> tuple[torch.Tensor, list[torch.Tensor | None] | None]:
        """One training step: (its loss, the dense gradients if `keep_dense_grads`, else None)."""
        self.x.copy_(x)
        self.y.copy_(y)
        self.graphs[0].replay()
        grads = self.masked.dense_grads() if keep_dense_grads else None
        self.graphs[1].replay()
        return self.loss, grads

    def memory(self) -> list[int]:
        """The addresses of every tensor the graphs read or write that outlives a step."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        tensors = [*params, *(g["lr"] for g in self.optimizer.param_groups), *self.model.buffers()]
        tensors += [p.grad for p in params if p.grad is not None]
        tensors += [self.optimizer.state[p]["momentum_buffer"] for p in params
                    if self.optimizer.state.get(p, {}).get("momentum_buffer") is not None]
        return [t.data_ptr() for t in tensors] + [len(tensors)]

    def check(self) -> None:
        if self.captured and self.memory() != self.addresses:
            raise RuntimeError("train.graphs: a tensor the captured training step reads or writes was given new "
                               "memory after the capture (a reloaded state, zero_grad(set_to_none=True), a new "
                               "buffer); the graphs would read dead memory")


@contextlib.contextmanager
def side_stream(device: torch.device, on: bool):
    """With `on`, the block runs on a stream of its own unless it already does (a lane's): graphs are
    captured and warmed up off the default stream."""
    if not on or device.type != "cuda" or torch.cuda.current_stream(device) != torch.cuda.default_stream(device):
        yield
        return
    before = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(before)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        before.wait_stream(stream)
