"""Tests of suptickets.superpose: averaging (CAA / CIMA), re-pruning, the superposition steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suptickets.superpose import State, average, reprune, step_weight, superpose_steps

KEYS = ["a.weight", "b.weight"]
COUNTS = [2, 1]  # budget 3 over the 6 masked entries


def _state(a, b, bias, nbt):
    return {
        "a.weight": torch.tensor(a, dtype=torch.float32),
        "b.weight": torch.tensor(b, dtype=torch.float32),
        "b.bias": torch.tensor(bias, dtype=torch.float32),
        "bn.num_batches_tracked": torch.tensor(nbt, dtype=torch.int64),
    }


def _tickets():
    t0 = _state([4, 0, -2, 0], [0, 1], [0, 1], 10)
    t1 = _state([0, 2, -2, 0], [4, 0], [1, 1], 20)
    t2 = _state([0, 3, 0, 6], [4, 6], [2, 4], 30)
    return [t0, t1, t2]


def close(x, expected):
    torch.testing.assert_close(x, torch.tensor(expected, dtype=x.dtype), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# average / step_weight


def test_average_explicit_formula_and_integers():
    t0, t1, _ = _tickets()
    out = average(t0, t1, 0.25)
    # 0.75 * t0 + 0.25 * t1
    close(out["a.weight"], [3.0, 0.5, -2.0, 0.0])
    close(out["b.weight"], [1.0, 0.75])
    close(out["b.bias"], [0.25, 1.0])
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert int(out["bn.num_batches_tracked"]) == 20  # taken from `new`, not averaged
    assert out["bn.num_batches_tracked"] is not t1["bn.num_batches_tracked"]
    assert t0["a.weight"].tolist() == [4, 0, -2, 0]  # inputs untouched


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 1000), w=st.floats(0.0, 1.0))
def test_average_matches_formula(seed, w):
    g = torch.Generator().manual_seed(seed)
    p = {"x": torch.randn(7, 3, generator=g), "y": torch.randn(2, dtype=torch.float64, generator=g)}
    q = {"x": torch.randn(7, 3, generator=g), "y": torch.randn(2, dtype=torch.float64, generator=g)}
    out = average(p, q, w)
    for k in p:
        assert out[k].dtype == p[k].dtype
        torch.testing.assert_close(out[k], (1 - w) * p[k] + w * q[k], atol=1e-6, rtol=0)


def test_average_key_mismatch():
    with pytest.raises(ValueError, match=r"only in prev \['x'\].*only in new \['z'\]"):
        one = torch.ones(1)
        average({"x": one, "y": one}, {"y": one, "z": one}, 0.5)
    with pytest.raises(ValueError, match="x"):
        average({"x": torch.ones(2)}, {"x": torch.ones(3)}, 0.5)


def test_step_weight():
    assert step_weight("caa", 1, 0.5) == pytest.approx(1 / 2)
    assert step_weight("caa", 3, 0.5) == pytest.approx(1 / 4)
    assert step_weight("cima", 7, 0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"superpose\.method.*caa.*cima"):
        step_weight("ema", 1, 0.5)
    with pytest.raises(ValueError):
        step_weight("caa", 0, 0.5)


def test_caa_is_plain_mean():
    g = torch.Generator().manual_seed(0)
    ts = [{"x": torch.randn(5, generator=g)} for _ in range(5)]
    s = ts[0]
    for k in range(1, 5):
        s = average(s, ts[k], step_weight("caa", k, 0.5))
    torch.testing.assert_close(s["x"], torch.stack([t["x"] for t in ts]).mean(0))


# ---------------------------------------------------------------------------------------------
# reprune


def test_reprune_global_and_layerwise_by_hand():
    state = _state([2, 1, -2, 0], [2, 0.5], [5, 5], 3)
    # global top 3 of |.|: 2 2 0 0 | 2 0.5 -> a0, a2, b0
    out, masks = reprune(state, KEYS, COUNTS, "global")
    close(out["a.weight"], [2, 0, -2, 0])
    close(out["b.weight"], [2, 0])
    assert masks["a.weight"].tolist() == [True, False, True, False]
    assert masks["b.weight"].tolist() == [True, False]
    close(out["b.bias"], [5, 5])  # not masked: untouched
    assert out["b.bias"] is state["b.bias"]
    # a budget that layers share differently: b has the two largest
    s2 = _state([1, 0.5, -0.25, 0], [3, -2], [0, 0], 0)
    out, masks = reprune(s2, KEYS, COUNTS, "global")
    close(out["a.weight"], [1, 0, 0, 0])
    close(out["b.weight"], [3, -2])
    out, masks = reprune(s2, KEYS, COUNTS, "layerwise")
    close(out["a.weight"], [1, 0.5, 0, 0])
    close(out["b.weight"], [3, 0])
    assert [int(m.sum()) for m in masks.values()] == COUNTS


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("fill", [0.0, 1.0, -2.5])
def test_reprune_exact_with_ties(scope, fill):
    state = {"a": torch.full((4, 5), fill), "b": torch.full((7,), fill), "c": torch.ones(2)}
    out, masks = reprune(state, ["a", "b"], [6, 3], scope)
    assert sum(int(m.sum()) for m in masks.values()) == 9
    nonzero = sum(int((out[k] != 0).sum()) for k in ("a", "b"))
    assert nonzero == (0 if fill == 0 else 9)
    for k in ("a", "b"):
        assert bool((out[k][~masks[k]] == 0).all())
        assert not bool(torch.signbit(out[k][~masks[k]]).any())  # exact +0, not -0
    if scope == "global":  # ties: lower position in the concatenation wins -> all 9 in "a"
        assert int(masks["a"].sum()) == 9 and masks["a"].flatten()[:9].all()


@pytest.mark.parametrize("seed", [0, 1])
def test_reprune_global_equals_sorted_topk_and_masked_fill(seed):
    """Against the straightforward version (one stable sort over the concatenated |w|, then
    masked_fill), bit for bit, on mostly-zero tensors with ties and -0.0, for every budget."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in [("a", (12, 5)), ("b", (9,)), ("c", (4, 3, 2))]:
        t = torch.randint(-2, 3, shape, generator=g).float() * 0.5
        t[torch.rand(shape, generator=g) < 0.7] = 0.0
        t[torch.rand(shape, generator=g) < 0.1] = -0.0
        state[key] = t
    keys = ["a", "b", "c"]
    flat = torch.cat([state[k].flatten().abs() for k in keys])
    sizes = [state[k].numel() for k in keys]
    for budget in range(flat.numel() + 1):
        order = torch.sort(flat, descending=True, stable=True).indices[:budget]
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order] = True
        want = dict(zip(keys, (m.view(state[k].shape) for k, m in zip(keys, keep.split(sizes)))))
        # (the global scope only uses the sum of the per-layer counts)
        counts = [min(n, max(0, budget - sum(sizes[:i]))) for i, n in enumerate(sizes)]
        out, masks = reprune(state, keys, counts, "global")
        for k in keys:
            assert torch.equal(masks[k], want[k]), (budget, k)
            expected = state[k].masked_fill(~want[k], 0)
            assert torch.equal(out[k].view(torch.int32), expected.view(torch.int32)), (budget, k)


