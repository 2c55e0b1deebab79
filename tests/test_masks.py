"""Tests of suptickets.sparsity.masks: ERK budgets, random and exact top-k masks, counting."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suptickets.sparsity.masks import (
    count,
    densities,
    erk_densities,
    global_topk_masks,
    jaccard,
    layer_counts,
    random_mask,
    topk_mask,
)

# ---------------------------------------------------------------------------------------------
# ERK


def test_erk_two_linear_layers_by_hand():
    # shapes (4,2) and (3,4), d = 0.5:
    #   n = 8, 12; N = 20; budget d*N = 10
    #   p = (4+2)/8 = 3/4, (3+4)/12 = 7/12;  sum p*n = 6 + 7 = 13;  eps = 10/13
    #   d_1 = 3/4 * 10/13 = 15/26 = 0.576923...,  d_2 = 7/12 * 10/13 = 35/78 = 0.448717...
    #   neither reaches 1. Counts: 8*15/26 = 4.615 -> 5,  12*35/78 = 5.385 -> 5 (total 10)
    d = erk_densities([(4, 2), (3, 4)], 0.5)
    assert d == pytest.approx([0.5769230769230769, 0.44871794871794873], rel=1e-12)
    assert layer_counts([(4, 2), (3, 4)], 0.5, "erk") == [5, 5]


def test_erk_conv_and_linear_by_hand():
    # conv (4,2,3,3): n = 72, p = 12/72 = 1/6, p*n = 12;  linear (3,8): n = 24, p = 11/24, p*n = 11
    #   N = 96, d = 0.25 -> budget 24;  eps = 24 / (12 + 11) = 24/23
    #   d_conv = 1/6 * 24/23 = 4/23 = 0.173913...,  d_lin = 11/24 * 24/23 = 11/23 = 0.478260...
    #   counts: 72*4/23 = 12.52 -> 13,  24*11/23 = 11.48 -> 11
    shapes = [(4, 2, 3, 3), (3, 8)]
    assert erk_densities(shapes, 0.25) == pytest.approx([4 / 23, 11 / 23], rel=1e-12)
    assert erk_densities(shapes, 0.25) == pytest.approx([0.17391304347826086, 0.4782608695652174])
    assert layer_counts(shapes, 0.25, "erk") == [13, 11]


def test_erk_dense_layer_and_resolve():
    # shapes (2,2) and (10,10), d = 0.5: n = 4, 100; N = 104; budget 52
    #   p = 4/4 = 1, 20/100 = 1/5;  sum p*n = 4 + 20 = 24;  eps = 52/24 = 2.1667
    #   eps * p_1 = 2.17 >= 1 -> layer 1 dense (4 weights). Re-solve over layer 2 alone:
    #   eps = (52 - 4) / 20 = 2.4 -> d_2 = 2.4 * 1/5 = 0.48 (48 weights; total 52)
    assert erk_densities([(2, 2), (10, 10)], 0.5) == pytest.approx([1.0, 0.48], rel=1e-12)
    assert layer_counts([(2, 2), (10, 10)], 0.5, "erk") == [4, 48]


def test_erk_density_one_and_all_dense():
    assert erk_densities([(3, 3), (5, 7, 2)], 1.0) == [1.0, 1.0]
    # Tiny layers reach eps*p >= 1 first; at d close to 1 every layer ends up dense.
    d = erk_densities([(2, 2), (3, 3)], 0.999)
    assert all(0 < x <= 1 for x in d)
    assert sum(x * n for x, n in zip(d, (4, 9))) == pytest.approx(0.999 * 13)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_erk_bad_density(bad):
    with pytest.raises(ValueError, match="density"):
        erk_densities([(3, 3)], bad)
    with pytest.raises(ValueError, match="density"):
        layer_counts([(3, 3)], bad, "uniform")


shapes_st = st.lists(
    st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple), min_size=1, max_size=6
)


@settings(max_examples=200, deadline=None)
@given(shapes=shapes_st, d=st.floats(0.01, 1.0))
def test_erk_properties(shapes, d):
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, sizes)]
    dens = erk_densities(shapes, d)
    assert all(0 < x <= 1 for x in dens)
    # the budget is met exactly (before rounding)
    assert sum(x * n for x, n in zip(dens, sizes)) == pytest.approx(d * sum(sizes), rel=1e-9)
    # all sparse layers share one eps, and every dense layer has eps * p >= 1
    eps = [x / p for x, p in zip(dens, raw) if x < 1]
    if eps:
        assert max(eps) == pytest.approx(min(eps), rel=1e-9)
        assert all(p * eps[0] >= 1 - 1e-9 for x, p in zip(dens, raw) if x == 1)
    # counts: within one weight per layer of d*N, each in [1, n]
    counts = layer_counts(shapes, d, "erk")
    assert all(1 <= c <= n for c, n in zip(counts, sizes))
    assert abs(sum(counts) - d * sum(sizes)) <= len(shapes)


def test_uniform_counts_exact():
    # 0.2 * 100 = 20, 0.2 * 15 = 3, 0.2 * 2 = 0.4 -> rounds to 0, clamped to 1
    assert layer_counts([(10, 10), (3, 5), (2,)], 0.2, "uniform") == [20, 3, 1]
    assert layer_counts([(10, 10), (3, 5)], 1.0, "uniform") == [100, 15]


def test_unknown_distribution():
    with pytest.raises(ValueError, match=r"dst\.distribution.*erk.*uniform"):
        layer_counts([(3, 3)], 0.5, "bernoulli")


# ---------------------------------------------------------------------------------------------
# random_mask


def test_random_mask_exact_and_deterministic():
    m1 = random_mask((7, 9), 20, torch.Generator().manual_seed(3))
    m2 = random_mask((7, 9), 20, torch.Generator().manual_seed(3))
    m3 = random_mask((7, 9), 20, torch.Generator().manual_seed(4))
    assert m1.dtype == torch.bool and m1.shape == (7, 9)
    assert int(m1.sum()) == 20
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)
    assert int(random_mask((5,), 0, torch.Generator()).sum()) == 0
    assert bool(random_mask((5,), 5, torch.Generator(), device="cpu").all())
    with pytest.raises(ValueError):
        random_mask((5,), 6, torch.Generator())


def test_random_mask_is_uniform_ish():
    g = torch.Generator().manual_seed(0)
    hits = sum(random_mask((10,), 3, g).int() for _ in range(2000))
    # each position expected 600 times; binomial sd ~ 20
    assert int(hits.min()) > 500 and int(hits.max()) < 700


# ---------------------------------------------------------------------------------------------
# topk_mask / global_topk_masks


def _reference_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force: stable descending sort, the first k win (lower index first among ties)."""
    order = sorted(range(values.numel()), key=lambda i: (-float(values[i]), i))[:k]
    out = torch.zeros(values.numel(), dtype=torch.bool)
    out[order] = True
    return out


