"""The DST engine on a real model and optimizer: invariants after every step, regrowth rules,
GraNet's schedule, masks through state_dict and safetensors files."""

from __future__ import annotations

import pytest
import torch

from suptickets.artifacts import load_tensors, state_from_file
from suptickets.batches import Batches
from suptickets.models import build_model
from suptickets.runtime import load_model, save_model
from suptickets.sparsity.dst import cubic_density
from suptickets.sparsity.engine import DST, Masked, init_masks, masks_of, maskable
from suptickets.sparsity.masks import layer_counts
from suptickets.train import train_epochs

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
           "update_frequency": 4, "prune_rate": 0.5, "prune_rate_decay": "cosine", "stop_fraction": 1.0,
           "repicked": "keep"}
    if method == "granet":
        cfg.update(init_density=0.6, init_prune_fraction=0.0, final_prune_fraction=0.5)  # epochs 0-2 of 4
    cfg.update(extra)
    return cfg


def setup(method: str, **extra):
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train, val = toy_data()
    cfg = dst_cfg(method, **extra)
    rule = DST.from_config(cfg, steps_per_epoch=len(train), epochs=4, budget_epochs=4, seed=0)
    init_masks(model, rule.initial_density, "erk", False, torch.Generator().manual_seed(0))
    return model, opt, train, val, rule, Masked(model, opt)


def outside_is_zero(masked: Masked) -> None:
    for w, m in zip(masked.weights, masked.masks):
        off = m == 0
        assert (w[off] == 0).all()
        buf = masked.optimizer.state.get(w, {}).get("momentum_buffer")
        if buf is not None:
            assert (buf[off] == 0).all()


class Checked:
    """A topology rule wrapped with the checks of the invariants: asked `due` after every backward
    (the state the previous step left), and around every `update`."""

    def __init__(self, rule, masked: Masked, opt):
        self.rule, self.masked, self.opt = rule, masked, opt
        self.updates, self.steps, self.grown = 0, 0, None
        self.total = masked.total()

    def due(self, step, epoch, i):
        outside_is_zero(self.masked)  # state after the previous optimizer step (and update)
        if self.grown is not None:
            # the previous update regrew these positions after its optimizer step: still exactly 0 with
            # zero momentum, since they first move on the step that follows
            for w, g in zip(self.masked.weights, self.grown):
                assert (w[g] == 0).all()
                buf = self.opt.state[w].get("momentum_buffer")
                assert buf is None or (buf[g] == 0).all()
            self.grown = None
        self.steps += 1
        return self.rule.due(step, epoch, i)

    def update(self, masked, step, grads):
        before = [m.clone() for m in masked.masks]
        counts = [int(m.sum()) for m in masked.masks]
        self.rule.update(masked, step, grads)
        self.updates += 1
        assert any(not torch.equal(b, m) for b, m in zip(before, masked.masks)), f"step {step}: no mask changed"
        self.grown = [(m > 0) & (b == 0) for b, m in zip(before, masked.masks)]
        return before, counts


@pytest.mark.parametrize("method", ["set", "rigl", "granet"])
def test_invariants_hold_after_every_optimizer_step(method):
    model, opt, train, val, rule, masked = setup(method)
    total = masked.total()
    layer_budget = [int(m.sum()) for m in masked.masks]

    class Counted(Checked):
        def update(self, masked, step, grads):
            before, counts = super().update(masked, step, grads)
            after = [int(m.sum()) for m in masked.masks]
            if method == "granet":
                expected = round(cubic_density(step, rule.prune_start_step, rule.prune_end_step, 0.6, 0.2) * total)
                assert sum(after) == min(sum(counts), expected)
            else:
                assert after == counts == layer_budget  # prune-and-regrow keeps every layer's count

    checked = Counted(rule, masked, opt)
    train_epochs(model, opt, train, val, epochs=range(4), step=0, lr_at=lambda e, i: 0.05,
                 masked=masked, topology=checked)
    rule.finish(masked)
    outside_is_zero(masked)
    assert checked.steps == 4 * len(train)
    assert checked.updates == (4 * len(train) - 1) // 4
    if method == "granet":
        assert masked.active() == round(0.2 * total)
    else:
        assert masked.active() == sum(layer_counts([tuple(w.shape) for w in masked.weights], 0.2, "erk"))