def test_reprune_errors():
    state = _state([1, 2, 3, 4], [1, 2], [0, 0], 0)
    with pytest.raises(ValueError, match=r"superpose\.scope"):
        reprune(state, KEYS, COUNTS, "per-channel")
    with pytest.raises(ValueError, match="missing|not in"):
        reprune(state, ["nope"], [1], "global")
    with pytest.raises(ValueError):
        reprune(state, KEYS, [5, 1], "layerwise")


# ---------------------------------------------------------------------------------------------
# superpose_steps against hand-worked values
#
# T0: a = [4, 0, -2, 0]  b = [0, 1]  bias = [0, 1]  nbt = 10
# T1: a = [0, 2, -2, 0]  b = [4, 0]  bias = [1, 1]  nbt = 20
# T2: a = [0, 3,  0, 6]  b = [4, 6]  bias = [2, 4]  nbt = 30
# counts a: 2, b: 1 (global budget 3)
#
# k = 1 (CAA w = 1/2 and CIMA 0.5 agree): avg = a [2, 1, -2, 0], b [2, 1/2], bias [1/2, 1]
#   global top 3: a0, a2, b0;  layerwise: a0, a2 | b0  ->  S1 = a [2, 0, -2, 0], b [2, 0]
#
# k = 2, CAA w = 1/3:
#   each:  (2/3) S1 + (1/3) T2 = a [4/3, 1, -4/3, 2], b [8/3, 2]
#          global top 3: 8/3 (b0), 2 (a3), 2 (b1) -> a [0, 0, 0, 2], b [8/3, 2]
#          layerwise: a keeps 2 and the first of the tied 4/3s (a0); b keeps 8/3
#                     -> a [4/3, 0, 0, 2], b [8/3, 0]
#   final: (2/3) A1 + (1/3) T2 = a [4/3, 5/3, -4/3, 2], b [8/3, 7/3]
#          global: 8/3, 7/3, 2 -> a [0, 0, 0, 2], b [8/3, 7/3]
#          layerwise: a [0, 5/3, 0, 2], b [8/3, 0]
#   bias (never pruned): (2/3)[1/2, 1] + (1/3)[2, 4] = [1, 2]
# k = 2, CIMA 0.5:
#   each:  (S1 + T2)/2 = a [1, 3/2, -1, 3], b [3, 3]
#          global: 3 (a3), 3 (b0), 3 (b1) -> a [0, 0, 0, 3], b [3, 3]
#          layerwise: a [0, 3/2, 0, 3]; b ties at 3 -> b0 -> b [3, 0]
#   final: (A1 + T2)/2 = a [1, 2, -1, 3], b [3, 13/4]
#          global: 13/4, 3, 3 -> a [0, 0, 0, 3], b [3, 13/4]
#          layerwise: a [0, 2, 0, 3], b [0, 13/4]
#   bias: ([1/2, 1] + [2, 4]) / 2 = [5/4, 5/2]
S1 = ([2, 0, -2, 0], [2, 0])
EXPECTED = {
    ("caa", "each", "global"): ([0, 0, 0, 2], [8 / 3, 2]),
    ("caa", "each", "layerwise"): ([4 / 3, 0, 0, 2], [8 / 3, 0]),
    ("caa", "final", "global"): ([0, 0, 0, 2], [8 / 3, 7 / 3]),
    ("caa", "final", "layerwise"): ([0, 5 / 3, 0, 2], [8 / 3, 0]),
    ("cima", "each", "global"): ([0, 0, 0, 3], [3, 3]),
    ("cima", "each", "layerwise"): ([0, 1.5, 0, 3], [3, 0]),
    ("cima", "final", "global"): ([0, 0, 0, 3], [3, 13 / 4]),
    ("cima", "final", "layerwise"): ([0, 2, 0, 3], [0, 13 / 4]),
}
BIAS = {"caa": ([0.5, 1], [1, 2]), "cima": ([0.5, 1], [1.25, 2.5])}