def test_topk_heavy_ties():
    zeros = torch.zeros(2, 4)
    m = topk_mask(zeros, 3)
    assert m.tolist() == [[True, True, True, False], [False, False, False, False]]
    equal = torch.full((3, 3), 5.0)
    assert topk_mask(equal, 4).flatten().tolist() == [True] * 4 + [False] * 5
    # one larger value, the rest tie: the larger one plus the earliest ties
    x = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0])
    assert topk_mask(x, 3).tolist() == [True, True, True, False, False]
    assert topk_mask(x, 0).sum() == 0 and topk_mask(x, 5).all()
    with pytest.raises(ValueError):
        topk_mask(x, 6)


def test_topk_negative_scores_are_ranked_by_value():
    x = torch.tensor([-3.0, 1.0, -0.5, 0.0])
    assert topk_mask(x, 2).tolist() == [False, True, False, True]


def test_topk_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([1.0, float("nan")]), 1)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.integers(-4, 4), min_size=1, max_size=60),
    data=st.data(),
)
def test_topk_matches_reference(values, data):
    x = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, x.numel()))
    m = topk_mask(x.view(1, -1), k)
    assert m.shape == (1, x.numel())
    assert torch.equal(m.flatten(), _reference_topk(x, k))


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=20), min_size=1, max_size=5),
    data=st.data(),
)
def test_global_topk_matches_reference(parts, data):
    tensors = [torch.tensor(p, dtype=torch.float32).view(-1, 1) for p in parts]
    total = sum(len(p) for p in parts)
    k = data.draw(st.integers(0, total))
    masks = global_topk_masks(tensors, k)
    assert [m.shape for m in masks] == [t.shape for t in tensors]
    assert all(m.dtype == torch.bool for m in masks)
    ref = _reference_topk(torch.cat([t.flatten().abs() for t in tensors]), k)
    assert torch.equal(torch.cat([m.flatten() for m in masks]), ref)


