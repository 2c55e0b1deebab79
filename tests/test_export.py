"""Really sparse files (`suptickets.csr`, the `export` stage): the CSR round trip, BatchNorm
folding, the kernel choice, one-line errors for bad files, and what the smoke DAG's export wrote."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from conftest import error_lines, ROOT, run
from suptickets import csr, runtime
from suptickets.artifacts import load_tensors, save_tensors
from suptickets.composition import compose
from suptickets.batches import normalize
from suptickets.config import check
from suptickets.csr import timing
from suptickets.csr.bn_fold import fold_batchnorm
from suptickets.csr.layers import sparse_layers
from suptickets.errors import SparseFileError, VerificationFailed
from suptickets.prepared import load_prepared
from suptickets.sparsity.engine import attach_masks, init_masks, masks_of

ARCH = {"name": "mlp", "options": {"hidden": [12, 6], "batch_norm": True}, "input_shape": [1, 4, 4], "num_classes": 3}
EMPTY_ROW = 3


def _random_bn(model: torch.nn.Module, seed: int) -> None:
    """BatchNorm statistics and affine parameters away from their defaults, so folding shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))


@pytest.fixture()
def mlp() -> torch.nn.Module:
    """A small masked MLP: net.1 at ~30% with an empty row, net.4 fully dense, net.7 at ~50%."""
    torch.manual_seed(0)
    model = csr.build(ARCH)
    g = torch.Generator().manual_seed(1)
    first = torch.rand(12, 16, generator=g) < 0.3
    first[EMPTY_ROW] = False
    attach_masks(model, {"net.1.weight": first, "net.4.weight": torch.ones(6, 12, dtype=torch.bool),
                         "net.7.weight": torch.rand(3, 6, generator=g) < 0.5})
    _random_bn(model, 2)
    return model.eval()


def _inputs(shape, n=32, seed=3) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_csr_round_trip_keeps_every_weight_an_empty_row_and_a_fully_dense_layer(mlp, tmp_path):
    path = tmp_path / "m.sparse.safetensors"
    state = csr.save(path, mlp, ARCH)
    folded = fold_batchnorm(mlp).state_dict()
    assert not any(k.startswith(("net.2.", "net.5.")) for k in state), "the BatchNorm tensors are folded away"
    assert set(state) >= {"net.1.bias", "net.4.bias", "net.7.bias"}
    for key, mask in masks_of(mlp).items():
        crow, col = state[f"{key}.crow_indices"], state[f"{key}.col_indices"]
        assert crow.dtype == col.dtype == torch.int32 and state[f"{key}.shape"].tolist() == list(mask.shape)
        assert state[f"{key}.values"].numel() == int(mask.sum())
        rebuilt = torch.sparse_csr_tensor(crow, col, state[f"{key}.values"], tuple(mask.shape),
                                          check_invariants=True).to_dense()
        assert torch.equal(rebuilt, folded[key]) and torch.equal(rebuilt != 0, mask.bool() & (folded[key] != 0))
    crow = state["net.1.weight.crow_indices"]
    assert crow[EMPTY_ROW] == crow[EMPTY_ROW + 1]
    stats = csr.layer_stats(state)
    assert stats["net.4.weight"] == {"shape": [6, 12], "nnz": 72, "density": 1.0}
    x = _inputs(ARCH["input_shape"])
    reference = csr.outputs(mlp, [x])
    for kernel in ("csr", "dense"):
        loaded = csr.load(path, kernel=kernel, batch_sizes=[1, 32])
        assert all(k == {1: kernel, 32: kernel} for k in csr.kernels(loaded).values())
        logits = csr.outputs(loaded, [x])
        assert csr.verify(reference, logits, kernel) <= 1e-5
        assert (csr.outputs(loaded, [x[:1]]) - logits[:1]).abs().max() <= 1e-5  # the batch-1 path
    csr.save(tmp_path / "again.safetensors", mlp, ARCH)
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes(), "same model, same bytes"


def test_an_empty_layer_leaves_its_bias_alone(mlp, tmp_path):
    """Global re-pruning can empty a layer (README, Choices): zero values, offsets all 0."""
    attach_masks(mlp, {"net.7.weight": torch.zeros(3, 6, dtype=torch.bool)})
    state = csr.save(tmp_path / "e.safetensors", mlp, ARCH)
    assert state["net.7.weight.values"].numel() == 0 and not state["net.7.weight.crow_indices"].any()
    x = _inputs(ARCH["input_shape"])
    assert csr.verify(csr.outputs(mlp, [x]), csr.outputs(csr.load(tmp_path / "e.safetensors", "csr"), [x]),
                      "empty") == 0.0


