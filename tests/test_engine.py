"""The DST engine on a real model and optimizer: invariants after every step, regrowth rules,
GraNet's schedule, masks through state_dict and safetensors files."""

from __future__ import annotations

import pytest
import torch

from suptickets.artifacts import load_tensors, state_from_file
from suptickets.models import build_model
from suptickets.runtime import load_model, save_model
from suptickets.sparsity.dst import cubic_density
from suptickets.sparsity.engine import DST, Masked, init_masks, masks_of, maskable
from suptickets.sparsity.masks import layer_counts
from suptickets.train import Batches, train_epochs

SHAPE, CLASSES = (1, 8, 8), 4


def toy_data(n: int = 512, seed: int = 0) -> tuple[Batches, Batches]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = (torch.rand((n, *SHAPE), generator=g) * 120 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    train = Batches(x, y, [0.3], [0.2], batch_size=32, shuffle=True, drop_last=True, seed=seed)
    val = Batches(x[:128], y[:128], [0.3], [0.2], batch_size=128)
    return train, val


def dst_cfg(method: str, density: float = 0.2, **extra) -> dict:
    cfg = {"method": method, "density": density, "distribution": "erk", "keep_first_dense": False,
           "update_frequency": 4, "prune_rate": 0.5, "prune_rate_decay": "cosine", "stop_fraction": 1.0}
    if method == "granet":
        cfg.update(init_density=0.6, init_prune_epoch=0, final_prune_epoch=2)
    cfg.update(extra)
    return cfg


def setup(method: str, **extra):
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train, val = toy_data()
    cfg = dst_cfg(method, **extra)
    rule = DST.from_config(cfg, steps_per_epoch=len(train), epochs=4, seed=0)
    init_masks(model, rule.initial_density, "erk", False, torch.Generator().manual_seed(0))
    return model, opt, train, val, rule, Masked(model, opt)


def outside_is_zero(masked: Masked) -> None:
    for w, m in zip(masked.weights, masked.masks):
        off = m == 0
        assert (w[off] == 0).all()
        if w.grad is not None:
            pass
        buf = masked.optimizer.state.get(w, {}).get("momentum_buffer")
        if buf is not None:
            assert (buf[off] == 0).all()


@pytest.mark.parametrize("method", ["set", "rigl", "granet"])
def test_invariants_hold_after_every_optimizer_step(method):
    model, opt, train, val, rule, masked = setup(method)
    total = masked.total()
    layer_budget = [int(m.sum()) for m in masked.masks]
    seen = {"updates": 0, "steps": 0}

    def on_grad(step, epoch, i):
        outside_is_zero(masked)  # state after the previous optimizer step
        before = [m.clone() for m in masked.masks]
        counts = [int(m.sum()) for m in masked.masks]
        rule.on_grad(masked, step)
        after = [int(m.sum()) for m in masked.masks]
        changed = any(not torch.equal(b, m) for b, m in zip(before, masked.masks))
        if rule.due(step):
            seen["updates"] += 1
            assert changed, f"step {step}: a due update changed no mask"
            grown = [(m > 0) & (b == 0) for b, m in zip(before, masked.masks)]
            for w, g in zip(masked.weights, grown):
                assert (w[g] == 0).all()
                buf = opt.state[w].get("momentum_buffer")
                assert buf is None or (buf[g] == 0).all()
            if method == "granet":
                expected = round(cubic_density(step, rule.prune_start_step, rule.prune_end_step,
                                               0.6, 0.2) * total)
                assert sum(after) == min(sum(counts), expected)
            else:
                assert after == counts  # prune-and-regrow keeps every layer's count
        else:
            assert not changed
        if method != "granet":
            assert after == layer_budget
        seen["steps"] += 1

    train_epochs(model, opt, train, val, epochs=range(4), step=0, lr_at=lambda e, i: 0.05,
                 masked=masked, on_grad=on_grad)
    rule.finish(masked)
    outside_is_zero(masked)
    assert seen["updates"] == (4 * len(train) - 1) // 4
    if method == "granet":
        assert masked.active() == round(0.2 * total)
    else:
        assert masked.active() == sum(layer_counts([tuple(w.shape) for w in masked.weights], 0.2, "erk"))


def test_rigl_regrows_where_the_dense_gradient_is_largest_and_set_does_not():
    for method, expect_top in [("rigl", True), ("set", False)]:
        model, opt, train, val, rule, masked = setup(method)
        x, y = next(train.epoch(0))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = [m.bool().clone() for m in masked.masks]
        grads = [w.grad.clone() for w in masked.weights]
        masked.prune_and_regrow(0.5, "gradient" if method == "rigl" else "random", torch.Generator().manual_seed(1))
        hits = []
        for b, m, g, w in zip(before, masked.masks, grads, masked.weights):
            grown = m.bool() & ~b
            n = int(grown.sum())
            # positions eligible for regrowth: inactive after pruning (just-pruned ones included)
            pruned = b & ~m.bool()
            eligible = ~b | pruned
            score = g.abs().masked_fill(~eligible, -1).flatten()
            top = torch.zeros_like(score, dtype=torch.bool)
            top[score.topk(n).indices] = True
            hits.append(bool((grown.flatten() <= top).all()) if n else True)
        assert all(hits) == expect_top, method


def test_masks_survive_state_dict_and_safetensors_round_trip(tmp_path):
    model, opt, train, val, rule, masked = setup("rigl")
    train_epochs(model, opt, train, val, epochs=range(1), step=0, lr_at=lambda e, i: 0.05,
                 masked=masked, on_grad=lambda s, e, i: rule.on_grad(masked, s))
    model.eval()
    x, _ = next(val.epoch())
    out = model(x)
    # state_dict holds the masks as buffers
    torch.manual_seed(1)
    clone = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    init_masks(clone, 0.5, "uniform", False, torch.Generator().manual_seed(5))
    clone.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(masks_of(clone).values(), masks_of(model).values()))
    # the file: bare weights + mask.<param>, loadable into the plain architecture
    save_model(tmp_path / "m.safetensors", model)
    tensors = load_tensors(tmp_path / "m.safetensors")
    state, masks = state_from_file(tensors)
    assert set(masks) == {name for name, _ in maskable(model)}
    plain = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    plain.load_state_dict(state, strict=True)
    loaded = load_model(tmp_path / "m.safetensors", build_model("mlp", SHAPE, CLASSES, hidden=[32, 16]))
    loaded.eval()
    plain.eval()
    assert torch.equal(loaded(x), out) and torch.equal(plain(x), out)
    assert all(torch.equal(a, b) for a, b in zip(masks_of(loaded).values(), masks_of(model).values()))


