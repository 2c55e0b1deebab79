"""The training loop and the phases built on it: learning, determinism, divergence, the cycles'
lr and re-explore, tickets, FLOPs accounting, and BN recalibration."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from suptickets import phases
from suptickets.models import build_model
from suptickets.schedules import step_lr, triangular_lr
from suptickets.sparsity.engine import masks_of
from suptickets.train import Speed, TrainingDiverged, evaluate, train_epochs

from test_engine import CLASSES, SHAPE, dst_cfg, toy_data


def cfg(**over) -> dict:
    c = {"seed": 0, "train": {"epochs": 4, "lr": 0.05, "milestones": [0.5, 0.75], "gamma": 0.1},
         "dst": dst_cfg("rigl"),
         "tickets": {"cycle_epochs": 2, "lr_min": 0.001, "lr_max": 0.01, "re_explore_rate": 0.5}}
    c.update(over)
    return c


def fresh():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train, val = toy_data()
    return model, opt, {"train": train, "val": val}


def test_dense_training_learns_and_is_bit_identical_for_a_seed():
    results = []
    for _ in range(2):
        model, opt, data = fresh()
        rows = []
        phases.dense(model, opt, data, cfg(), epochs=4, on_epoch=rows.append)
        results.append((model.state_dict(), rows))
    (a, rows_a), (b, rows_b) = results
    assert rows_a[-1]["val_acc"] > 0.6 and rows_a[-1]["train_loss"] < rows_a[0]["train_loss"]
    assert rows_a == rows_b
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in rows_a] == pytest.approx([0.05, 0.05, 0.005, 0.0005])


def test_divergence_stops_with_stage_epoch_and_step():
    model, opt, data = fresh()
    with pytest.raises(TrainingDiverged, match=r"warmup: training diverged .* at epoch 1, step \d+"):
        train_epochs(model, opt, data["train"], data["val"], epochs=range(2), step=0,
                     lr_at=lambda e, i: 1e30, stage="warmup")


def test_a_nan_reaching_a_topology_update_is_training_diverged_with_stage_epoch_and_step():
    """Before the check, the update's ranking raised `ValueError: cannot rank values containing NaN`."""
    from suptickets.sparsity.engine import DST, Masked, init_masks
    model, opt, data = fresh()
    init_masks(model, 0.3, "erk", False, torch.Generator().manual_seed(0))
    rule = DST.from_config(dst_cfg("rigl", update_frequency=2), steps_per_epoch=len(data["train"]), epochs=2,
                           budget_epochs=2, seed=0)
    with pytest.raises(TrainingDiverged, match=r"^sparse_baseline: training diverged \(loss (nan|inf)\) at epoch 1, "
                                               r"step \d+, before a topology update; lower train.lr"):
        train_epochs(model, opt, data["train"], data["val"], epochs=range(2), step=0, lr_at=lambda e, i: 1e30,
                     masked=Masked(model, opt), topology=rule, stage="sparse_baseline")


def test_cycles_set_the_triangular_lr_every_step_reexplore_once_per_cycle_and_save_tickets():
    model, opt, data = fresh()
    c = cfg()
    flops = phases.FlopsMeter(model, SHAPE, "rigl", 4)
    step = phases.sparse_phase(model, opt, data, c, epochs=2, on_epoch=lambda r: None, stage="warmup",
                               flops=flops)
    spe = len(data["train"])
    lrs, changes, tickets, rows = [], [], [], []
    orig_step = opt.step

    def spy_step(*a, **k):
        lrs.append(opt.param_groups[0]["lr"])
        return orig_step(*a, **k)

    opt.step = spy_step
    before = {"m": [m.clone() for m in masks_of(model).values()]}

    def on_epoch(row):
        rows.append(row)
        now = [m.clone() for m in masks_of(model).values()]
        changes.append(any(not torch.equal(a, b) for a, b in zip(before["m"], now)))
        before["m"] = now

    end = phases.cycles(model, opt, data, c, first_epoch=2, n_tickets=3, step=step, on_epoch=on_epoch,
                        on_ticket=lambda k, row: tickets.append(k),
                        flops=phases.FlopsMeter(model, SHAPE, "rigl", None, topology_updates=False))
    assert end == step + 6 * spe
    assert tickets == [1, 2, 3]
    cycle = [triangular_lr(i, 2 * spe, 0.001, 0.01) for i in range(2 * spe)]
    assert lrs == pytest.approx(cycle * 3)
    assert lrs[0] == lrs[2 * spe - 1] == 0.001
    assert changes == [True, False] * 3  # re-explore at each cycle's first step, nothing else
    assert [r["epoch"] for r in rows] == [3, 4, 5, 6, 7, 8]


