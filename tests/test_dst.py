"""Tests of suptickets.sparsity.dst: prune / grow rules, prune-rate and cubic density schedules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suptickets.sparsity.dst import (
    cubic_density,
    global_magnitude_prune,
    grow_by_score,
    grow_random,
    prune_and_regrow,
    prune_magnitude,
    prune_rate_at,
)

B = torch.bool


# ---------------------------------------------------------------------------------------------
# prune / grow


def test_prune_magnitude_by_hand():
    w = torch.tensor([0.5, -0.1, 0.3, 0.0, 0.1, 0.2])
    m = torch.tensor([True, True, True, False, True, True])
    # active |w|: 0.5 0.1 0.3 . 0.1 0.2 ; the two 0.1 tie, the lower index goes first
    assert prune_magnitude(w, m, 1).tolist() == [True, False, True, False, True, True]
    assert prune_magnitude(w, m, 2).tolist() == [True, False, True, False, False, True]
    assert prune_magnitude(w, m, 3).tolist() == [True, False, True, False, False, False]
    # an inactive weight is never "pruned", even though |0.0| is the smallest
    assert prune_magnitude(w, m, 99).sum() == 0
    assert torch.equal(prune_magnitude(w, m, -1), m)
    assert m.tolist() == [True, True, True, False, True, True]  # input untouched


def test_prune_magnitude_all_zero_weights_ties():
    w = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=B)
    assert prune_magnitude(w, m, 4).tolist() == [[False, False, False], [False, True, True]]


def test_grow_by_score_by_hand():
    m = torch.tensor([[True, False], [False, False]])
    s = torch.tensor([[9.0, -3.0], [3.0, 1.0]])
    # inactive |score|: 3 (0,1), 3 (1,0), 1 (1,1); the active 9 is ignored; tie -> lower index
    assert grow_by_score(m, s, 1).tolist() == [[True, True], [False, False]]
    assert grow_by_score(m, s, 2).tolist() == [[True, True], [True, False]]
    assert grow_by_score(m, s, 10).all()


def test_grow_random_exact_and_deterministic():
    m = torch.zeros(10, 10, dtype=B)
    m[0] = True
    a = grow_random(m, 25, torch.Generator().manual_seed(1))
    b = grow_random(m, 25, torch.Generator().manual_seed(1))
    c = grow_random(m, 25, torch.Generator().manual_seed(2))
    assert int(a.sum()) == 35 and bool(a[0].all())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert grow_random(m, 1000, torch.Generator()).all()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 60), frac=st.floats(0.0, 1.0), n=st.integers(0, 70))
def test_grow_by_score_matches_a_stable_sort_of_the_inactive_entries(seed, size, frac, n):
    # integer-valued scores: heavy ties (and zeros, and NaN/-0.0 where the weights are active)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(size, generator=g) < frac
    score = torch.randint(-3, 4, (size,), generator=g).float()
    score[mask & (torch.rand(size, generator=g) < 0.3)] = float("nan")  # active entries never looked at
    inactive = torch.nonzero(~mask).flatten()
    order = inactive[torch.sort(score[inactive].abs(), descending=True, stable=True).indices]
    expected = mask.clone()
    expected[order[:n]] = True
    assert torch.equal(grow_by_score(mask, score, n), expected)


# ---------------------------------------------------------------------------------------------
# prune_and_regrow


def _case(seed: int, shape=(20, 20), active=100):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g)
    mask = torch.zeros(math.prod(shape), dtype=B)
    mask[torch.randperm(mask.numel(), generator=g)[:active]] = True
    return w, grad, mask.view(shape)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    frac=st.floats(0.0, 1.0),
    rate=st.floats(0.0, 1.0),
    rule=st.sampled_from(["random", "gradient"]),
)
def test_prune_and_regrow_invariants(seed, rows, cols, frac, rate, rule):
    n_total = rows * cols
    active = round(frac * n_total)
    w, grad, mask = _case(seed, (rows, cols), active)
    n = int(rate * active)
    new, grown = prune_and_regrow(
        w, mask, n, rule, grad=grad, generator=torch.Generator().manual_seed(seed)
    )
    pruned = prune_magnitude(w, mask, n)
    assert new.dtype == B and grown.dtype == B and new.shape == mask.shape
    assert int(new.sum()) == active  # count kept
    assert int(grown.sum()) == n
    assert not bool((grown & pruned).any())  # grown among positions inactive after pruning
    assert torch.equal(new, pruned | grown)
    # the pruned ones are the smallest-magnitude active weights
    removed = mask & ~pruned
    if bool(removed.any()) and bool(pruned.any()):
        assert float(w[removed].abs().max()) <= float(w[pruned].abs().min())


def test_gradient_regrows_largest_gradients():
    w, grad, mask = _case(0)
    new, grown = prune_and_regrow(w, mask, 50, "gradient", grad=grad)
    pruned = prune_magnitude(w, mask, 50)
    candidates = torch.nonzero(~pruned.flatten()).flatten()
    order = sorted(candidates.tolist(), key=lambda i: (-abs(float(grad.flatten()[i])), i))
    expected = torch.zeros(400, dtype=B)
    expected[order[:50]] = True
    assert torch.equal(grown.flatten(), expected)
    assert int(new.sum()) == 100


def test_just_pruned_positions_may_regrow():
    # the pruned weight sits where the gradient is largest: gradient regrowth takes it back
    w = torch.tensor([0.1, 5.0, 0.0, 0.0])
    m = torch.tensor([True, True, False, False])
    grad = torch.tensor([9.0, 0.0, 1.0, 2.0])
    new, grown = prune_and_regrow(w, m, 1, "gradient", grad=grad)
    assert new.tolist() == [True, True, False, False]
    assert grown.tolist() == [True, False, False, False]


def test_random_regrowth_is_not_gradient_regrowth():
    w, grad, mask = _case(0)
    n = 50
    pruned = prune_magnitude(w, mask, n)
    score = grad.abs().masked_fill(pruned, -1.0).flatten()
    top = torch.zeros(400, dtype=B)
    top[torch.topk(score, n).indices] = True
    g = torch.Generator().manual_seed(1234)
    overlaps = []
    for _ in range(20):
        _, grown = prune_and_regrow(w, mask, n, "random", generator=g)
        overlaps.append(int((grown.flatten() & top).sum()) / n)
    # uniform choice among 350 inactive positions -> expected overlap 50/350 ~ 14%
    mean = sum(overlaps) / len(overlaps)
    assert mean < 0.4
    assert max(overlaps) < 1.0
    assert len({round(o, 6) for o in overlaps}) > 1  # draws differ between trials


def test_random_regrowth_deterministic_for_seed():
    w, grad, mask = _case(5)
    a = prune_and_regrow(w, mask, 30, "random", generator=torch.Generator().manual_seed(7))
    b = prune_and_regrow(w, mask, 30, "random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_prune_and_regrow_errors():
    w, grad, mask = _case(0)
    with pytest.raises(ValueError, match=r"random.*gradient"):
        prune_and_regrow(w, mask, 5, "momentum", grad=grad)
    with pytest.raises(ValueError, match="Generator"):
        prune_and_regrow(w, mask, 5, "random")
    with pytest.raises(ValueError, match="gradient"):
        prune_and_regrow(w, mask, 5, "gradient")
    with pytest.raises(ValueError, match="bool"):
        prune_magnitude(w, mask.float(), 1)
    with pytest.raises(ValueError, match="shape"):
        prune_magnitude(w[:2], mask, 1)


# ---------------------------------------------------------------------------------------------
# schedules


def test_prune_rate_constant_and_cosine():
    assert prune_rate_at(123, 1000, 0.5, "constant") == 0.5
    assert prune_rate_at(0, 1000, 0.5, "cosine") == pytest.approx(0.5)
    assert prune_rate_at(500, 1000, 0.5, "cosine") == pytest.approx(0.25)
    # quarter way: 0.5 * (1 + cos(pi/4)) / 2 = 0.5 * (1 + 0.70711) / 2 = 0.42678
    assert prune_rate_at(250, 1000, 0.5, "cosine") == pytest.approx(0.4267766952966369)
    assert prune_rate_at(1000, 1000, 0.5, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert prune_rate_at(5000, 1000, 0.5, "cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"dst\.prune_rate_decay"):
        prune_rate_at(0, 10, 0.5, "linear")


def test_cubic_density_by_hand():
    # d_i = 0.5, d_f = 0.1, from step 100 to 300
    args = dict(start_step=100, end_step=300, init_density=0.5, final_density=0.1)
    assert cubic_density(0, **args) == pytest.approx(0.5)  # before start: t = 0
    assert cubic_density(100, **args) == pytest.approx(0.5)
    # middle: t = 1/2 -> 0.1 + 0.4 * (1/2)^3 = 0.1 + 0.05 = 0.15
    assert cubic_density(200, **args) == pytest.approx(0.15)
    # t = 1/4 -> 0.1 + 0.4 * (3/4)^3 = 0.1 + 0.16875 = 0.26875
    assert cubic_density(150, **args) == pytest.approx(0.26875)
    assert cubic_density(300, **args) == pytest.approx(0.1)
    assert cubic_density(1000, **args) == pytest.approx(0.1)
    # end == start: a step
    assert cubic_density(4, 5, 5, 0.5, 0.1) == pytest.approx(0.5)
    assert cubic_density(5, 5, 5, 0.5, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        cubic_density(0, 10, 5, 0.5, 0.1)


# ---------------------------------------------------------------------------------------------
# global_magnitude_prune


def test_global_magnitude_prune_by_hand():
    w1 = torch.tensor([[0.9, -0.2], [0.5, 0.0]])
    m1 = torch.tensor([[True, True], [True, False]])
    w2 = torch.tensor([3.0, 0.4, -0.5])
    m2 = torch.tensor([False, True, True])
    # active |w|: 0.9 0.2 0.5 | 0.4 0.5 ; the inactive 3.0 never counts
    a, b = global_magnitude_prune([w1, w2], [m1, m2], 3)
    assert a.tolist() == [[True, False], [True, False]] and b.tolist() == [False, False, True]
    # keep 2: 0.9 and the earlier of the two 0.5s (in w1)
    a, b = global_magnitude_prune([w1, w2], [m1, m2], 2)
    assert a.tolist() == [[True, False], [True, False]] and b.tolist() == [False, False, False]
    # keep >= active: unchanged copies
    a, b = global_magnitude_prune([w1, w2], [m1, m2], 5)
    assert torch.equal(a, m1) and torch.equal(b, m2) and a is not m1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 4), keep_frac=st.floats(0, 1))
def test_global_magnitude_prune_properties(seed, n_layers, keep_frac):
    g = torch.Generator().manual_seed(seed)
    shapes = [(int(torch.randint(1, 8, (1,), generator=g)), 5) for _ in range(n_layers)]
    # few distinct magnitudes -> many ties
    ws = [torch.randint(-3, 4, s, generator=g).float() for s in shapes]
    ms = [torch.rand(s, generator=g) < 0.6 for s in shapes]
    active = sum(int(m.sum()) for m in ms)
    keep = int(keep_frac * active)
    new = global_magnitude_prune(ws, ms, keep)
    assert sum(int(m.sum()) for m in new) == keep
    assert all(not bool((n & ~m).any()) for n, m in zip(new, ms))  # subset
    kept = torch.cat([w[n].abs() for w, n in zip(ws, new)])
    dropped = torch.cat([w[m & ~n].abs() for w, m, n in zip(ws, ms, new)])
    if kept.numel() and dropped.numel():
        assert float(kept.min()) >= float(dropped.max())
    assert all(torch.equal(a, b) for a, b in zip(new, global_magnitude_prune(ws, ms, keep)))
