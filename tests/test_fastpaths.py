"""The fast paths against plain reference code, on CPU: foreach masking (`Masked`), training with it,
the exact global top-k used by superposition, and the GPU benchmark's dry run."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from suptickets.models import build_model
from suptickets.sparsity.engine import Masked, init_masks, masks_of
from suptickets.sparsity.masks import global_topk_masks
from suptickets.superpose import superpose_steps
from suptickets.batches import Batches
from suptickets.train import train_epochs

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load_bench(name: str):
    if str(BENCH) not in sys.path:  # as when the script runs: its folder (benchmarks/_common.py) importable
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def masked_model(name: str, shape, seed: int = 0, density: float = 0.1, channels_last: bool = False):
    """A model with masks, built as the runtime does: memory format first, then the masks (which
    take their weights' format)."""
    torch.manual_seed(seed)
    model = build_model(name, shape, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    init_masks(model, density, "erk", False, torch.Generator().manual_seed(seed))
    return model, opt


def per_layer(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, mask) pairs found independently of Masked: the modules' own buffers."""
    modules = dict(model.named_modules())
    return [(modules[n.rsplit(".", 1)[0]].weight, m) for n, m in masks_of(model).items()]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: small ops are faster, and timing-free results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (a) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,channels_last", [("mlp", (1, 28, 28), False),
                                                      ("resnet32", (3, 8, 8), False),
                                                      ("resnet32", (3, 8, 8), True)])
def test_foreach_mask_grads_and_zero_outside_equal_a_per_layer_loop(name, shape, channels_last):
    model, opt = masked_model(name, shape, channels_last=channels_last)
    if channels_last:
        assert all(m.is_contiguous(memory_format=torch.channels_last) for m in masks_of(model).values() if m.dim() == 4)
    # dense-looking weights and gradients, so the masks really have something to zero
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(4, *shape)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    ref = copy.deepcopy(model)
    for p, rp in zip(model.parameters(), ref.parameters()):
        rp.grad = p.grad.clone(memory_format=torch.preserve_format)

    Masked(model, opt).mask_grads()
    for w, m in per_layer(ref):
        w.grad.mul_(m)
    pairs = list(zip(per_layer(model), per_layer(ref)))
    assert pairs
    for (w, m), (rw, _) in pairs:
        assert torch.equal(w.grad, rw.grad)
        assert bool((w.grad[m == 0] == 0).all())
        assert w.grad.stride() == rw.grad.stride()

    Masked(model, opt).zero_outside()  # (also done on construction; apply() is a no-op under SGD)
    with torch.no_grad():
        for w, m in per_layer(ref):
            w.mul_(m)
    for (w, m), (rw, _) in pairs:
        assert torch.equal(w, rw)
        assert bool((w[m == 0] == 0).all())
    # every other parameter and buffer untouched and identical
    for (k, v), (_, rv) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, rv), k


# (b) ------------------------------------------------------------------------------------------

