"""Tests for the data modules: IDX and CIFAR readers (datasets), splits (splits), summaries and files
(prepared), normalisation and augmentation (batches)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_idx
from suptickets import batches, datasets, prepared
from suptickets.choices import DATASETS
from suptickets.datasets import fashion_mnist
from suptickets.errors import DataError
from suptickets.splits import SPLITS, Raw, prepare_splits, stratified_split, stratified_subset

FASHION_DIR = Path(fashion_mnist.DEBIAN_FASHION_MNIST)


# ----------------------------------------------------------------------------------------------
# helpers


def write_fashion(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = False,
                  size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def fake_cifar10(root: Path, per_batch: int = 6, n_test: int = 5, meta: bool = True) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        batch = {b"batch_label": name.encode(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        write_pickle(folder / name, batch)
        batches[name] = batch
    if meta:
        write_pickle(folder / "batches.meta",
                     {b"label_names": [f"class{i}".encode() for i in range(10)],
                      b"num_vis": 3072, b"num_cases_per_batch": per_batch})
    return batches


def fake_cifar100(root: Path, n_train: int = 12, n_test: int = 4, meta: bool = True) -> dict:
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        part = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}
        write_pickle(folder / name, part)
        out[name] = part
    if meta:
        write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                       b"coarse_label_names": [b"c"] * 20})
    return out


# ----------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    x = fashion_mnist.read_idx(write_idx(tmp_path / f"img{suffix}", images, gz=gz), fashion_mnist.IDX_IMAGES_MAGIC)
    y = fashion_mnist.read_idx(write_idx(tmp_path / f"lab{suffix}", labels, gz=gz), fashion_mnist.IDX_LABELS_MAGIC)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (7, 28, 28)
    assert torch.equal(x, torch.from_numpy(images))
    assert torch.equal(y, torch.from_numpy(labels))


def test_read_idx_empty(tmp_path):
    x = fashion_mnist.read_idx(write_idx(tmp_path / "empty", np.zeros((0, 28, 28), np.uint8)))
    assert tuple(x.shape) == (0, 28, 28)


@pytest.mark.parametrize("case, match", [
    ("truncated", "truncated IDX payload"),
    ("overlong", "over-long IDX payload"),
    ("bad_magic", "bad IDX magic"),
    ("bad_type", "bad IDX magic"),
    ("wrong_kind", "expected 0x00000803"),
    ("short_header", "truncated IDX header"),
    ("tiny", "truncated IDX file"),
    ("corrupt_gzip", "gzip"),
    ("missing", "no such IDX file"),
])
def test_read_idx_errors(tmp_path, case, match):
    images = np.ones((3, 28, 28), np.uint8)
    name = f"broken-{case}" + (".gz" if case == "corrupt_gzip" else "")
    path = tmp_path / name
    if case == "truncated":
        write_idx(path, images, cut=5)
    elif case == "overlong":
        write_idx(path, images, extra=b"\x00\x01")
    elif case == "bad_magic":
        write_idx(path, images, magic=0x12340803)
    elif case == "bad_type":
        write_idx(path, images, magic=0x00000D03)  # float32 type code
    elif case == "wrong_kind":
        write_idx(path, np.ones(3, np.uint8))  # a label file where images are expected
    elif case == "short_header":
        path.write_bytes(struct.pack(">I", 0x00000803) + b"\x00\x00")
    elif case == "tiny":
        path.write_bytes(b"\x00\x00")
    elif case == "corrupt_gzip":
        write_idx(path, images, gz=True)
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2:] = b"\xff" * (len(blob) - len(blob) // 2)
        path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=match) as info:
        fashion_mnist.read_idx(path, fashion_mnist.IDX_IMAGES_MAGIC)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_load_fashion_from_root(tmp_path, gz):
    arrays = write_fashion(tmp_path / "FashionMNIST" / "raw", gz=gz)
    raw = datasets.load_raw("fashion_mnist", root=str(tmp_path))
    assert tuple(raw.train_x.shape) == (20, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert tuple(raw.test_x.shape) == (10, 1, 28, 28)
    assert raw.train_y.dtype == torch.int64 and raw.test_y.dtype == torch.int64
    assert torch.equal(raw.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(raw.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert len(raw.classes) == 10


def test_load_fashion_wrong_image_size(tmp_path):
    write_fashion(tmp_path, size=32)
    with pytest.raises(DataError, match="28x28") as info:
        datasets.load_raw("fashion_mnist", root=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(info.value)


def test_load_fashion_mismatched_counts(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        datasets.load_raw("fashion_mnist", root=str(tmp_path))


def test_load_fashion_label_out_of_range(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 10, np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        datasets.load_raw("fashion_mnist", root=str(tmp_path))


def test_load_fashion_corrupt_gzip_names_file(tmp_path):
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])  # cut the gzip stream short
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        datasets.load_raw("fashion_mnist", root=str(tmp_path))


def test_a_configured_root_is_the_only_place_looked_at(tmp_path):
    with pytest.raises(DataError, match="not found; searched") as info:
        datasets.load_raw("fashion_mnist", root=str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(info.value)
    assert fashion_mnist.DEBIAN_FASHION_MNIST not in str(info.value)


def test_unknown_dataset():
    with pytest.raises(DataError, match="data.name") as info:
        datasets.load_raw("mnist")
    assert all(name in str(info.value) for name in DATASETS)


# ----------------------------------------------------------------------------------------------
# CIFAR


def test_load_cifar10(tmp_path):
    batches = fake_cifar10(tmp_path)
    raw = datasets.load_raw("cifar10", root=str(tmp_path))
    assert tuple(raw.train_x.shape) == (30, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert tuple(raw.test_x.shape) == (5, 3, 32, 32)
    assert raw.train_y.dtype == torch.int64
    assert raw.classes == [f"class{i}" for i in range(10)]
    expected_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert raw.train_y.tolist() == expected_y
    assert raw.test_y.tolist() == batches["test_batch"][b"labels"]
    # row-major 3072 bytes = R plane, G plane, B plane; pixel (row 2, col 5) of the 7th image
    # (second image of data_batch_2)
    row = batches["data_batch_2"][b"data"][1]
    for c in range(3):
        assert int(raw.train_x[7, c, 2, 5]) == int(row[c * 1024 + 2 * 32 + 5])
    assert torch.equal(raw.test_x.reshape(5, -1), torch.from_numpy(batches["test_batch"][b"data"]))


def test_load_cifar10_without_meta(tmp_path):
    fake_cifar10(tmp_path, meta=False)
    raw = datasets.load_raw("cifar10", root=str(tmp_path))
    assert raw.classes == [str(i) for i in range(10)]


def test_load_cifar10_missing_batch(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        datasets.load_raw("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("batch, content, match", [
    ("data_batch_4", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "data_batch_4.*3072"),  # row size
    ("test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "test_batch"),  # label range
    ("data_batch_1", b"not a pickle", "data_batch_1"),
])
def test_load_cifar10_refuses_a_bad_batch_file_naming_it(tmp_path, batch, content, match):
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / batch
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_pickle(path, content)
    with pytest.raises(DataError, match=match):
        datasets.load_raw("cifar10", root=str(tmp_path))


def test_load_cifar100(tmp_path):
    parts = fake_cifar100(tmp_path)
    raw = datasets.load_raw("cifar100", root=str(tmp_path))
    assert tuple(raw.train_x.shape) == (12, 3, 32, 32)
    assert tuple(raw.test_x.shape) == (4, 3, 32, 32)
    assert raw.train_y.tolist() == parts["train"][b"fine_labels"]
    assert raw.classes[:2] == ["f0", "f1"] and len(raw.classes) == 100
    row = parts["test"][b"data"][3]
    assert [int(raw.test_x[3, c, 31, 0]) for c in range(3)] == \
        [int(row[c * 1024 + 31 * 32]) for c in range(3)]


def test_load_cifar100_missing(tmp_path):
    fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match="cifar-100-python.test"):
        datasets.load_raw("cifar100", root=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# real Fashion-MNIST (Debian's dataset-fashion-mnist), loaded once


@pytest.fixture(scope="module")
def fashion() -> Raw:
    if not all((FASHION_DIR / f"{stem}.gz").is_file() or (FASHION_DIR / stem).is_file()
               for stem in fashion_mnist.FASHION_MNIST_FILES.values()):
        pytest.skip(f"{FASHION_DIR} not installed")
    return datasets.load_raw("fashion_mnist")


def test_real_fashion_mnist(fashion):
    assert tuple(fashion.train_x.shape) == (60000, 1, 28, 28)
    assert tuple(fashion.test_x.shape) == (10000, 1, 28, 28)
    assert len(fashion.classes) == 10
    assert torch.bincount(fashion.train_y, minlength=10).min() > 0
    assert torch.bincount(fashion.test_y, minlength=10).min() > 0
    assert int(fashion.train_y.max()) == 9


def test_real_fashion_prepare_and_summarize(fashion):
    splits = prepare_splits(fashion, 0.1, seed=0, limit_train=2000, limit_test=500)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1800, "val": 200, "test": 500}
    summary = prepared.summarize(splits, fashion.classes)
    assert summary["shape"] == [1, 28, 28]
    assert summary["splits"]["val"]["class_counts"] == [20] * 10
    assert 0.2 < summary["mean"][0] < 0.4 and 0.25 < summary["std"][0] < 0.45


# ----------------------------------------------------------------------------------------------
# splits


def labels_fixture() -> torch.Tensor:
    counts = [50, 30, 21, 7, 1]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]


def test_stratified_split_sizes_and_partition():
    y = labels_fixture()
    keep, held = stratified_split(y, 0.2, seed=3)
    assert keep.dtype == torch.int64 and held.dtype == torch.int64
    for c, n in enumerate([50, 30, 21, 7, 1]):
        assert int((y[held] == c).sum()) == round(n * 0.2)
        assert int((y[keep] == c).sum()) == n - round(n * 0.2)
    assert torch.equal(keep, keep.sort().values) and torch.equal(held, held.sort().values)
    assert not set(keep.tolist()) & set(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(y)))


def test_stratified_split_determinism():
    y = labels_fixture()
    a = stratified_split(y, 0.25, seed=7)
    b = stratified_split(y, 0.25, seed=7)
    c = stratified_split(y, 0.25, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split(torch.zeros(4, dtype=torch.int64), 1.5, 0)


def test_stratified_subset_balanced():
    y = torch.arange(1000) % 10
    idx = stratified_subset(y, 95, seed=0)
    assert len(idx) == 95 and len(set(idx.tolist())) == 95
    assert torch.equal(idx, idx.sort().values)
    counts = torch.bincount(y[idx], minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(idx, stratified_subset(y, 95, seed=0))
    assert not torch.equal(idx, stratified_subset(y, 95, seed=1))
    assert torch.equal(stratified_subset(y, 5000, seed=0), torch.arange(1000))


def test_stratified_subset_small_class():
    y = labels_fixture()  # class sizes 50, 30, 21, 7, 1
    idx = stratified_subset(y, 50, seed=0)
    counts = torch.bincount(y[idx], minlength=5).tolist()
    assert sum(counts) == 50 and counts[4] == 1 and counts[3] == 7
    assert max(counts[:3]) - min(counts[:3]) <= 1


def tiny_raw(n_train: int = 200, n_test: int = 40, channels: int = 3, size: int = 8,
             k: int = 4) -> Raw:
    g = torch.Generator().manual_seed(0)
    return Raw(
        train_x=torch.randint(0, 256, (n_train, channels, size, size), generator=g,
                              dtype=torch.uint8),
        train_y=torch.arange(n_train) % k,
        test_x=torch.randint(0, 256, (n_test, channels, size, size), generator=g,
                             dtype=torch.uint8),
        test_y=torch.arange(n_test) % k,
        classes=[f"c{i}" for i in range(k)],
    )


def test_prepare_splits_limits():
    raw = tiny_raw()
    splits = prepare_splits(raw, 0.25, seed=1, limit_train=80, limit_test=20)
    assert [len(splits[s][1]) for s in SPLITS] == [60, 20, 20]
    for s in SPLITS:
        x, y = splits[s]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.bincount(y, minlength=4).tolist() == [len(y) // 4] * 4
    again = prepare_splits(raw, 0.25, seed=1, limit_train=80, limit_test=20)
    assert all(torch.equal(splits[s][0], again[s][0]) for s in SPLITS)
    full = prepare_splits(raw, 0.25, seed=1)
    assert [len(full[s][1]) for s in SPLITS] == [152, 48, 40]


def test_summarize():
    raw = tiny_raw()
    splits = prepare_splits(raw, 0.25, seed=0)
    summary = prepared.summarize(splits, raw.classes)
    train = splits["train"][0].double() / 255
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert summary["num_classes"] == 4 and summary["classes"] == raw.classes
    assert summary["shape"] == [3, 8, 8]
    assert np.allclose(summary["mean"], expected_mean.numpy())
    assert np.allclose(summary["std"], expected_std.numpy())
    # 50 per class, round(12.5) == 12 (Python rounds halves to even)
    assert summary["splits"]["val"]["size"] == 48
    assert summary["splits"]["val"]["class_counts"] == [12] * 4
    assert summary["splits"]["test"]["class_counts"] == [10] * 4
    json.dumps(summary, allow_nan=False)  # JSON-ready


def test_summary_tables():
    raw = tiny_raw()
    summary = prepared.summarize(prepare_splits(raw, 0.25, seed=0), raw.classes)
    split_df, class_df = prepared.summary_tables(summary)
    assert list(split_df.columns) == ["split", "size", "channels", "height", "width", "mean",
                                      "std"]
    assert split_df["split"].tolist() == ["train", "val", "test"]
    assert split_df["height"].tolist() == [8, 8, 8]
    assert abs(split_df["mean"][0] - np.mean(summary["mean"])) < 1e-12
    assert list(class_df.columns) == ["split", "label", "count"]
    assert len(class_df) == 12
    assert class_df["count"].sum() == 240
    assert class_df[class_df.split == "val"]["count"].tolist() == [12] * 4


def test_save_load_prepared_roundtrip(tmp_path):
    raw = tiny_raw()
    splits = prepare_splits(raw, 0.25, seed=0)
    summary = prepared.summarize(splits, raw.classes)
    prepared.save_prepared(tmp_path / "prepared", splits, summary)
    names = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    assert names == ["summary.json", "test.safetensors", "train.safetensors", "val.safetensors"]
    loaded, loaded_summary = prepared.load_prepared(tmp_path / "prepared")
    assert loaded_summary == summary
    for s in SPLITS:
        assert torch.equal(loaded[s][0], splits[s][0]) and loaded[s][0].dtype == torch.uint8
        assert torch.equal(loaded[s][1], splits[s][1]) and loaded[s][1].dtype == torch.int64


def test_load_prepared_missing(tmp_path):
    raw = tiny_raw()
    splits = prepare_splits(raw, 0.25, seed=0)
    prepared.save_prepared(tmp_path, splits, prepared.summarize(splits, raw.classes))
    (tmp_path / "val.safetensors").unlink()
    with pytest.raises(DataError, match="val.safetensors"):
        prepared.load_prepared(tmp_path)
    prepared.save_prepared(tmp_path, splits, prepared.summarize(splits, raw.classes))
    (tmp_path / "summary.json").unlink()
    with pytest.raises(DataError, match="summary.json"):
        prepared.load_prepared(tmp_path)


# ----------------------------------------------------------------------------------------------
# normalize / augment


def test_normalize():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = batches.normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c].float() / 255 - mean[c]) / std[c])
    assert torch.allclose(batches.normalize(x[0], mean, std), out[0])
    with pytest.raises(ValueError):
        batches.normalize(x, [0.1], [0.2])


def batch(n: int = 16, c: int = 3, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(11))


def test_augment_identity():
    x = batch()
    assert torch.equal(batches.augment(x, torch.Generator().manual_seed(0), 0, False), x)


def test_augment_deterministic_and_shape():
    x = batch()
    a = batches.augment(x, torch.Generator().manual_seed(0), 4, True)
    b = batches.augment(x, torch.Generator().manual_seed(0), 4, True)
    c = batches.augment(x, torch.Generator().manual_seed(1), 4, True)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    xf = x.float()
    af = batches.augment(xf, torch.Generator().manual_seed(0), 4, True)
    assert torch.equal(af, a.float())


def test_augment_flip_only():
    x = batch(n=64)
    out = batches.augment(x, torch.Generator().manual_seed(3), 0, True)
    flipped = torch.flip(x, dims=[3])
    is_flipped = [torch.equal(out[i], flipped[i]) for i in range(len(x))]
    is_same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or s for f, s in zip(is_flipped, is_same))
    assert 10 < sum(is_flipped) < 54 and 10 < sum(is_same) < 54


def test_augment_crop_is_shifted_window():
    x = batch(n=32)
    p = 3
    out = batches.augment(x, torch.Generator().manual_seed(4), p, False)
    padded = torch.nn.functional.pad(x.float(), (p, p, p, p)).to(torch.uint8)
    h, w = x.shape[2:]
    shifts = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert matches, f"sample {i} is not a crop of its padded image"
        shifts.add(matches[0])
    assert len(shifts) > 5


def test_augment_matches_generator_draws():
    """Offsets first, then flips, all drawn from the CPU generator."""
    x = batch(n=8)
    p = 2
    g = torch.Generator().manual_seed(9)
    oy = torch.randint(0, 2 * p + 1, (8, 1), generator=g).squeeze(1)
    ox = torch.randint(0, 2 * p + 1, (8, 1), generator=g).squeeze(1)
    fl = (torch.rand((8, 1), generator=g) < 0.5).squeeze(1)
    out = batches.augment(x, torch.Generator().manual_seed(9), p, True)
    padded = torch.nn.functional.pad(x.float(), (p, p, p, p)).to(torch.uint8)
    h, w = x.shape[2:]
    for i in range(8):
        crop = padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        if fl[i]:
            crop = torch.flip(crop, dims=[2])
        assert torch.equal(out[i], crop)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_training_batches_crop_and_flip_with_the_epochs_generator_on_the_datas_device(device):
    """A training epoch's batches, as the stages build them on the data's device: the order and every
    batch's crop offsets and flips come from the epoch's generator on that device
    (`epoch_generator(seed, epoch, device)`: on CUDA a CUDA generator, whose numbers differ from a CPU
    generator's), drawn order first, then batch by batch rows, columns, flips; checked against crops and
    flips made by hand."""
    x, seed, epoch, p, size = batch(n=8).to(device), 3, 2, 4, 4
    data = batches.Batches(x, torch.arange(8, device=device), [0.5] * 3, [0.25] * 3, batch_size=size,
                           shuffle=True, drop_last=True, seed=seed, padding=p, flip=True)
    built = data.epoch_batches(epoch)
    assert built.x.device.type == device

    g = batches.epoch_generator(seed, epoch, device)
    assert g.device.type == device
    order = torch.randperm(8, generator=g, device=device)
    padded = torch.nn.functional.pad(x.float(), (p, p, p, p)).to(torch.uint8)
    h, w = x.shape[2:]
    for i in range(2):
        oy, ox = (torch.randint(0, 2 * p + 1, (size, 1), generator=g, device=device) for _ in range(2))
        flipped = torch.rand((size, 1), generator=g, device=device) < 0.5
        for j in range(size):
            k = int(order[i * size + j])
            crop = padded[k, :, int(oy[j]):int(oy[j]) + h, int(ox[j]):int(ox[j]) + w]
            expected = torch.flip(crop, dims=[2]) if bool(flipped[j]) else crop
            assert torch.equal(built.x[i, j], expected), (i, j)
            assert int(built.y[i, j]) == k
        xb, _ = built.batch(i)
        assert xb.device.type == device and torch.allclose(
            xb, batches.normalize(built.x[i], [0.5] * 3, [0.25] * 3))