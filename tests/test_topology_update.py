"""The sync-free topology update (issue #21 §2) against the implementation it replaced.

`Reference` below is the code of `dst.py` and `Masked` before the change, verbatim apart from names:
a threshold by `masks._kth_largest`, counts read back with `int(...)`, `torch.nonzero` per layer.
The new code must choose exactly the same masks (SET, RigL, GraNet's global prune; repicked keep and
zero; ties; near-dense layers; a layer on the sampled-threshold path of > 2^20 entries) and read
nothing back from the device inside a per-layer update, which `HostReads` checks by listing every
torch operation that copies a device value to the host.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from suptickets.sparsity.dst import (
    cubic_density,
    global_magnitude_prune,
    grow_by_score,
    grow_random,
    magnitude_keys,
    prune_and_regrow,
    prune_magnitude,
    prune_rate_at,
)
from suptickets.sparsity.engine import DST, Masked, attach_masks, update_generator
from suptickets.sparsity.masks import global_topk_masks, select_largest

B = torch.bool


class Reference:
    """Today's (before #21) prune / regrow, kept here as the oracle."""

    @staticmethod
    def prune_magnitude(weight, mask, n):
        flat = mask.reshape(-1)
        active = torch.nonzero(flat).flatten()
        n = max(0, min(int(n), active.numel()))
        magnitudes = weight.detach().reshape(-1)[active].abs()
        drop = active[select_largest(-magnitudes, n)]
        new = flat.clone()
        new[drop] = False
        return new.view(mask.shape)

    @staticmethod
    def grow_random(mask, n, generator):
        flat = mask.reshape(-1)
        inactive = torch.nonzero(~flat).flatten()
        n = max(0, min(int(n), inactive.numel()))
        perm = torch.randperm(inactive.numel(), generator=generator, device=generator.device)
        new = flat.clone()
        new[inactive[perm[:n].to(inactive.device)]] = True
        return new.view(mask.shape)

    @staticmethod
    def grow_by_score(mask, score, n):
        flat = mask.reshape(-1)
        n = max(0, min(int(n), flat.numel() - int(torch.count_nonzero(flat))))
        magnitudes = score.detach().reshape(-1).abs().masked_fill_(flat, -1)
        return (flat | select_largest(magnitudes, n)).view(mask.shape)

    @classmethod
    def prune_and_regrow(cls, weight, mask, n, rule, grad=None, generator=None):
        pruned = cls.prune_magnitude(weight, mask, n)
        removed = int(torch.count_nonzero(mask)) - int(torch.count_nonzero(pruned))
        new = cls.grow_random(pruned, removed, generator) if rule == "random" \
            else cls.grow_by_score(pruned, grad, removed)
        return new, new & ~pruned

    @staticmethod
    def global_magnitude_prune(weights, masks, keep):
        active = sum(int(torch.count_nonzero(m)) for m in masks)
        if keep >= active:
            return [m.clone() for m in masks]
        active_idx = [torch.nonzero(m.reshape(-1)).flatten() for m in masks]
        values = [w.detach().reshape(-1)[idx] for w, idx in zip(weights, active_idx)]
        kept = global_topk_masks(values, keep)
        out = []
        for m, idx, k in zip(masks, active_idx, kept):
            new = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
            new[idx[k]] = True
            out.append(new.view(m.shape))
        return out

    @classmethod
    def masked_update(cls, masked: Masked, rate, rule, generator, grads, repicked):
        """`Masked.prune_and_regrow` as it was: per layer, the count read back, then the rule."""
        new, regrown = [], []
        for w, m, grad in zip(masked.weights, masked.masks, grads):
            mask = m.bool()
            n = round(rate * int(mask.sum()))
            nm, g = cls.prune_and_regrow(w.detach(), mask, n, rule, grad=grad, generator=generator)
            new.append(nm)
            regrown.append(g)
        masked.set_masks(new, regrown if repicked == "zero" else None)


def tied_values(g: torch.Generator, shape, ties: bool) -> torch.Tensor:
    """Gaussian values, or few distinct magnitudes (heavy ties) with zeros and negative zeros."""
    if not ties:
        return torch.randn(shape, generator=g)
    v = torch.randint(-3, 4, shape, generator=g).float()
    v[v == 0] = torch.where(torch.rand(int((v == 0).sum()), generator=g) < 0.5, 0.0, -0.0)
    return v