@pytest.mark.parametrize("method", ["set", "rigl", "granet"])
def test_update_comes_after_the_optimizer_step_on_that_steps_dense_gradient(method):
    """The update prunes the smallest |w| of the weights *after* the step and (RigL, GraNet) regrows
    where the dense gradient of the step's minibatch was largest; in the old order (update before
    the step) the regrown weights would have moved by −lr·g on that same step."""
    model, opt, train, val, rule, masked = setup(method)
    seen = {}

    class Recorder:
        def due(self, step, epoch, i):
            return step == 4

        def update(self, masked, step, grads):
            seen["weights"] = [w.detach().clone() for w in masked.weights]
            seen["grads"] = grads
            seen["masks"] = [m.bool().clone() for m in masked.masks]
            seen["momentum"] = [opt.state[w]["momentum_buffer"].clone() for w in masked.weights]
            rule.update(masked, step, grads)
            seen["after"] = [m.bool().clone() for m in masked.masks]
            seen["weights_after"] = [w.detach().clone() for w in masked.weights]

    batches = list(train.epoch(0))[:5]
    class Five:
        device = train.device
        def __len__(self):
            return 5
        def epoch(self, e):
            return iter(batches)

    train_epochs(model, opt, Five(), val, epochs=range(1), step=0, lr_at=lambda e, i: 0.05, masked=masked,
                 topology=Recorder())
    # the dense gradient handed over is the step's unmasked one: nonzero outside the masks too
    assert all(g is not None for g in seen["grads"])
    assert all(bool((g[~m] != 0).any()) for g, m in zip(seen["grads"], seen["masks"]) if not m.all())
    # every regrown position ends the update at weight 0 and momentum 0 ...
    for w, buf, b, a in zip(seen["weights_after"], [opt.state[w]["momentum_buffer"] for w in masked.weights],
                            seen["masks"], seen["after"]):
        grown = a & ~b
        assert (w[grown] == 0).all() and (buf[grown] == 0).all()
    # ... and the weights the update saw were already stepped: their momentum is the post-step one
    assert all(bool((mom[m] != 0).any()) for mom, m in zip(seen["momentum"], seen["masks"]))
    if method == "rigl":
        # the regrown positions are the largest |dense gradient| among those inactive after pruning
        for w, g, b, a in zip(seen["weights"], seen["grads"], seen["masks"], seen["after"]):
            grown = a & ~b
            n = int(grown.sum())
            pruned = b & ~a
            eligible = ~b | pruned
            score = g.abs().masked_fill(~eligible, -1).flatten()
            assert n == 0 or bool(score[grown.flatten()].min() >= score.topk(n).values.min())


def test_rigl_regrows_where_the_dense_gradient_is_largest_and_set_does_not():
    for method, expect_top in [("rigl", True), ("set", False)]:
        model, opt, train, val, rule, masked = setup(method)
        x, y = next(train.epoch(0))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = [m.bool().clone() for m in masked.masks]
        grads = [w.grad.clone() for w in masked.weights]
        masked.prune_and_regrow(0.5, "gradient" if method == "rigl" else "random", torch.Generator().manual_seed(1),
                                masked.dense_grads())
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
                 masked=masked, topology=rule)
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
        checked = Checked(rule, masked, opt)
        train_epochs(model, opt, train, val, epochs=range(steps_epochs), step=0, lr_at=lambda e, i: 0.05,
                     masked=masked, topology=checked)
        outside_is_zero(masked)
        assert checked.steps == steps_epochs * len(train)
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
                     masked=masked, topology=rule)
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


def test_model_files_are_read_strictly_naming_the_key_and_the_file(tmp_path):
    """Only `mask.*` keys may differ from the architecture's state_dict: a missing or extra weight,
    a wrong shape, or a mask for something that is not a Conv2d/Linear weight is refused."""
    from safetensors.torch import save_file

    from suptickets.runtime import read_model_file

    model, opt, train, val, rule, masked = setup("rigl")
    save_model(tmp_path / "ok.safetensors", model)
    good = load_tensors(tmp_path / "ok.safetensors")
    fresh = lambda: build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])  # noqa: E731
    state, masks = read_model_file(tmp_path / "ok.safetensors", fresh())
    assert set(masks) == {n for n, _ in maskable(model)} and "net.1.weight" in state

    def broken(name, change):
        tensors = dict(good)
        change(tensors)
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    cases = {
        "missing.safetensors": (lambda t: t.pop("net.2.running_mean"), "missing net.2.running_mean"),
        "extra.safetensors": (lambda t: t.__setitem__("net.9.weight", torch.zeros(3)), "unexpected net.9.weight"),
        "shape.safetensors": (lambda t: t.__setitem__("net.1.weight", torch.zeros(32, 63)),
                              "net.1.weight: shape (32, 63), expected (32, 64)"),
        "mask.safetensors": (lambda t: t.__setitem__("mask.net.2.weight", torch.ones(32, dtype=torch.uint8)),
                             "unexpected mask.net.2.weight"),
    }
    for name, (change, message) in cases.items():
        path = broken(name, change)
        with pytest.raises(ValueError, match="does not fit model MLP") as err:
            read_model_file(path, fresh())
        assert str(path) in str(err.value) and message in str(err.value), str(err.value)
        with pytest.raises(ValueError, match=message.split(":")[0]):
            load_model(path, fresh())


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_re_explore_after_the_first_step_of_each_cycle_regrows_at_zero_weight_and_momentum(method):
    """The cycles' re-explore (`ReExplore`) follows the same order: after the first optimizer step of
    each cycle, prune and regrow (at random for SET, by that step's dense gradient for RigL); the
    regrown positions hold weight 0 and momentum 0 until the next step, each layer keeps its count,
    and nothing else changes the masks within a cycle."""
    from suptickets.sparsity.engine import ReExplore

    model, opt, train, val, _, masked = setup(method)
    counts = [int(m.sum()) for m in masked.masks]
    rule = ReExplore(first_epoch=0, length=2, rate=0.5, method=method, seed=0)
    checked = Checked(rule, masked, opt)
    train_epochs(model, opt, train, val, epochs=range(4), step=0, lr_at=lambda e, i: 0.05, masked=masked,
                 topology=checked)
    assert checked.updates == 2  # epochs 0 and 2 start a cycle
    assert [int(m.sum()) for m in masked.masks] == counts
    outside_is_zero(masked)