@pytest.mark.parametrize("method,mode,scope", sorted(EXPECTED))
def test_superpose_steps_by_hand(method, mode, scope):
    tickets = _tickets()
    steps = list(
        superpose_steps(
            tickets,
            method=method,
            cima_factor=0.5,
            reprune_mode=mode,
            masked_keys=KEYS,
            counts=COUNTS,
            scope=scope,
        )
    )
    assert [k for k, _, _ in steps] == [1, 2]  # M = 2 results
    (_, s1, m1), (_, s2, m2) = steps
    close(s1["a.weight"], S1[0])
    close(s1["b.weight"], S1[1])
    close(s2["a.weight"], EXPECTED[method, mode, scope][0])
    close(s2["b.weight"], EXPECTED[method, mode, scope][1])
    close(s1["b.bias"], BIAS[method][0])
    close(s2["b.bias"], BIAS[method][1])
    assert [int(s["bn.num_batches_tracked"]) for s in (s1, s2)] == [20, 30]
    for masks, state in ((m1, s1), (m2, s2)):
        assert set(masks) == set(KEYS)
        assert sum(int(m.sum()) for m in masks.values()) == sum(COUNTS)
        if scope == "layerwise":
            assert [int(masks[k].sum()) for k in KEYS] == COUNTS
        for k in KEYS:
            assert bool((state[k][~masks[k]] == 0).all())
    assert tickets[0]["a.weight"].tolist() == [4, 0, -2, 0]  # inputs untouched


def test_superpose_is_lazy_and_yields_m_results():
    seen = []

    def produce():
        for i, t in enumerate(_tickets() + [_state([1, 1, 1, 1], [1, 1], [0, 0], 40)]):
            seen.append(i)
            yield t

    it = superpose_steps(
        produce(), method="caa", cima_factor=0.5, reprune_mode="each",
        masked_keys=KEYS, counts=COUNTS, scope="global",
    )
    assert seen == []
    k, _, _ = next(it)
    assert k == 1 and seen == [0, 1]  # ticket by ticket
    assert [k for k, _, _ in it] == [2, 3]


def test_superpose_final_equals_average_then_prune():
    g = torch.Generator().manual_seed(0)
    ts = [
        {"w": torch.randn(6, 6, generator=g), "v": torch.randn(10, generator=g)}
        for _ in range(4)
    ]
    *_, (k, last, masks) = superpose_steps(
        ts, method="caa", cima_factor=0.5, reprune_mode="final",
        masked_keys=["w", "v"], counts=[9, 4], scope="global",
    )
    mean = {key: torch.stack([t[key] for t in ts]).mean(0) for key in ("w", "v")}
    expected, _ = reprune(mean, ["w", "v"], [9, 4], "global")
    assert k == 3
    for key in ("w", "v"):
        torch.testing.assert_close(last[key], expected[key])