def random_mask(g: torch.Generator, shape, density: float) -> torch.Tensor:
    n = math.prod(shape)
    mask = torch.zeros(n, dtype=B)
    mask[torch.randperm(n, generator=g)[:round(density * n)]] = True
    return mask.view(shape)


CASES = [(shape, density, rate, ties)
         for shape in [(7,), (12, 9), (16, 8, 3, 3)]
         for density in [0.0, 0.05, 0.5, 0.97, 1.0]
         for rate in [0.0, 0.3, 1.0]
         for ties in [False, True]]


@pytest.mark.parametrize("shape,density,rate,ties", CASES)
def test_each_rule_chooses_the_masks_of_the_reference(shape, density, rate, ties):
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        w, grad = tied_values(g, shape, ties), tied_values(g, shape, ties)
        mask = random_mask(g, shape, density)
        active = int(mask.sum())
        n = round(rate * active)
        assert torch.equal(prune_magnitude(w, mask, n, active), Reference.prune_magnitude(w, mask, n))
        assert torch.equal(grow_by_score(mask, grad, n, active), Reference.grow_by_score(mask, grad, n))
        assert torch.equal(grow_random(mask, n, torch.Generator().manual_seed(seed), active),
                           Reference.grow_random(mask, n, torch.Generator().manual_seed(seed)))
        for rule in ["random", "gradient"]:
            got = prune_and_regrow(w, mask, n, rule, grad=grad, generator=torch.Generator().manual_seed(seed),
                                   active=active)
            want = Reference.prune_and_regrow(w, mask, n, rule, grad=grad,
                                              generator=torch.Generator().manual_seed(seed))
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (rule, seed)


def test_a_layer_past_the_sampled_threshold_size_chooses_the_masks_of_the_reference():
    # > 2^20 entries: the reference brackets the k-th largest from a sample; all-tied zeros included
    g = torch.Generator().manual_seed(0)
    shape = (1100, 1000)
    w, grad = tied_values(g, shape, ties=True), torch.randn(shape, generator=g)
    grad.view(-1)[:200_000] = 0.0
    mask = random_mask(g, shape, 0.3)
    n = round(0.4 * int(mask.sum()))
    for rule in ["random", "gradient"]:
        got = prune_and_regrow(w, mask, n, rule, grad=grad, generator=torch.Generator().manual_seed(1))
        want = Reference.prune_and_regrow(w, mask, n, rule, grad=grad, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), rule