def toy_batches(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (torch.rand((n, 1, 28, 28), generator=g) * 100 + y.view(-1, 1, 1, 1) * 15).to(torch.uint8)
    train = Batches(x, y, [0.3], [0.3], batch_size=32, shuffle=True, drop_last=True, seed=seed)
    val = Batches(x[:32], y[:32], [0.3], [0.3], batch_size=32)
    return train, val


def test_training_with_masked_matches_a_plain_per_layer_loop():
    model, opt = masked_model("mlp", (1, 28, 28), density=0.05)
    ref = copy.deepcopy(model)
    initial = copy.deepcopy(model.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train, val = toy_batches()
    epochs, lr = 2, 0.05

    train_epochs(model, opt, train, val, epochs=range(epochs), step=0, lr_at=lambda e, i: lr,
                 masked=Masked(model, opt), stage="test")

    pairs = per_layer(ref)
    ref.train()
    for epoch in range(epochs):
        for x, y in train.epoch(epoch):
            ref_opt.zero_grad(set_to_none=True)
            F.cross_entropy(ref(x), y).backward()
            for w, m in pairs:
                w.grad.mul_(m)
            ref_opt.step()
            with torch.no_grad():
                for w, m in pairs:
                    w.mul_(m)

    for (k, v), (rk, rv) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == rk
        if v.is_floating_point():
            assert torch.allclose(v, rv, rtol=0, atol=1e-6), k  # bit-identical in practice
        else:
            assert torch.equal(v, rv), k
    for w, m in per_layer(model):
        off = m == 0
        assert int(off.sum()) > 0
        assert bool((w[off] == 0).all())  # exactly zero, not just small
        assert bool((opt.state[w]["momentum_buffer"][off] == 0).all())
    # training did something
    assert not torch.equal(model.state_dict()["net.1.weight"], initial["net.1.weight"])


# (c) ------------------------------------------------------------------------------------------

def tie_tensors(sizes, levels, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-levels, levels + 1, s, generator=g).float() * 0.25 for s in sizes]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_topk_masks_equals_sorted_topk_baseline_with_ties(seed):
    baseline = load_bench("superpose").baseline_topk_masks
    tensors = tie_tensors([(7, 5), (3, 3, 2, 2), (11,), (40, 9)], levels=4, seed=seed)
    total = sum(t.numel() for t in tensors)
    flat = torch.cat([t.abs().flatten() for t in tensors])
    # every k, including 0, all, and thresholds that fall inside a run of ties
    for k in range(total + 1):
        got, want = global_topk_masks(tensors, k), baseline(tensors, k)
        assert [g.shape for g in got] == [t.shape for t in tensors]
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k
        assert sum(int(g.sum()) for g in got) == k
    assert flat.unique().numel() < total // 10  # heavy ties indeed


def test_global_topk_masks_equals_baseline_on_the_sampled_path():
    # > 2**20 entries: global_topk_masks brackets the threshold from a sample first
    baseline = load_bench("superpose").baseline_topk_masks
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randint(-300, 301, s, generator=g).float() for s in [(1024, 1024), (300, 700), (4096,)]]
    tensors.append(torch.randn(200, 1000, generator=g))
    for k in (1, 12_345, 65_536, 250_000, 900_000):
        got, want = global_topk_masks(tensors, k), baseline(tensors, k)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k


def test_superpose_steps_equals_the_baseline_superposition():
    bench = load_bench("superpose")
    states, keys = [], None
    for i in range(4):
        model, _ = masked_model("resnet32", (3, 8, 8), seed=i, density=0.05)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.1)
            for w, m in per_layer(model):
                w.mul_(m)
        sd = {k: v for k, v in model.state_dict().items() if not k.endswith("weight_mask")}
        states.append(sd)
        if keys is None:
            keys = list(masks_of(model))
            counts = [int(m.sum()) for m in masks_of(model).values()]
    got = list(superpose_steps(states, method="caa", cima_factor=0.5, reprune_mode="each",
                               masked_keys=keys, counts=counts, scope="global"))
    want = bench.baseline_steps(states, masked_keys=keys, counts=counts)
    assert len(got) == len(want) == 3
    for (k, s, m), (bk, bs, bm) in zip(got, want):
        assert k == bk
        assert all(torch.equal(m[key], bm[key]) for key in keys)
        assert all(torch.equal(s[key], bs[key]) for key in s)
        assert sum(int(m[key].sum()) for key in keys) == sum(counts)


# (d) ------------------------------------------------------------------------------------------

