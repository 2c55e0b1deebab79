"""Bad input is refused before any work: real Hydra composition of params/, and the stage scripts
run as a user would, checking exit code, the one-line message and that nothing was written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, error_lines, write_idx
from suptickets.composition import compose
from suptickets.config import check

BAD = [
    (["dst.density=0"], "dst.density=0: expected a number in (0, 1]"),
    (["dst.density=1.5"], "dst.density=1.5: expected a number in (0, 1]"),
    (["dst.density=-0.1"], "dst.density=-0.1"),
    (["train.epochs=0"], "train.epochs=0: expected an integer >= 1"),
    (["train.epochs=-3"], "train.epochs=-3"),
    (["train.batch_size=0"], "train.batch_size=0: expected an integer >= 2"),
    (["train.lr=0"], "train.lr=0: expected a number > 0"),
    (["train.lr=-0.1"], "train.lr=-0.1"),
    (["tickets.cycle_rate=0.01"], "tickets.cycle_rate"),
    (["tickets.cycle_epochs=40"], "tickets.cycle_epochs"),
    (["tickets.cycle_rate=1.0"], "tickets.cycle_rate=1.0: expected a number in (0, 1)"),
    (["tickets.lr_min=0.1", "tickets.lr_max=0.01"], "tickets.lr_min=0.1: must not exceed"),
    (["data.name=mnist"], "data.name='mnist': not one of fashion_mnist, cifar10, cifar100"),
    (["model.name=transformer"], "model.name='transformer': not one of"),
    (["dst.method=snip"], "dst.method='snip': not one of set, rigl, granet"),
    (["superpose.method=swa"], "superpose.method='swa': not one of caa, cima"),
    (["superpose.reprune=never"], "superpose.reprune='never': not one of each, final"),
    (["superpose.scope=row"], "superpose.scope='row': not one of global, layerwise"),
    (["dst=granet", "dst.init_density=0.01"], "dst.init_density=0.01: must be >= dst.density=0.05"),
    (["dst=granet", "dst.final_prune_fraction=0.9"], "dst.final_prune_fraction=0.9: GraNet's pruning ends at epoch 27"),
    (["dst=granet", "dst.init_prune_fraction=0.5"], "dst.init_prune_fraction=0.5: must be < dst.final_prune_fraction"),
    (["dst=granet", "train.epochs=2", "tickets.cycle_rate=0.5", "tickets.cycle_epochs=1"],
     "dst.final_prune_fraction=0.44: GraNet's pruning window is empty"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0: expected a number in (0, 1)"),
    (["dst.distribution=gaussian"], "dst.distribution='gaussian': not one of erk, uniform"),
    (["device=tpu"], "device='tpu': not one of auto, cpu, cuda"),
    (["dst.prune_rate=1.5"], "dst.prune_rate=1.5"),
    (["train.momentum=1.0"], "train.momentum=1.0"),
]


def composed(overrides: list[str]) -> dict:
    return compose(ROOT / "params", overrides)


def test_every_preset_with_granet_prunes_over_the_reference_window():
    """epochs 0 to floor(0.44·E) of the budget (110 of 250 in the paper's CIFAR recipes), the same
    absolute steps in sparse_baseline (E epochs) and warmup (E − C), ending within the warmup."""
    import math

    from suptickets.schedules import epoch_split
    from suptickets.sparsity.engine import DST

    presets = sorted(p.stem for p in (ROOT / "params/experiment").glob("*.yaml"))
    assert {"smoke", "fashion_mnist", "cifar10_resnet32"} <= set(presets)
    for preset in presets:
        cfg = composed([f"experiment={preset}", "dst=granet"])
        assert check(cfg) == [], preset
        d, epochs = cfg["dst"], cfg["train"]["epochs"]
        assert d["method"] == "granet" and (d["init_prune_fraction"], d["final_prune_fraction"]) == (0, 0.44), preset
        warmup, _, _ = epoch_split(epochs, cfg["tickets"]["cycle_rate"], cfg["tickets"]["cycle_epochs"])
        baseline = DST.from_config(d, steps_per_epoch=7, epochs=epochs, budget_epochs=epochs, seed=0)
        warm = DST.from_config(d, steps_per_epoch=7, epochs=warmup, budget_epochs=epochs, seed=0)
        assert (baseline.prune_start_step, baseline.prune_end_step) == (warm.prune_start_step, warm.prune_end_step)
        assert warm.prune_start_step == 0 and warm.prune_end_step == 7 * math.floor(0.44 * epochs) <= 7 * warmup
        if epochs == 250:
            assert warm.prune_end_step == 7 * 110, preset


def test_the_default_and_every_preset_are_valid():
    assert check(composed([])) == []
    for preset in sorted(p.stem for p in (ROOT / "params/experiment").glob("*.yaml")):
        assert check(composed([f"experiment={preset}"])) == [], preset


def test_the_fashion_mnist_resnet_preset_is_the_cifar_recipe_scaled_to_20_epochs():
    from suptickets.schedules import epoch_split

    cfg = composed(["experiment=fashion_mnist_resnet"])
    assert cfg["name"] == "fashion_mnist_resnet" and cfg["device"] == "auto"
    assert cfg["model"] == {"name": "resnet20", "width": 1}
    assert cfg["data"]["name"] == "fashion_mnist" and cfg["data"]["augment"] == {"padding": 2, "flip": True}
    t = cfg["train"]
    assert (t["lr"], t["momentum"], t["weight_decay"], t["milestones"], t["gamma"], t["batch_size"]) == \
        (0.1, 0.9, 5e-4, [0.5, 0.75], 0.1, 128)
    assert (cfg["dst"]["method"], cfg["dst"]["distribution"], cfg["dst"]["density"]) == ("rigl", "erk", 0.05)
    assert epoch_split(t["epochs"], cfg["tickets"]["cycle_rate"], cfg["tickets"]["cycle_epochs"]) == (17, 3, 3)
    assert (cfg["tickets"]["lr_min"], cfg["tickets"]["lr_max"]) == (0.001, 0.03)
    smoke = composed(["experiment=fashion_mnist_resnet_smoke"])
    assert smoke["model"] == {"name": "resnet20", "width": 0.5} and smoke["data"]["augment"] == cfg["data"]["augment"]
    assert (smoke["data"]["limit_train"], smoke["train"]["epochs"]) == (2000, 4)
    assert composed(["experiment=cifar10_resnet32"])["model"] == {"name": "resnet32", "width": 1}


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_named_in_one_line(overrides, message):
    problems = check(composed(overrides))
    assert problems, overrides
    assert any(message in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def reader_of(overrides: list[str]) -> str:
    """A stage that reads the first overridden setting (each stage judges only what it reads)."""
    key = overrides[-1].split("=")[0]
    for prefix, name in (("tickets", "tickets"), ("superpose", "superpose"), ("dst.final_prune", "warmup"),
                         ("dst", "sparse_baseline"),
                         ("data.name", "prepare"), ("data.val_fraction", "prepare")):
        if key.startswith(prefix):
            return name
    return "dense"


# one case per stage that judges settings (every message itself is checked in-process above)
THROUGH_A_STAGE = [case for case in BAD if case[0] in (
    ["train.epochs=0"], ["dst.density=1.5"], ["dst=granet", "dst.final_prune_fraction=0.9"],
    ["tickets.cycle_rate=1.0"], ["superpose.scope=row"], ["data.name=mnist"])]


def test_the_cases_through_a_stage_cover_every_stage_that_judges_settings():
    assert sorted(reader_of(o) for o, _ in THROUGH_A_STAGE) == \
        ["dense", "prepare", "sparse_baseline", "superpose", "tickets", "warmup"]


@pytest.mark.parametrize("overrides,message", THROUGH_A_STAGE, ids=[" ".join(o) for o, _ in THROUGH_A_STAGE])
def test_a_stage_given_bad_config_exits_2_with_the_message_and_writes_nothing(tmp_path, overrides, message):
    name = reader_of(overrides)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "earlier.safetensors").write_bytes(b"an earlier output")
    proc = stage(tmp_path, name, *overrides)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {name}: " in proc.stderr and message in proc.stderr, proc.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["models", "models/earlier.safetensors"]
    assert (tmp_path / "models" / "earlier.safetensors").read_bytes() == b"an earlier output"


def test_a_section_turned_into_a_string_is_refused():
    cfg = composed([])
    cfg["model"] = "resnet32"
    (problem,) = check(cfg)
    assert problem.startswith("model='resnet32': a section turned into a string")


def stage(tmp_path, name, *args):
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled",
                                                               "PYTHONPATH": str(ROOT / "src")})


def test_stage_refuses_bad_config_before_any_work(tmp_path):
    proc = stage(tmp_path, "sparse_baseline", "dst.density=2", "train.epochs=0")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: sparse_baseline: train.epochs=0: expected an integer >= 1",
                     "error: sparse_baseline: dst.density=2: expected a number in (0, 1]"]
    assert list(tmp_path.iterdir()) == []


def test_group_override_on_the_composed_params_yaml_is_refused(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    proc = subprocess.run([sys.executable, "stages/dense.py", "-cp", "..", "-cn", "params", "model=resnet32"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2, proc.stderr
    assert "error: dense: model='resnet32': a section turned into a string" in proc.stderr
    assert not (tmp_path / "models").exists()


def test_missing_and_truncated_data_files_are_named_and_nothing_is_written(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    proc = stage(tmp_path, "prepare", f"data.root={raw}", "data.download=false")
    assert proc.returncode == 2
    assert "error: prepare:" in proc.stderr and str(raw) in proc.stderr
    n = 50
    write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((n, 28, 28)), gz=True, cut=7)  # truncated
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(n), gz=True)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((n, 28, 28)), gz=True)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(n), gz=True)
    proc = stage(tmp_path, "prepare", f"data.root={raw}", "data.download=false")
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte.gz" in proc.stderr
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------
# each stage judges the settings it reads; unknown keys are refused everywhere

sys.path.insert(0, str(ROOT / "stages"))
from _stage import config_options, stage_keys  # noqa: E402

from suptickets.config import known_keys, unknown_keys  # noqa: E402

KNOWN = known_keys(config_options())


def test_known_keys_are_the_union_of_every_option_of_every_group():
    for key in ("seed", "launcher.check_sync", "model.hidden", "model.batch_norm", "model.width", "model.stem",
                "data.folder", "data.folder.image_size", "data.workers", "data.augment.flip", "dst.init_density",
                "tracking.wandb.entity", "superpose.bn_update", "train.weight_decay_bn"):
        assert key in KNOWN, key
    assert not {k for k in KNOWN if k.startswith(("defaults", "experiment"))}
    for preset in [None] + sorted(p.stem for p in (ROOT / "params/experiment").glob("*.yaml")):
        for method in ("rigl", "set", "granet"):
            cfg = composed([f"dst={method}"] + ([f"experiment={preset}"] if preset else []))
            assert unknown_keys(cfg, KNOWN) == [], (preset, method)


@pytest.mark.parametrize("override,message", [
    ("+tickets.cycle_rat=0.2", "tickets.cycle_rat: unknown key; did you mean tickets.cycle_rate?"),
    ("+train.epoch=3", "train.epoch: unknown key; did you mean train.epochs?"),
    ("+dst.densty=0.1", "dst.densty: unknown key; did you mean dst.density?"),
    ("+trian.epochs=3", "trian.epochs: unknown key; did you mean train.epochs?"),
    ("+model.width=2", "model.width: not an option of model 'mlp' (its options: hidden, batch_norm)"),
])
def test_an_unknown_key_added_with_plus_is_refused_naming_the_nearest(override, message):
    cfg = composed([override])
    assert check(cfg, known=KNOWN) == [message]


def test_a_stage_judges_only_the_settings_it_reads():
    cfg = composed(["tickets.cycle_rate=5", "superpose.method=swa", "train.epochs=1"])
    assert check(cfg, stage_keys("dense"), KNOWN) == []
    assert check(cfg, stage_keys("superpose"), KNOWN) == ["superpose.method='swa': not one of caa, cima"]
    assert check(cfg, stage_keys("tickets"), KNOWN) == ["tickets.cycle_rate=5: expected a number in (0, 1)"]
    # a rule relating keys applies when the stage reads all of them
    cfg = composed(["tickets.lr_min=0.1", "tickets.lr_max=0.01"])
    assert check(cfg, ["tickets.lr_min"]) == []
    assert check(cfg, ["tickets"]) == ["tickets.lr_min=0.1: must not exceed tickets.lr_max=0.01"]
    assert "tickets" not in " ".join(stage_keys("dense")) and "superpose" not in " ".join(stage_keys("evaluate"))


def test_the_dense_stage_runs_past_bad_tickets_settings(tmp_path):
    """dense does not read tickets.*: it gets as far as looking for its data (none here)."""
    proc = stage(tmp_path, "dense", "tickets.cycle_rate=5", "tickets.lr_min=-1", "train.epochs=1")
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == [
        "error: dense: data/prepared/train.safetensors: missing prepared split, expected a safetensors file "
        "with 'x' (uint8) and 'y' (int64)"]


@pytest.mark.parametrize("override", ["+tickets.cycle_rat=0.2", "tickets.cycle_rat=0.2"])
def test_a_stage_run_by_hand_refuses_an_unknown_key_in_one_line(tmp_path, override):
    proc = stage(tmp_path, "dense", override)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == [
        "error: dense: tickets.cycle_rat: unknown key; did you mean tickets.cycle_rate?"]
    assert list(tmp_path.iterdir()) == []


def test_dvc_exp_run_with_an_added_unknown_key_fails_in_the_first_stage_naming_the_nearest(tmp_path):
    """The DVC way in: `-S +key=value` composes into params.yaml; the first stage refuses it."""
    from conftest import make_repo, run

    repo = make_repo(tmp_path / "repo")
    proc = run(repo, "dvc", "exp", "run", "--temp", "-S", "experiment=smoke", "-S", "+tickets.cycle_rat=0.2",
               check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "error: prepare: tickets.cycle_rat: unknown key; did you mean tickets.cycle_rate?" in out, out[-3000:]
    assert not (repo / "data/prepared").exists()