def test_global_topk_ties_lower_position_wins():
    a = torch.tensor([[1.0, -2.0], [0.0, 2.0]])
    b = torch.tensor([-2.0, 3.0, 2.0])
    ma, mb = global_topk_masks([a, b], 3)
    # |values|: 1 2 0 2 | 2 3 2 -> 3, then the first two 2s in concatenation order (a[0,1], a[1,1])
    assert ma.tolist() == [[False, True], [False, True]]
    assert mb.tolist() == [False, True, False]
    zs = global_topk_masks([torch.zeros(3), torch.zeros(2, 2)], 4)
    assert zs[0].tolist() == [True, True, True]
    assert zs[1].tolist() == [[True, False], [False, False]]


def _stable_reference(values: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    out = torch.zeros(values.numel(), dtype=torch.bool)
    out[order] = True
    return out


@pytest.mark.parametrize("kind", ["random_ties", "all_zero", "sorted", "sample_misleads"])
def test_global_topk_large_inputs_exact(kind):
    # > 2**20 entries exercises the sampled bracketing path and its fallback.
    g = torch.Generator().manual_seed(0)
    n = 1_500_000
    if kind == "random_ties":
        x = torch.randint(-500, 500, (n,), generator=g).float()
    elif kind == "all_zero":
        x = torch.zeros(n)
    elif kind == "sorted":
        x = torch.linspace(0, 1, n)
    else:
        # every sampled position (multiples of the odd stride) holds the maximum: bracket misses
        x = torch.rand(n, generator=g)
        x[:: (n // 65536) | 1] = 10.0
    parts = [x[: n // 3].view(-1, 10), x[n // 3 :]]
    for k in (1, 12_345, n // 20, n - 1):
        masks = global_topk_masks(parts, k)
        got = torch.cat([m.flatten() for m in masks])
        assert int(got.sum()) == k
        assert torch.equal(got, _stable_reference(x.abs(), k))


def _mostly_zero(seed: int) -> list[torch.Tensor]:
    """As in superposition: most entries exactly zero (some -0.0), the rest with heavy ties."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for shape in [(40, 30), (7,), (25, 4, 3)]:
        t = torch.randint(-3, 4, shape, generator=g).float()
        t[torch.rand(shape, generator=g) < 0.85] = 0.0
        t[torch.rand(shape, generator=g) < 0.05] = -0.0
        tensors.append(t)
    return tensors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_topk_of_mostly_zero_tensors_matches_a_stable_sort(seed):
    # only the nonzero entries are ranked; k beyond them takes the first zeros (-0.0 included)
    tensors = _mostly_zero(seed)
    flat = torch.cat([t.flatten().abs() for t in tensors])
    nnz = int(torch.count_nonzero(flat))
    assert 0 < nnz < flat.numel() // 5 and bool(torch.signbit(torch.cat([t.flatten() for t in tensors])).any())
    ks = {0, 1, nnz // 2, nnz - 1, nnz, nnz + 1, flat.numel() - 1, flat.numel(), *range(0, flat.numel(), 97)}
    for k in sorted(ks):
        got = torch.cat([m.flatten() for m in global_topk_masks(tensors, k)])
        assert torch.equal(got, _stable_reference(flat, k)), k


def test_global_topk_rejects_nan_also_when_k_exceeds_the_nonzero_entries():
    x = torch.zeros(10)
    x[3] = float("nan")
    for k in (1, 5):
        with pytest.raises(ValueError, match="NaN"):
            global_topk_masks([x], k)


def test_global_topk_empty_and_bad_k():
    assert global_topk_masks([], 0) == []
    with pytest.raises(ValueError):
        global_topk_masks([torch.ones(3)], 4)


def test_global_topk_does_not_touch_inputs_or_grad():
    w = torch.tensor([3.0, -1.0, 2.0], requires_grad=True)
    (m,) = global_topk_masks([w], 2)
    assert m.tolist() == [True, False, True]
    assert w.tolist() == [3.0, -1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# count / density / jaccard


def test_count_density_jaccard():
    a = [torch.tensor([True, False, True, False]), torch.tensor([[True], [False]])]
    b = [torch.tensor([True, True, False, False]), torch.tensor([[True], [False]])]
    assert count(a) == 3
    assert densities({"a": a[0], "b": a[1]}) == (3 / 6, {"a": 2 / 4, "b": 1 / 2})
    assert densities({}) == (1.0, {})  # nothing masked: a dense model
    # intersection: 1 + 1 = 2; union: 3 + 1 = 4
    assert jaccard(a, b) == pytest.approx(0.5)
    assert jaccard(a, a) == 1.0
    empty = [torch.zeros(3, dtype=torch.bool)]
    assert jaccard(empty, empty) == 1.0
    with pytest.raises(ValueError):
        jaccard(a, b[:1])