def test_flops_ratio_of_sparse_training_is_near_its_density():
    model, opt, data = fresh()
    flops = phases.FlopsMeter(model, SHAPE, "set", 4)
    phases.sparse_phase(model, opt, data, cfg(dst=dst_cfg("set")), epochs=1, on_epoch=lambda r: None,
                        stage="sparse_baseline", flops=flops)
    assert 0.15 < flops.ratio < 0.25  # density 0.2 over the masked layers: SET costs 3·f_S per step
    rigl = phases.FlopsMeter(model, SHAPE, "rigl", 4)
    rigl.begin(0)
    rigl.advance(10)
    assert rigl.ratio > flops.ratio  # RigL pays a dense gradient every ΔT steps


def test_flops_count_the_density_each_step_used_while_granet_prunes():
    """GraNet starts at density 0.6 and prunes to 0.2 by the end of epoch 2 of 4: the FLOPs ratio is
    the step-weighted mean of the densities in use, above what the final masks alone would give."""
    model, opt, data = fresh()
    spe = len(data["train"])
    flops = phases.FlopsMeter(model, SHAPE, "granet", 4)
    phases.sparse_phase(model, opt, data, cfg(dst=dst_cfg("granet")), epochs=4, on_epoch=lambda r: None,
                        stage="sparse_baseline", flops=flops)
    final = phases.FlopsMeter(model, SHAPE, "granet", 4)
    final.begin(0)
    final.advance(4 * spe)  # what counting every step at the final masks gives
    assert flops.counted_to == 4 * spe
    assert flops.ratio > 1.2 * final.ratio
    # a step-by-step reference: the cost of each step from the masks in use at that step
    model2, opt2, data2 = fresh()
    ref = phases.FlopsMeter(model2, SHAPE, "granet", 4)
    per_step = []

    class Spy:
        def __init__(self):
            self.rule = None

        def due(self, step, epoch, i):
            ref.refresh()
            per_step.append(ref.per_step)
            return self.rule.due(step, epoch, i)

        def update(self, masked, step, grads):
            self.rule.update(masked, step, grads)

    from suptickets.sparsity.engine import DST, Masked, init_masks
    rule = DST.from_config(dst_cfg("granet"), steps_per_epoch=spe, epochs=4, budget_epochs=4, seed=0)
    init_masks(model2, rule.initial_density, "erk", False, torch.Generator().manual_seed(0))
    spy = Spy()
    spy.rule = rule
    from suptickets.train import train_epochs as loop
    loop(model2, opt2, data2["train"], data2["val"], epochs=range(4), step=0,
         lr_at=step_lr(cfg(), 4, spe), masked=Masked(model2, opt2), topology=spy)
    assert flops.cost == pytest.approx(sum(per_step), rel=1e-9)