def near_dense_layer(repicked: str):
    """One Linear layer at density 0.9 with known weights and momentum, after one real step: a 0.5
    prune-and-regrow by gradient must re-pick most of what it prunes (only 10% are inactive)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10, bias=False)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9)
    mask = torch.ones(10, 20)
    mask.view(-1)[torch.randperm(200, generator=torch.Generator().manual_seed(0))[:20]] = 0
    from suptickets.sparsity.engine import attach_masks
    attach_masks(layer, {"weight": mask})
    masked = Masked(layer, opt)
    x = torch.randn(16, 20)
    layer(x).pow(2).sum().backward()
    grads = masked.dense_grads()
    masked.mask_grads()
    opt.step()
    return layer, opt, masked, grads


@pytest.mark.parametrize("repicked", ["keep", "zero"])
def test_a_repicked_weight_keeps_value_and_momentum_and_a_newly_grown_one_starts_at_zero(repicked):
    """The reference's rule (`dst.repicked: keep`): the update only rewrites the masks, so a weight
    pruned and regrown in the same update keeps its value and momentum; a position inactive before
    the update starts at exactly 0 with zero momentum. `zero` resets re-picked weights too."""
    from suptickets.sparsity.dst import prune_magnitude

    layer, opt, masked, grads = near_dense_layer(repicked)
    w, buf = layer.weight, opt.state[layer.weight]["momentum_buffer"]
    before, w0, m0 = masked.masks[0].bool().clone(), w.detach().clone(), buf.clone()
    n = round(0.5 * int(before.sum()))
    pruned_to = prune_magnitude(w0, before, n)
    masked.prune_and_regrow(0.5, "gradient", torch.Generator(), grads, repicked)
    after = masked.masks[0].bool()
    repicked_at = after & before & ~pruned_to
    grown = after & ~before
    assert int(repicked_at.sum()) > 0 and int(grown.sum()) > 0  # the case arises
    assert int(after.sum()) == int(before.sum())
    assert (w[grown] == 0).all() and (buf[grown] == 0).all()
    assert (w[~after] == 0).all() and (buf[~after] == 0).all()
    assert torch.equal(w[after & pruned_to], w0[after & pruned_to])  # never pruned: untouched
    if repicked == "keep":
        assert torch.equal(w[repicked_at], w0[repicked_at]) and torch.equal(buf[repicked_at], m0[repicked_at])
        assert bool((w0[repicked_at] != 0).all())
    else:
        assert (w[repicked_at] == 0).all() and (buf[repicked_at] == 0).all()


def test_dst_and_re_explore_pass_dst_repicked_to_the_update():
    """`DST.from_config` reads `dst.repicked`; both rules hand it to the prune-and-regrow."""
    from suptickets.sparsity.engine import ReExplore

    for repicked in ["keep", "zero"]:
        rule = DST.from_config(dst_cfg("rigl", repicked=repicked, prune_rate_decay="constant"), steps_per_epoch=10, epochs=4, budget_epochs=4,
                               seed=0)
        for topology in [rule, ReExplore(first_epoch=0, length=1, rate=0.5, method="rigl", seed=0, repicked=repicked)]:
            layer, opt, masked, grads = near_dense_layer(repicked)
            w0 = layer.weight.detach().clone()
            topology.update(masked, 100, grads)
            kept_nonzero = int((layer.weight != 0).sum())
            # keep: every weight still in the mask that was nonzero is nonzero; zero: fewer of them
            expected_all = int(((w0 != 0) & masked.masks[0].bool()).sum())
            assert (kept_nonzero == expected_all) == (repicked == "keep"), (repicked, kept_nonzero, expected_all)


def test_prune_and_regrow_refuses_an_unknown_repicked_rule():
    layer, opt, masked, grads = near_dense_layer("keep")
    with pytest.raises(ValueError, match=r"dst\.repicked must be one of \['keep', 'zero'\], got 'reset'"):
        masked.prune_and_regrow(0.5, "gradient", torch.Generator(), grads, "reset")