def test_superpose_errors_are_eager():
    kw = dict(cima_factor=0.5, masked_keys=KEYS, counts=COUNTS)
    with pytest.raises(ValueError, match=r"superpose\.reprune"):
        superpose_steps(_tickets(), method="caa", reprune_mode="never", scope="global", **kw)
    with pytest.raises(ValueError, match=r"superpose\.method"):
        superpose_steps(_tickets(), method="swa", reprune_mode="each", scope="global", **kw)
    with pytest.raises(ValueError, match=r"superpose\.scope"):
        superpose_steps(_tickets(), method="caa", reprune_mode="each", scope="channel", **kw)
    single = superpose_steps(
        _tickets()[:1], method="caa", reprune_mode="each", scope="global", **kw
    )
    assert list(single) == []


def _random_tickets(n: int, seed: int) -> list[State]:
    """T_0..T_{n-1}: random weights (no ties in |w|), a bias and an integer counter."""
    g = torch.Generator().manual_seed(seed)
    return [{"a.weight": torch.randn(4, 6, generator=g), "b.weight": torch.randn(7, generator=g),
             "b.bias": torch.randn(7, generator=g), "bn.num_batches_tracked": torch.tensor(10 * i)}
            for i in range(n)]


def _superposed_by_hand(running: State, ticket: State, w: float, keys: list[str], counts: list[int],
                        scope: str) -> tuple[State, State, dict[str, torch.Tensor]]:
    """One cycle of DESIGN §1.3 in plain tensor math: (1 - w) * S + w * T for the floating tensors,
    the newer integer counters; then keep the largest |w| of the masked tensors, sum(counts) of them
    over all (global) or counts[i] in each (layerwise). Returns (average, pruned, masks)."""
    averaged = {k: (1 - w) * running[k] + w * ticket[k] if ticket[k].is_floating_point() else ticket[k]
                for k in ticket}
    keep = {}
    if scope == "global":
        flat = torch.cat([averaged[k].flatten().abs() for k in keys])
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[flat.argsort(descending=True)[:sum(counts)]] = True
        for k, part in zip(keys, chosen.split([averaged[k].numel() for k in keys])):
            keep[k] = part.view(averaged[k].shape)
    else:
        for k, c in zip(keys, counts):
            chosen = torch.zeros(averaged[k].numel(), dtype=torch.bool)
            chosen[averaged[k].flatten().abs().argsort(descending=True)[:c]] = True
            keep[k] = chosen.view(averaged[k].shape)
    pruned = {k: averaged[k] * keep[k] if k in keep else averaged[k] for k in averaged}
    return averaged, pruned, keep


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("method,mode", [("caa", "each"), ("caa", "final"), ("cima", "each"), ("cima", "final")])
def test_superposing_after_every_cycle_by_hand_equals_superposing_at_the_end(method, mode, scope):
    """DESIGN §1.3: superposing after the cycles equals superposing after each one. After cycle k the
    test folds T_k into S_{k-1} by hand (CAA weight 1/(k+1), CIMA 0.3; the pruned S_{k-1} with
    `reprune: each`, the unpruned average with `final`) and re-prunes to the budget; each S_k must be
    the k-th model superpose_steps yields over all the tickets at the end."""
    tickets, keys, counts, factor = _random_tickets(5, seed=1), ["a.weight", "b.weight"], [7, 3], 0.3
    at_the_end = list(superpose_steps(tickets, method=method, cima_factor=factor, reprune_mode=mode,
                                      masked_keys=keys, counts=counts, scope=scope))
    assert [k for k, _, _ in at_the_end] == [1, 2, 3, 4]
    running = tickets[0]
    for k, ticket in enumerate(tickets[1:], start=1):  # the end of cycle k: T_k is saved
        w = 1 / (k + 1) if method == "caa" else factor
        averaged, expected, keep = _superposed_by_hand(running, ticket, w, keys, counts, scope)
        running = expected if mode == "each" else averaged
        _, state, masks = at_the_end[k - 1]
        assert set(state) == set(expected) and set(masks) == set(keys)
        for key in keys:
            assert torch.equal(masks[key], keep[key]), (k, key)
        for key in expected:
            torch.testing.assert_close(state[key], expected[key], atol=1e-6, rtol=0, msg=f"S_{k} {key}")
        assert int(state["bn.num_batches_tracked"]) == 10 * k
        if scope == "layerwise":
            assert [int(masks[key].sum()) for key in keys] == counts