def test_bn_update_changes_only_running_statistics():
    model, opt, data = fresh()
    phases.dense(model, opt, data, cfg(), epochs=4, on_epoch=lambda r: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = dataclasses.replace(data["train"], shuffle=False, padding=0, flip=False)
    update_bn(plain.epoch(), model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert evaluate(model, data["val"])[0] > 0.6


def _sparse_run(speed, model_name="mlp", steps_epochs=1, lr=0.05, dst=True):
    from suptickets.sparsity.engine import DST, Masked, init_masks
    torch.manual_seed(0)
    options = {"hidden": [32, 16]} if model_name == "mlp" else {}
    model = build_model(model_name, SHAPE, CLASSES, **options)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    init_masks(model, 0.3, "erk", False, torch.Generator().manual_seed(0))
    for m, w in zip(masks_of(model).values(), [p for n, p in model.named_parameters() if n in masks_of(model)]):
        assert m.stride() == w.stride()  # masks in their weights' memory format (channels_last included)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train, val = toy_data(n=128)
    masked = Masked(model, opt)
    rule = DST.from_config(dst_cfg("rigl"), steps_per_epoch=len(train), epochs=steps_epochs,
                           budget_epochs=steps_epochs, seed=0)
    train_epochs(model, opt, train, val, epochs=range(steps_epochs), step=0, lr_at=lambda e, i: lr,
                 masked=masked, topology=rule if dst else None, speed=speed)
    for w, m in zip(masked.weights, masked.masks):
        assert (w[m == 0] == 0).all()  # masked entries exactly zero on every path
        buf = opt.state[w].get("momentum_buffer")
        assert buf is None or (buf[m == 0] == 0).all()
    from suptickets.sparsity.masks import layer_counts
    assert masked.active() == sum(layer_counts([tuple(w.shape) for w in masked.weights], 0.3, "erk"))
    return model


def test_channels_last_matches_the_plain_path():
    from suptickets.train import Speed

    # a small lr: at lr 0.05 this toy BN net turns rounding differences chaotic (5e-4 -> 0.16 in 4 steps)
    plain = _sparse_run(Speed(), "resnet32", lr=1e-3)
    fast = _sparse_run(Speed(channels_last=True), "resnet32", lr=1e-3)
    # Gradients agree to ~0.5% here (BatchNorm backward on this toy data amplifies the layouts'
    # different summation order), so compare each tensor within 1% of its scale.
    for (k, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        a, b = a.float(), b.float()
        assert (a - b).abs().max() <= 1e-2 * a.abs().max() + 1e-4, k


def test_bf16_autocast_with_rigl_updates_keeps_the_invariants_and_exact_density():
    """bf16 autocast with RigL topology updates: weights and momentum outside the masks exactly zero
    and the budget exact (both checked in `_sparse_run`), the masks moved, and the model learns."""
    from suptickets.sparsity.engine import init_masks
    from suptickets.train import Speed

    bf16 = _sparse_run(Speed(amp="bf16"), steps_epochs=3)
    torch.manual_seed(0)
    start = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    init_masks(start, 0.3, "erk", False, torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(masks_of(bf16).values(), masks_of(start).values()))
    _, val = toy_data(n=128)
    assert evaluate(bf16, val)[0] > 0.5


def test_progress_bar_shows_running_loss_accuracy_lr_and_density():
    from suptickets.sparsity.engine import Masked, init_masks
    from suptickets.train import progress_postfix

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert progress_postfix(torch.tensor(6.0), torch.tensor(3), 4, 0.05, None) == \
        {"loss": "1.5000", "acc": "0.7500", "lr": "0.05", "density": "1.0000"}
    init_masks(model, 0.25, "uniform", False, torch.Generator().manual_seed(0))
    shown = progress_postfix(torch.tensor(1.0), torch.tensor(0), 2, 0.1, Masked(model, opt))
    assert shown["density"] == "0.2500" and shown["acc"] == "0.0000"


def test_label_smoothing_and_lr_warmup_reach_the_loop():
    rows = {}
    lrs = {}
    for smoothing, warm in [(0.0, 0), (0.3, 2)]:
        model, opt, data = fresh()
        c = cfg(train={"lr": 0.05, "milestones": [0.5, 0.75], "gamma": 0.1, "label_smoothing": smoothing,
                       "lr_warmup_epochs": warm})
        seen, stepped = [], []
        orig_step = opt.step

        def spy_step(*a, **k):  # the lr each optimizer step really used
            stepped.append(opt.param_groups[0]["lr"])
            return orig_step(*a, **k)

        opt.step = spy_step
        phases.dense(model, opt, data, c, epochs=4, on_epoch=seen.append)
        lrs[warm] = stepped
        rows[smoothing] = seen
    steps = len(lrs[0]) // 4
    assert len(lrs[2]) == 4 * steps == 4 * len(fresh()[2]["train"])
    assert lrs[2][:2 * steps] == pytest.approx([0.05 * (s + 1) / (2 * steps) for s in range(2 * steps)])
    assert lrs[2][2 * steps:] == lrs[0][2 * steps:]
    # a smoothed target keeps the cross-entropy away from zero: the losses differ from the plain run's
    assert rows[0.3][-1]["train_loss"] > rows[0.0][-1]["train_loss"] + 0.1


@pytest.mark.parametrize("options", [{"momentum": 0.9, "weight_decay": 5e-4}, {"momentum": 0.9, "nesterov": True},
                                     {"momentum": 0.0}])
def test_the_loops_optimizer_step_is_sgds_own_step_bit_for_bit(options):
    """`train.optimizer_step` runs SGD's step without its wrappers (and their compiler import): the
    same update as `optimizer.step()`, step after step."""
    from suptickets.train import optimizer_step

    torch.manual_seed(0)
    models = [nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, **options) for m in models]
    x = torch.randn(8, 5)
    for _ in range(3):
        for k, (m, opt) in enumerate(zip(models, opts)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step() if k == 0 else optimizer_step(opt, Speed())
            assert torch.is_grad_enabled()
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