def test_convolutions_round_trip_through_unfold_and_folded_batchnorm2d(tmp_path):
    arch = {"name": "resnet32", "options": {}, "input_shape": [3, 8, 8], "num_classes": 10}
    torch.manual_seed(0)
    model = csr.build(arch)
    init_masks(model, 0.1, "erk", False, torch.Generator().manual_seed(0))
    _random_bn(model, 1)
    model.eval()
    path = tmp_path / "r.sparse.safetensors"
    state = csr.save(path, model, arch)
    assert state["layer2.0.shortcut.0.weight.shape"].tolist() == [32, 16, 1, 1]
    assert not any(".bn" in k or "shortcut.1." in k for k in state)
    x = _inputs(arch["input_shape"], n=4)
    reference = csr.outputs(model, [x])
    for kernel in ("csr", "dense"):
        assert csr.verify(reference, csr.outputs(csr.load(path, kernel=kernel), [x]), kernel) <= 1e-4


def test_each_batch_size_uses_the_kernel_chosen_for_the_nearest_measured_one(mlp, tmp_path):
    csr.save(tmp_path / "m.safetensors", mlp, ARCH)
    model = csr.load(tmp_path / "m.safetensors", kernel="csr")
    layer = sparse_layers(model)["net.1"]
    layer.use({1: "dense", 256: "csr"})  # the boundary is sqrt(1 * 256) = 16
    assert [layer.kernel_for(n) for n in (1, 2, 16, 17, 256, 4096)] == ["dense"] * 3 + ["csr"] * 3
    x = _inputs(ARCH["input_shape"], n=20)
    assert csr.verify(csr.outputs(mlp, [x]), csr.outputs(model, [x]), "mixed") <= 1e-5


def test_each_layer_takes_its_faster_kernel_per_batch_size_dense_on_a_tie():
    assert timing.layer_kernels({1: {"dense": 1.0, "csr": 2.0}, 64: {"dense": 3.0, "csr": 1.0},
                                 256: {"dense": 1.0, "csr": 1.0}}) == {1: "dense", 64: "csr", 256: "dense"}
    assert timing.keeps_choice({"chosen": 1.0, "dense": 1.0}) and not timing.keeps_choice({"chosen": 1.1, "dense": 1.0})


@pytest.mark.parametrize("layer_csr,model_times,expected", [
    (2.0, [], {1: "dense", 64: "dense"}),                  # CSR slower in the layer: no whole-model timing
    (0.5, [1.0, 2.0, 1.0, 2.0], {1: "csr", 64: "csr"}),    # faster in the layer and in the model
    (0.5, [3.0, 2.0, 1.0, 2.0], {1: "dense", 64: "csr"}),  # at batch 1 the model runs slower with it: dense kept
], ids=["csr-slower", "csr-faster", "model-slower-at-1"])
def test_auto_chooses_from_the_timings_it_is_given(tmp_path, layer_csr, model_times, expected):
    """The choice from injected timings (the timer's answers), so that no test hangs on this machine's
    clock; the real timings are benchmarks/sparse_inference.py's."""
    arch = {"name": "mlp", "options": {"hidden": [128], "batch_norm": True}, "input_shape": [1, 8, 16],
            "num_classes": 10}
    model = csr.build(arch)
    attach_masks(model, {"net.1.weight": torch.ones(128, 128), "net.4.weight": torch.ones(10, 128)})
    csr.save(tmp_path / "d.safetensors", model.eval(), arch)
    answers = iter(model_times)  # whole-model runs, in order: (chosen, dense) at batch 1, then at batch 64

    def timer(fns, repeats):
        for fn in fns:
            fn()  # the kernels really run
        return [1.0, layer_csr] if len(fns) == 2 else [next(answers)]

    loaded = csr.load(tmp_path / "d.safetensors", kernel="auto", batch_sizes=[1, 64], repeats=3, timer=timer)
    assert csr.kernels(loaded)["net.1"] == expected
    assert loaded.layer_seconds["net.1"] == {1: {"dense": 1.0, "csr": layer_csr}, 64: {"dense": 1.0, "csr": layer_csr}}
    assert list(answers) == [] and sorted(loaded.model_seconds) == ([] if not model_times else [1, 64])