def test_keep_first_dense_leaves_the_first_layer_unmasked():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    names = [n for n, _ in maskable(model)]
    init_masks(model, 0.1, "erk", True, torch.Generator().manual_seed(0))
    assert list(masks_of(model)) == names[1:]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (so that -0.0 and 0.0 differ)."""
    return t.detach().view(torch.int32) if t.dtype == torch.float32 else t


def train_twice(method: str, make_opt, steps_epochs: int = 4):
    """The same DST run twice from the same start: once as the loop runs it, once with `apply()`
    forced after every optimizer step. Returns [(model, opt, masked)] for both."""
    runs = []
    for force_apply in (False, True):
        model, _, train, val, rule, _ = setup(method)
        opt = make_opt(model.parameters())
        masked = Masked(model, opt)
        masked.apply_each_step = masked.apply_each_step or force_apply
        checks = {"steps": 0}

        def on_grad(step, epoch, i, masked=masked, rule=rule, checks=checks):
            outside_is_zero(masked)  # state after the previous optimizer step, before any apply
            rule.on_grad(masked, step)
            checks["steps"] += 1

        train_epochs(model, opt, train, val, epochs=range(steps_epochs), step=0, lr_at=lambda e, i: 0.05,
                     masked=masked, on_grad=on_grad)
        outside_is_zero(masked)
        assert checks["steps"] == steps_epochs * len(train)
        runs.append((model, opt, masked))
    return runs


@pytest.mark.parametrize("method", ["rigl", "granet"])
@pytest.mark.parametrize("sgd", [dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
                                 dict(momentum=0.9, weight_decay=5e-4, dampening=0.1),
                                 dict(momentum=0.0, weight_decay=5e-4),
                                 dict(momentum=0.9, weight_decay=5e-4, foreach=True),
                                 dict(momentum=0.9, weight_decay=5e-4, maximize=True)])
def test_plain_sgd_needs_no_apply_and_gives_the_same_bits(method, sgd):
    """Under torch.optim.SGD `apply()` is skipped: over 64 steps with 15 topology updates the
    weights outside the masks stay exactly zero, and every weight, mask and momentum buffer is
    bit-identical to the run that masks the weights after every step."""
    (model, opt, masked), (ref, ref_opt, ref_masked) = train_twice(
        method, lambda params: torch.optim.SGD(params, lr=0.05, **sgd))
    assert not masked.apply_each_step and ref_masked.apply_each_step
    assert masked.active() < masked.total()
    for (k, v), (_, rv) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(bits(v), bits(rv)), k
    for p, rp in zip(model.parameters(), ref.parameters()):
        buf, ref_buf = opt.state[p].get("momentum_buffer"), ref_opt.state[rp].get("momentum_buffer")
        assert (buf is None) == (ref_buf is None)
        assert buf is None or torch.equal(bits(buf), bits(ref_buf))


def test_other_optimizers_keep_apply():
    """Adam's moments are not zeroed at pruned positions, so its steps move weights outside the
    masks: `Masked` keeps `apply()` for it (and for SGD subclasses, which may override `step`)."""
    class MySGD(torch.optim.SGD):
        pass

    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    init_masks(model, 0.2, "erk", False, torch.Generator().manual_seed(0))
    assert Masked(model, MySGD(model.parameters(), lr=0.1)).apply_each_step

    def adam_run(apply: bool):
        model, _, train, val, rule, _ = setup("rigl")
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        masked = Masked(model, opt)
        assert masked.apply_each_step
        masked.apply_each_step = apply
        train_epochs(model, opt, train, val, epochs=range(2), step=0, lr_at=lambda e, i: 0.01,
                     masked=masked, on_grad=lambda s, e, i: rule.on_grad(masked, s))
        return sum(int((w[m == 0] != 0).sum()) for w, m in zip(masked.weights, masked.masks))

    assert adam_run(apply=True) == 0
    assert adam_run(apply=False) > 0  # without it the invariant would break


def test_construction_zeroes_weights_and_momentum_outside_the_masks():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.randn(8, *SHAPE)).sum().backward()
    opt.step()  # dense momentum everywhere
    init_masks(model, 0.2, "erk", False, torch.Generator().manual_seed(0))
    outside = [(m == 0) for m in masks_of(model).values()]
    masked = Masked(model, opt)
    for w, off in zip(masked.weights, outside):
        assert (w[off] == 0).all() and (opt.state[w]["momentum_buffer"][off] == 0).all()


def test_mask_grads_masks_the_gradients_present_when_one_is_missing():
    model, opt, train, val, rule, masked = setup("rigl")
    x, y = next(train.epoch(0))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    masked.weights[0].grad = None
    masked.mask_grads()
    for w, m in zip(masked.weights[1:], masked.masks[1:]):
        assert (w.grad[m == 0] == 0).all()