def test_gpu_throughput_dry_run_times_the_stages_loop_and_reports_the_ratio_interval(tmp_path):
    """Structure, not timings: the preset's settings, alternating windows, the pairwise ratio; with
    --lanes 1 2, a second row of two lanes in one process (images/s summed over them)."""
    import json
    import statistics

    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_throughput.py"), "--dry-run", "--lanes", "1", "2",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "device: CPU (dry run)" in proc.stdout
    d = json.loads(out.read_text())
    assert d["dry_run"] and d["pairs"] == 2 and d["lanes"] == [1, 2]
    r, two = d["results"]
    assert (r["experiment"], r["model"], r["input_shape"], r["batch"], r["lanes"]) == (
        "fashion_mnist_resnet", "resnet20", [1, 28, 28], 8, 1)
    assert (two["experiment"], two["lanes"]) == ("fashion_mnist_resnet", 2) and two["masks_exact"] is True
    for v in ("dense", "masked"):  # a window is one epoch of both lanes
        assert two["images_per_s"][v] == pytest.approx(2 * 8 * two["window_steps"] / statistics.median(two["window_s"][v]))
    assert r["dst"] == {"method": "rigl", "density": 0.05, "update_frequency": 100}  # the preset's
    steps, w = r["window_steps"], r["window_s"]
    assert steps >= 2 and [len(w["dense"]), len(w["masked"])] == [2, 2] and min(w["dense"] + w["masked"]) > 0
    for v in ("dense", "masked"):
        assert r["images_per_s"][v] == pytest.approx(8 * steps / statistics.median(w[v]))
        assert r["ms_per_step"][v] == pytest.approx(1e3 * statistics.median(w[v]) / steps)
    q = r["masked_over_dense"]
    assert q["ratios"] == pytest.approx([a / b for a, b in zip(w["dense"], w["masked"])]) and q["pairs"] == 2
    assert q["low"] <= q["ratio"] <= q["high"] and q["ratio"] == pytest.approx(statistics.fmean(q["ratios"]))
    assert r["host_share"] == {"dense": None, "masked": None}  # no separate device on a CPU
    assert r["update_ms"] > 0 and r["masks_exact"] is True
    for text in ("masked/dense", "95% interval", "ms/step", "topology update", "masks exact: True",
                 "1 lane (images/s summed)", "2 lanes (images/s summed)"):
        assert text in proc.stdout


def test_gpu_throughput_ratio_interval_by_hand():
    q = load_bench("gpu_throughput").ratio_interval([2.0, 2.2], [2.0, 2.0])
    # ratios 1.0 and 1.1: mean 1.05, sd 0.0707, half-width t(0.975, 1) = 12.706 x 0.0707 / sqrt(2) = 0.6353
    assert q["ratios"] == pytest.approx([1.0, 1.1]) and q["ratio"] == pytest.approx(1.05)
    assert q["high"] - q["ratio"] == pytest.approx(0.6353, abs=1e-3) and q["ratio"] - q["low"] == pytest.approx(0.6353, abs=1e-3)
    assert q["half_width_rel"] == pytest.approx(0.6353 / 1.05, abs=1e-3)


@pytest.mark.parametrize("args,message", [
    (["--experiment", "nope"], "--experiment 'nope' is not a preset; one of ["),
    (["--pairs", "1"], "need --window-s > 0, --pairs >= 2, --update-calls >= 1, --lanes >= 1; got 2.0, 1, 5, [1]"),
    (["--lanes", "0"], "need --window-s > 0, --pairs >= 2, --update-calls >= 1, --lanes >= 1; got 2.0, 10, 5, [0]"),
    (["--set", "model.widht=2"], "--set model.widht=2: Could not override 'model.widht'. To append to your config use"),
    (["--dry-run", "--set", "model.widht=2"], "gpu_throughput.py: --set model.widht=2: Could not override"),  # only the user's
])
def test_gpu_throughput_refuses_bad_input_in_one_line(args, message):
    """A bad argument is refused in one line, before torch loads (-X importtime lists what was imported)."""
    from gpu_check_jobs import imported_top_level

    proc = subprocess.run([sys.executable, "-X", "importtime", str(BENCH / "gpu_throughput.py"), "--device", "cpu",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode != 0 and len(said) == 1 and message in said[0], said
    assert "torch" not in imported_top_level(proc.stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_throughput_without_cuda_says_so():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_throughput.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