def _rewrite(path, out, change) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_tensors(path)
    change(tensors)
    save_tensors(out, tensors, metadata=metadata)


def _swap_offsets(t):
    crow = t["net.1.weight.crow_indices"]
    crow[1], crow[2] = crow[2].clone() + 1, crow[1].clone()  # offsets that go down


CORRUPTIONS = {
    "non-monotonic row offsets": (_swap_offsets, "net.1.weight: corrupted CSR index arrays"),
    "column out of range": (lambda t: t["net.1.weight.col_indices"].__setitem__(-1, 16),
                            "net.1.weight: corrupted CSR index arrays: `0 <= col_indices < ncols`"),
    "too few row offsets": (lambda t: t.update({"net.1.weight.crow_indices": t["net.1.weight.crow_indices"][:-1]}),
                            "net.1.weight.crow_indices: 12 offsets, expected rows + 1 = 13"),
    "columns and values disagree": (lambda t: t.update({"net.1.weight.col_indices": t["net.1.weight.col_indices"][:-1]}),
                                    "net.1.weight.col_indices"),
    "a part missing": (lambda t: t.pop("net.7.weight.values"), "net.7.weight.values: missing"),
    "a foreign tensor": (lambda t: t.update({"net.9.weight": torch.zeros(2)}), "net.9.weight: not a tensor of"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupted_file_is_refused_in_one_line_naming_the_file_and_the_key(mlp, tmp_path, corruption):
    change, message = CORRUPTIONS[corruption]
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    csr.save(good, mlp, ARCH)
    _rewrite(good, bad, change)
    with pytest.raises(SparseFileError) as err:
        csr.load(bad, kernel="csr")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{bad}: key ") and message in text, text


def test_a_file_for_another_architecture_is_refused_in_one_line(mlp, tmp_path):
    path = tmp_path / "m.sparse.safetensors"
    csr.save(path, mlp, ARCH)
    other = csr.build({**ARCH, "options": {"hidden": [10, 6], "batch_norm": True}}, "meta")
    with pytest.raises(SparseFileError) as err:
        csr.load(path, kernel="csr", model=other)
    assert str(err.value) == (f"{path}: key net.1.weight.shape: [12, 16] in the file, but the architecture's "
                              f"weight is [10, 16]")
    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, load_tensors(path))  # the tensors without the format's metadata
    with pytest.raises(SparseFileError, match=r"plain.safetensors: no suptickets.sparse/1 metadata"):
        csr.load(plain)


def test_differing_predictions_fail_the_verification_in_one_line():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert csr.verify(reference, reference + 5e-5, "ok") == pytest.approx(5e-5, rel=1e-2)
    for logits, differ in ((reference + 2e-4, 0), (reference.flip(1), 3)):
        with pytest.raises(VerificationFailed) as err:
            csr.verify(reference, logits, "models/x.sparse.safetensors (csr kernels)")
        assert str(err.value).startswith(f"models/x.sparse.safetensors (csr kernels): {differ} of 3 predictions "
                                         f"differ from the masked model's, max |logit difference|")


@pytest.mark.parametrize("override,message", [
    ("export.kernel=fast", "export.kernel='fast': not one of auto, csr, dense"),
    ("export.batch_sizes=[]", "export.batch_sizes=[]: expected a non-empty list of distinct integers >= 1"),
    ("export.batch_sizes=[1,1]", "export.batch_sizes=[1, 1]"),
    ("export.repeats=0", "export.repeats=0: expected an integer >= 1"),
])
def test_bad_export_settings_are_named(override, message):
    cfg = compose(ROOT / "params", [override])
    assert any(p.startswith(message) for p in check(cfg)), check(cfg)


# ----------------------------------------------------------------------------------------------
# the export stage in the smoke DAG (tests/conftest.py's smoke_repo ran the whole DAG once)


def test_the_smoke_dag_exported_smaller_verified_files(smoke_repo):
    m = json.loads((smoke_repo / "metrics/export.json").read_text())
    assert m["kernel"] == "auto" and m["tolerance"] == 1e-4
    assert set(m["models"]) == {"superposed", "sparse_baseline"}
    for name, facts in m["models"].items():
        path = smoke_repo / f"models/{name}.sparse.safetensors"
        assert facts["sparse_bytes"] == path.stat().st_size
        assert facts["masked_file_bytes"] == (smoke_repo / f"models/{name}.safetensors").stat().st_size
        assert facts["sparse_bytes"] * 2 < facts["dense_bytes"] < facts["masked_file_bytes"]  # density 0.1
        assert facts["predictions_equal"] is True and facts["verified_kernels"] == ["auto", "csr"]
        assert facts["test_samples"] == 1000
        masks = masks_of(runtime.load_model(smoke_repo / f"models/{name}.safetensors",
                                                   csr.build(csr.read_architecture(path))))
        assert {k: v["nnz"] for k, v in facts["layers"].items()} == {k: int(v.sum()) for k, v in masks.items()}
    speed = json.loads((smoke_repo / "metrics/export_speed.json").read_text())
    for name in ("superposed", "sparse_baseline"):
        assert set(speed["models"][name]["latency_ms"]) == {"1", "256"}
        assert set(speed["models"][name]["kernels"]) == {"net.1", "net.4", "net.7"}
    assert run(smoke_repo, "git", "check-ignore", "-q", "metrics/export_speed.json", check=False).returncode == 0
    summary = (smoke_repo / "reports/summary.md").read_text()
    assert "## Really sparse files (export)" in summary and "](../plots/export_size.png)" in summary
    assert (smoke_repo / "plots/export_size.png").stat().st_size > 5_000


def test_the_exported_smoke_model_predicts_like_the_masked_one_on_the_test_split(smoke_repo):
    path = smoke_repo / "models/superposed.sparse.safetensors"
    arch = csr.read_architecture(path)
    masked = runtime.load_model(smoke_repo / "models/superposed.safetensors", csr.build(arch))
    splits, summary = load_prepared(smoke_repo / "data/prepared")
    x = normalize(splits["test"][0], summary["mean"], summary["std"])
    reference = csr.outputs(masked, x.split(256))
    for kernel in ("csr", "dense"):
        logits = csr.outputs(csr.load(path, kernel=kernel), x.split(256))
        assert torch.equal(logits.argmax(1), reference.argmax(1))
        assert (logits - reference).abs().max() <= 1e-4


def test_the_stage_refuses_a_model_of_another_architecture_and_writes_nothing(smoke_copy):
    outputs = [smoke_copy / f"models/{n}.sparse.safetensors" for n in ("superposed", "sparse_baseline")]
    outputs.append(smoke_copy / "metrics/export.json")
    before = [hashlib.md5(p.read_bytes()).hexdigest() for p in outputs]
    proc = run(smoke_copy, "python", "stages/export.py", "experiment=smoke", "model.hidden=[16]",
               "tracking.wandb.mode=disabled", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = error_lines(proc)  # (its log lines go to stderr too)
    assert len(lines) == 1 and lines[0].startswith("error: export: models/superposed.safetensors: does not fit"), lines
    assert [hashlib.md5(p.read_bytes()).hexdigest() for p in outputs] == before
    assert not list((smoke_copy / "models").glob(".*.tmp"))


def test_a_failed_verification_is_one_line_exit_2_and_writes_nothing(smoke_copy):
    """Weights scaled by 1e6 per layer: logits near 1e18, where the CSR and the dense kernels' different
    orders of summation differ by far more than the tolerance. The stage names the file, not a traceback."""
    path = smoke_copy / "models/superposed.safetensors"
    tensors = load_tensors(path)
    save_tensors(path, {k: v * 1e6 if k.endswith("weight") and v.dim() == 2 else v for k, v in tensors.items()})
    outputs = [smoke_copy / f"models/{n}.sparse.safetensors" for n in ("superposed", "sparse_baseline")]
    outputs.append(smoke_copy / "metrics/export.json")
    before = [hashlib.md5(p.read_bytes()).hexdigest() for p in outputs]
    proc = run(smoke_copy, "python", "stages/export.py", "experiment=smoke", "tracking.wandb.mode=disabled",
               check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith("error: export: models/superposed.sparse.safetensors (") and \
        "predictions differ from the masked model's, max |logit difference|" in line, line
    assert "Traceback" not in proc.stderr
    assert [hashlib.md5(p.read_bytes()).hexdigest() for p in outputs] == before
    assert not list((smoke_copy / "models").glob(".*.tmp"))