@pytest.mark.parametrize("ties", [False, True])
def test_global_prune_chooses_the_masks_of_the_reference(ties):
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        shapes = [(int(torch.randint(1, 9, (1,), generator=g)), 6) for _ in range(4)]
        ws = [tied_values(g, s, ties) for s in shapes]
        ms = [random_mask(g, s, float(torch.rand((), generator=g))) for s in shapes]
        active = sum(int(m.sum()) for m in ms)
        for keep in sorted({0, active // 3, active - 1, active, active + 2} - {-1}):
            got = global_magnitude_prune(ws, ms, keep, active)
            want = Reference.global_magnitude_prune(ws, ms, keep)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (seed, keep)


def test_magnitude_keys_order_by_magnitude_then_index_and_refuse_what_they_cannot_rank_exactly():
    v = torch.tensor([0.5, -0.5, 0.0, -0.0, 2.0])
    assert torch.argsort(magnitude_keys(v, "lower_first")).tolist() == [2, 3, 0, 1, 4]
    assert torch.argsort(magnitude_keys(v, "lower_last")).tolist() == [3, 2, 1, 0, 4]
    assert torch.equal(magnitude_keys(v.half(), "lower_first"), magnitude_keys(v, "lower_first"))
    with pytest.raises(ValueError, match=r"ranked values must be one of .*float32.*, got torch.float64"):
        magnitude_keys(v.double(), "lower_first")
    with pytest.raises(ValueError, match=r"ties must be one of \['lower_first', 'lower_last'\], got 'up'"):
        magnitude_keys(v, "up")


# ---------------------------------------------------------------------------------------------
# on a model: `Masked` and the DST rules against the reference, and the host reads they make

def conv_model(seed: int, density: float) -> tuple[torch.nn.Module, torch.optim.Optimizer, Masked]:
    """A small conv net with masks (one near-dense layer), after one real SGD step with momentum."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    layers = {"0.weight": 0.97, "2.weight": density, "4.weight": density}
    attach_masks(model, {name: random_mask(g, dict(model.named_parameters())[name].shape, d)
                         for name, d in layers.items()})
    masked = Masked(model, opt)
    model(torch.randn(4, 3, 8, 8)).logsumexp(1).sum().backward()
    masked.mask_grads()
    opt.step()
    model(torch.randn(4, 3, 8, 8)).logsumexp(1).sum().backward()  # the next step's dense gradient
    return model, opt, masked


def state(model, opt, masked) -> list[torch.Tensor]:
    return [*(m.clone() for m in masked.masks), *(w.detach().clone() for w in masked.weights),
            *(opt.state[w]["momentum_buffer"].clone() for w in masked.weights)]


@pytest.mark.parametrize("rule", ["random", "gradient"])
@pytest.mark.parametrize("repicked", ["keep", "zero"])
def test_masked_update_leaves_masks_weights_and_momentum_as_the_reference(rule, repicked):
    for seed in range(6):
        for density, rate in [(0.1, 0.5), (0.5, 0.3), (0.9, 1.0)]:
            sides = []
            for update in ["new", "reference"]:
                model, opt, masked = conv_model(seed, density)
                grads = masked.dense_grads()
                masked.mask_grads()
                for k in range(3):  # successive updates: the host's counts stay right
                    g = torch.Generator().manual_seed(100 * seed + k)
                    if update == "new":
                        masked.prune_and_regrow(rate, rule, g, grads, repicked)
                    else:
                        Reference.masked_update(masked, rate, rule, g, grads, repicked)
                sides.append(state(model, opt, masked))
                assert masked.counts == [int(m.sum()) for m in masked.masks]
            assert all(torch.equal(a, b) for a, b in zip(*sides)), (seed, density, rate)


def test_granet_updates_leave_the_masks_of_the_reference():
    """GraNet's update: the global prune to the cubic schedule, then the per-layer prune and regrow."""
    rule = DST(method="granet", update_frequency=1, prune_rate=0.5, prune_rate_decay="cosine", total_steps=40,
               stop_step=40, seed=3, target_density=0.1, init_density=0.6, prune_start_step=0, prune_end_step=20)
    for seed in range(4):
        sides = []
        for update in ["new", "reference"]:
            model, opt, masked = conv_model(seed, 0.6)
            grads = masked.dense_grads()
            for step in range(1, 25, 4):
                if update == "new":
                    rule.update(masked, step, grads)
                else:
                    keep = round(cubic_density(step, 0, 20, 0.6, 0.1) * masked.total())
                    if sum(int(m.sum()) for m in masked.masks) > keep:
                        masked.set_masks(Reference.global_magnitude_prune(
                            [w.detach() for w in masked.weights], [m.bool() for m in masked.masks], keep))
                    Reference.masked_update(masked, prune_rate_at(step, 40, 0.5, "cosine"), "gradient",
                                            update_generator(3, step), grads, "keep")
            sides.append(state(model, opt, masked))
        assert all(torch.equal(a, b) for a, b in zip(*sides)), seed


class HostReads(TorchFunctionMode):
    """Records each torch operation that reads a value back from the device to the host: a tensor
    turned into a Python number or bool or list, an output whose size depends on the values
    (`nonzero`, boolean-mask indexing, ...). On CUDA each is a sync; on the CPU the same calls
    mark where a CUDA run would sync, which is what this counts."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
             "masked_select", "unique", "unique_consecutive", "repeat_interleave", "cpu", "numpy",
             "equal", "allclose"}
    INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        flat = [*args, *(a for x in args if isinstance(x, (tuple, list)) for a in x)]
        if name in self.READS or (name in self.INDEXING and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bool and a.dim() > 0 for a in flat[1:])):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule", ["random", "gradient"])
def test_a_per_layer_update_reads_nothing_back_from_the_device(rule):
    model, opt, masked = conv_model(0, 0.3)
    grads = masked.dense_grads()
    masked.mask_grads()
    with HostReads() as new:
        masked.prune_and_regrow(0.5, rule, torch.Generator().manual_seed(0), grads, "zero")
    with HostReads() as old:  # the detector finds the reference's reads: several per layer
        Reference.masked_update(masked, 0.5, rule, torch.Generator().manual_seed(0), grads, "zero")
    assert new.reads == []
    assert len(old.reads) >= 3 * len(masked.masks), old.reads


def test_granet_global_prune_reads_the_new_counts_once():
    model, opt, masked = conv_model(0, 0.6)
    with HostReads() as seen:
        masked.global_prune(masked.active() // 2)
    assert seen.reads == ["tolist"]
    assert masked.counts == [int(m.sum()) for m in masked.masks] and masked.active() == sum(masked.counts)
