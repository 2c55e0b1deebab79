"""BatchNorm folded into the Linear / Conv2d just before it (torch.fx's `fuse`: Linear →
BatchNorm1d, Conv2d → BatchNorm2d): those BatchNorm tensors are gone and the layer gains a bias.
A sparse file holds the folded model, and loading one folds the bare architecture to match it."""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """An eval-mode copy of `model` with each BatchNorm that directly follows a Linear / Conv2d
    folded into that layer (torch.fx.experimental.optimization.fuse)."""
    was_training = model.training
    model.eval()
    try:
        return fuse(model)
    finally:
        model.train(was_training)
