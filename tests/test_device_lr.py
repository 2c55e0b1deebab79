"""The lr in a device tensor (issue #21 §2): `lr_on_device` + `set_lr` writing it in place must train
bit for bit as the Python-float lr, over a schedule that changes every step, with masks and topology
updates; with unfused SGD (today's CPU path) and with fused SGD (what a graphed step uses)."""

from __future__ import annotations

import pytest
import torch

from suptickets.batches import Batches
from suptickets.models import build_model
from suptickets.schedules import triangular_lr
from suptickets.sparsity.engine import DST, Masked, init_masks
from suptickets.train import lr_on_device, set_lr, train_epochs

SHAPE, CLASSES = (1, 8, 8), 4


def data(device: str = "cpu") -> tuple[Batches, Batches]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (256,), generator=g)
    x = (torch.rand((256, *SHAPE), generator=g) * 120 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    x, y = x.to(device), y.to(device)
    return (Batches(x, y, [0.3], [0.2], batch_size=32, shuffle=True, drop_last=True, seed=0, padding=1, flip=True),
            Batches(x[:64], y[:64], [0.3], [0.2], batch_size=64))


def trained(model_name: str, on_device: bool, fused: bool, device: str = "cpu", graphs: bool = False,
            on_epoch=None) -> tuple[list[torch.Tensor], torch.optim.SGD]:
    """3 epochs at density 0.3, RigL every 3 steps over a triangular lr; the state and momentum after.
    `graphs`: the loop's CUDA-graph path (tests/test_graphs.py); `on_epoch(opt)` makes the epoch hook."""
    torch.manual_seed(0)
    model = build_model(model_name, SHAPE, CLASSES, **({"hidden": [32, 16]} if model_name == "mlp" else {"width": 0.25}))
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused)
    if on_device:
        lr_on_device(opt)
    train, val = data(device)
    rule = DST.from_config({"method": "rigl", "density": 0.3, "distribution": "erk", "update_frequency": 3,
                            "prune_rate": 0.5, "prune_rate_decay": "cosine", "stop_fraction": 1.0,
                            "repicked": "keep", "keep_first_dense": False},
                           steps_per_epoch=len(train), epochs=3, budget_epochs=3, seed=0)
    init_masks(model, 0.3, "erk", False, torch.Generator().manual_seed(0))
    masked = Masked(model, opt)
    cycle = 3 * len(train)  # a triangular lr: a different value at every step
    train_epochs(model, opt, train, val, epochs=range(3), step=0, masked=masked, topology=rule, graphs=graphs,
                 lr_at=lambda e, i: triangular_lr(e * len(train) + i, cycle, 0.003, 0.173),
                 on_epoch=on_epoch(opt) if on_epoch else None)
    state = [t.detach().clone() for t in model.state_dict().values()]
    return state + [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()], opt


@pytest.mark.parametrize("model_name", ["mlp", "resnet20"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_device_lr_trains_bit_for_bit_as_the_float_lr(model_name, fused):
    want, _ = trained(model_name, on_device=False, fused=fused)
    got, opt = trained(model_name, on_device=True, fused=fused)
    assert len(got) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.dim() == 0


def test_set_lr_writes_the_device_tensor_in_place():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.5)
    lr_on_device(opt)
    tensor = opt.param_groups[0]["lr"]
    for value in [0.25, 0.125, 0.0]:
        set_lr(opt, value)
        assert opt.param_groups[0]["lr"] is tensor and float(tensor) == value
    lr_on_device(opt)  # a second call keeps the tensor
    assert opt.param_groups[0]["lr"] is tensor
