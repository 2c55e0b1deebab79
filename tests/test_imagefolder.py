"""Folder data sets (the ImageNet path): a tree of real JPEGs written here, the manifest, the
DataLoader batches, the ImageNet recipe's pieces, and the whole DAG on it through the dvc CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import WANDB_AS_CONFIGURED, make_repo, run
from test_pipeline import STAGES
from suptickets.config import check
from suptickets.errors import DataError
from suptickets.imagefolder import (MANIFEST, FolderBatches, ManifestImages, build_manifest, check_files,
                                    random_resized_crop_box, read_manifest)
from suptickets.models import build_model
from suptickets.runtime import optimizer_for
from suptickets.schemas import ValidationFailed, validate_manifest

CLASSES = ["n01", "n02", "n03", "n04"]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]


def write_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """<root>/{train,val}/<class>/*.JPEG: noisy images of one colour per class, of varied sizes."""
    rng = np.random.default_rng(seed)
    for folder, n in per_class.items():
        for c, (name, colour) in enumerate(zip(CLASSES, COLOURS)):
            where = root / folder / name
            where.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(28, 56)), int(rng.integers(28, 56))
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(where / f"{name}_{i:03d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("imagenet"), {"train": 12, "val": 3})


def test_manifest_is_stratified_relative_and_complete(tree):
    splits, classes = build_manifest(tree, val_fraction=0.25, seed=0)
    assert classes == CLASSES
    assert [len(splits[s]) for s in ("train", "val", "test")] == [36, 12, 12]
    for name, rows in splits.items():
        assert sorted({label for _, label in rows}) == [0, 1, 2, 3]
        assert all(not Path(p).is_absolute() and (tree / p).is_file() for p, _ in rows)
    assert all(p.startswith("val/") for p, _ in splits["test"])
    assert not {p for p, _ in splits["train"]} & {p for p, _ in splits["val"]}
    assert build_manifest(tree, 0.25, seed=0) == (splits, classes)  # seeded
    assert build_manifest(tree, 0.25, seed=1)[0]["val"] != splits["val"]
    limited, _ = build_manifest(tree, 0.25, seed=0, limit_train=20, limit_test=8)
    assert len(limited["train"]) + len(limited["val"]) == 20 and len(limited["test"]) == 8


def test_manifest_schema_rejects_bad_rows():
    import pandas as pd

    good = pd.DataFrame({"path": ["train/a/1.JPEG", "train/a/2.JPEG", "val/a/3.JPEG"], "label": [0, 1, 0],
                         "split": ["train", "val", "test"]})
    validate_manifest(good, 2)
    for column, value, needle in [("label", 5, "label"), ("split", "dev", "split"),
                                  ("path", "/etc/passwd", "relative"), ("path", "train/a/2.JPEG", "path")]:
        bad = good.copy()
        bad.loc[0, column] = value
        with pytest.raises(ValidationFailed, match=needle):
            validate_manifest(bad, 2)


def test_missing_folder_and_undecodable_file_are_one_line_errors(tmp_path, tree):
    with pytest.raises(DataError, match=r"train: missing image folder"):
        build_manifest(tmp_path, 0.25, 0)
    broken = write_tree(tmp_path / "t", {"train": 2, "val": 1})
    (broken / "val/n02/n02_000.JPEG").write_bytes(b"\xff\xd8\xff not really a jpeg")
    splits, _ = build_manifest(broken, 0.25, 0)
    paths = [p for rows in splits.values() for p, _ in rows]
    with pytest.raises(DataError, match=r"n02_000.JPEG: cannot decode image .*1 of 12 manifest files are bad"):
        check_files(broken, paths, workers=2)


def test_random_resized_crop_box_stays_inside_and_is_seeded():
    for h, w in [(40, 30), (300, 500), (1000, 10), (10, 1000), (8, 8)]:
        for s in range(50):
            top, left, ch, cw = random_resized_crop_box(h, w, torch.Generator().manual_seed(s))
            assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w
    a = random_resized_crop_box(300, 500, torch.Generator().manual_seed(3))
    assert a == random_resized_crop_box(300, 500, torch.Generator().manual_seed(3))
    # an extreme aspect ratio falls back to the centre crop clamped to the 3/4..4/3 range
    assert random_resized_crop_box(1000, 10, torch.Generator().manual_seed(0))[2:] in {(13, 10), (1000, 10)}


def _batches(tree, workers: int, rank: int = 0, world: int = 1, train: bool = True) -> FolderBatches:
    splits, _ = build_manifest(tree, 0.25, 0)
    rows = splits["train"]
    images = ManifestImages(str(tree), [p for p, _ in rows], [label for _, label in rows], 24, 28, train, seed=5)
    return FolderBatches(images, torch.device("cpu"), [0.5] * 3, [0.25] * 3, batch_size=8, shuffle=train,
                         drop_last=train, seed=5, workers=workers, rank=rank, world_size=world)


def test_folder_batches_are_the_same_for_any_number_of_workers_and_shard_by_rank(tree):
    one = list(_batches(tree, workers=0).epoch(1))
    two = list(_batches(tree, workers=2).epoch(1))
    assert len(one) == 4 and len(one) == len(_batches(tree, 0))
    for (xa, ya), (xb, yb) in zip(one, two):
        assert xa.shape == (8, 3, 24, 24) and xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = list(_batches(tree, workers=0).epoch(2))
    assert not torch.equal(one[0][0], other_epoch[0][0])  # a new order and new crops every epoch
    r0 = list(_batches(tree, 0, rank=0, world=2).epoch(1))
    r1 = list(_batches(tree, 0, rank=1, world=2).epoch(1))
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1) and torch.equal(y[1::2], y1)
    plain = _batches(tree, 0).plain()
    first = [x for x, _ in plain.epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in plain.epoch(7)]))  # no augmentation


def test_imagenet_preset_composes_to_the_recipe():
    from conftest import ROOT
    from suptickets.composition import compose

    cfg = compose(ROOT / "params", ["experiment=imagenet_resnet50"])
    assert check(cfg) == []
    assert cfg["data"]["name"] == "imagenet" and cfg["model"] == {"name": "resnet50", "stem": "imagenet"}
    t = cfg["train"]
    assert (t["epochs"], t["lr_warmup_epochs"], t["label_smoothing"], t["weight_decay_bn"]) == (100, 5, 0.1, False)
    assert cfg["dst"]["density"] == 0.1
    from suptickets.schedules import epoch_split

    assert epoch_split(100, cfg["tickets"]["cycle_rate"], cfg["tickets"]["cycle_epochs"]) == (92, 8, 4)
    bad = dict(cfg, data=dict(cfg["data"], folder=dict(cfg["data"]["folder"], resize_size=100)))
    assert any("data.folder.resize_size=100" in p for p in check(bad))


def test_imagenet_resnet50_stem_and_no_weight_decay_on_batchnorm():
    model = build_model("resnet50", (3, 64, 64), 7, stem="imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(ValueError, match="model.stem='vit'"):
        build_model("resnet50", (3, 32, 32), 10, stem="vit")
    opt = optimizer_for(model, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "weight_decay_bn": False})
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in exempt["params"]} == bn and not bn & {id(p) for p in decayed["params"]}
    assert len(optimizer_for(model, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}).param_groups) == 1


@pytest.mark.e2e
def test_the_dag_runs_on_an_image_folder_under_two_processes(tmp_path, tree):
    """The suite's one two-process DAG: the whole DAG on an ImageFolder tree through `dvc exp run`,
    the training stages re-launched under torchrun with 2 gloo ranks (global batch 8, 4 per rank), with
    the ImageNet recipe's pieces (label smoothing, lr warm-up, no weight decay on BatchNorm); ranks hold
    identical masks and weights at every topology update, only rank 0 writes (one W&B run per stage).
    Images are decoded in each rank's own process (data.workers=0): spawned DataLoader workers give the
    same batches, tested above without a DAG."""
    repo = make_repo(tmp_path / "repo")
    overrides = ["experiment=smoke", "data=imagenet", f"data.root={tree}", "data.val_fraction=0.25",
                 "data.workers=0", "data.folder.image_size=24", "data.folder.resize_size=28",
                 "train.batch_size=8", "train.eval_batch_size=16", "train.lr_warmup_epochs=1",
                 "train.label_smoothing=0.1", "train.weight_decay_bn=false", "threads=1",
                 "train.epochs=4", "tickets.cycle_rate=0.25", "tickets.cycle_epochs=1",  # 3 epochs of warmup, 1 ticket
                 "launcher.nproc_per_node=2", "launcher.check_sync=true"]
    args = [a for o in overrides for a in ("-S", o)]
    proc = run(repo, "dvc", "exp", "run", *args, timeout=1200, wandb=WANDB_AS_CONFIGURED)
    out = proc.stdout + proc.stderr
    for stage in ["sparse_baseline", "warmup", "tickets"]:
        m = re.search(rf"{stage}: masks and weights identical on all 2 ranks at each of (\d+) topology updates", out)
        assert m and int(m.group(1)) > 0, out[-3000:]
    manifest = read_manifest(repo / "data/prepared" / MANIFEST)
    assert len(manifest) == 60 and not list((repo / "data/prepared").glob("*.safetensors"))
    summary = json.loads((repo / "data/prepared/summary.json").read_text())
    assert summary["format"] == "folder" and summary["shape"] == [3, 24, 24]
    m = json.loads((repo / "metrics/evaluate.json").read_text())
    assert {"dense", "sparse_baseline", "superposed", "ticket_01"} <= set(m["test_acc"])
    assert m["test_acc"]["dense"] >= 0.5, (m, out[-2000:])  # 4 colours: chance is 0.25
    assert json.loads((repo / "metrics/sparse_baseline.json").read_text())["val_acc"] >= 0.5
    assert len(list((repo / "wandb").glob("offline-run-*"))) == len(STAGES), "only rank 0 logs to W&B"
    assert run(repo, "dvc", "status", "-q", check=False).returncode == 0


def test_prepare_refuses_a_bad_image_and_leaves_nothing(tmp_path):
    broken = write_tree(tmp_path / "t", {"train": 6, "val": 2})
    (broken / "train/n03/n03_004.JPEG").write_bytes(b"\xff\xd8\xff truncated")
    repo = make_repo(tmp_path / "repo")
    proc = run(repo, "python", "stages/prepare.py", "data=imagenet", f"data.root={broken}", "data.val_fraction=0.25",
               "tracking.wandb.mode=disabled", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: prepare:")]
    assert len(errors) == 1 and "n03_004.JPEG: cannot decode image" in errors[0], proc.stderr
    assert not (repo / "data/prepared").exists()
