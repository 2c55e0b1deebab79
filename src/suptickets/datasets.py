"""Data sets from their sources: the official train/test pairs read from IDX files (Fashion-MNIST)
and CIFAR pickles (torchvision's download as a fallback), then class-balanced subsets and a
stratified, seeded validation split.

Images stay uint8 [N, C, H, W] and labels int64, on disk and in memory; `prepared.py` summarises and
writes the splits, `batches.py` turns them into training inputs on the device.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .choices import DATASETS, FOLDER_DATASETS
from .errors import DataError

SPLITS = ("train", "val", "test")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEFAULT_ROOT = "data/raw"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

IDX_UINT8 = 0x08
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

CIFAR_ROW_BYTES = 3 * 32 * 32


@dataclass
class Raw:
    """An official train/test pair: x uint8 [N, C, H, W], y int64 [N], class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


# ----------------------------------------------------------------------------------------------
# IDX (MNIST-style) files


def read_idx(path: str | os.PathLike, magic: int | None = None) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain, or gzip when the name ends in `.gz`).

    Layout: big-endian magic (two zero bytes, type code, number of dims), one big-endian uint32
    per dim, then exactly prod(dims) data bytes. `magic`, if given, must match exactly
    (IDX_IMAGES_MAGIC or IDX_LABELS_MAGIC).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                blob = fh.read()
        else:
            blob = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        expected = "a valid gzip stream" if path.name.endswith(".gz") else "a readable file"
        raise DataError(f"{path}: cannot read IDX file ({type(err).__name__}: {err}); "
                        f"expected {expected}") from None
    if len(blob) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(blob)} bytes, expected a 4-byte magic)")
    (found,) = struct.unpack(">I", blob[:4])
    zero, type_code, ndim = found >> 16, (found >> 8) & 0xFF, found & 0xFF
    if zero != 0 or type_code != IDX_UINT8 or ndim == 0:
        raise DataError(f"{path}: bad IDX magic 0x{found:08x}; expected 0x000008NN "
                        "(unsigned byte data, NN dims)")
    if magic is not None and found != magic:
        raise DataError(f"{path}: bad IDX magic 0x{found:08x}; expected 0x{magic:08x}")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path}: truncated IDX header ({len(blob)} bytes, expected {header} "
                        f"for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", blob[4:header])
    expected = math.prod(dims)
    payload = len(blob) - header
    if payload != expected:
        kind = "truncated" if payload < expected else "over-long"
        raise DataError(f"{path}: {kind} IDX payload: {payload} bytes, expected {expected} "
                        f"for dims {list(dims)}")
    if expected == 0:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(memoryview(blob)[header:]), dtype=torch.uint8).reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The plain or gzipped version of an IDX file in `directory` (plain preferred)."""
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _fashion_dirs(root: str | None) -> list[Path]:
    """A configured root is the only place looked at; else the Debian package's folder."""
    if root is not None:
        return [Path(root), Path(root) / "FashionMNIST" / "raw"]
    return [Path(DEBIAN_FASHION_MNIST), Path(DEFAULT_ROOT) / "FashionMNIST" / "raw"]


def _find_fashion_files(dirs: Sequence[Path]) -> dict[str, Path] | None:
    for directory in dirs:
        found = {key: _idx_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
        if all(p is not None for p in found.values()):
            return found  # type: ignore[return-value]
    return None


def download_into(target: str | os.PathLike, fetch: Callable[[str], object], failed: str, advice: str) -> None:
    """Run a torchvision download `fetch(folder)` in a scratch folder under the working directory
    (.cache/suptickets/, git-ignored), then move what it fetched into `target`: a failed download
    creates nothing at `target`, and the DataError keeps the whole underlying message (one line)."""
    scratch = Path(".cache/suptickets")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=scratch))
    try:
        try:
            fetch(str(folder))
        except Exception as err:  # no network, refused, a bad archive, ...: say why, all of it
            why = " ".join(str(err).split()) or "no message"
            raise DataError(f"{failed} ({type(err).__name__}: {why}); {advice}") from None
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            dest = Path(target) / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, dest)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for empty in (scratch, scratch.parent):  # leave the working directory as it was
            try:
                empty.rmdir()
            except OSError:
                break


def _load_fashion_mnist(root: str | None, download: bool) -> Raw:
    dirs = _fashion_dirs(root)
    files = _find_fashion_files(dirs)
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        target = root if root is not None else DEFAULT_ROOT
        places = ", ".join(str(d) for d in dirs)
        download_into(target, lambda folder: [FashionMNIST(folder, train=t, download=True) for t in (True, False)],
                      f"Fashion-MNIST not found in {places}, and torchvision's download into {target} failed",
                      "set data.root to a folder with the IDX files")
        dirs = [Path(target) / "FashionMNIST" / "raw"]
        files = _find_fashion_files(dirs)
    if files is None:
        places = ", ".join(str(d) for d in dirs)
        raise DataError(f"Fashion-MNIST IDX files ({', '.join(FASHION_MNIST_FILES.values())}, "
                        f"plain or .gz) not found; searched: {places}")

    tensors = {}
    for key, path in files.items():
        is_images = key.endswith("_x")
        t = read_idx(path, IDX_IMAGES_MAGIC if is_images else IDX_LABELS_MAGIC)
        if is_images and tuple(t.shape[1:]) != (28, 28):
            raise DataError(f"{path}: images are {list(t.shape[1:])}, expected 28x28")
        if not is_images and t.numel() and int(t.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{path}: label {int(t.max())} out of range, expected "
                            f"0..{len(FASHION_MNIST_CLASSES) - 1}")
        tensors[key] = t
    for part in ("train", "test"):
        nx, ny = len(tensors[f"{part}_x"]), len(tensors[f"{part}_y"])
        if nx != ny:
            raise DataError(f"{files[part + '_y']}: {ny} labels, expected {nx} to match "
                            f"{files[part + '_x']}")
    return Raw(
        train_x=tensors["train_x"].unsqueeze(1).contiguous(),
        train_y=tensors["train_y"].to(torch.int64),
        test_x=tensors["test_x"].unsqueeze(1).contiguous(),
        test_y=tensors["test_y"].to(torch.int64),
        classes=list(FASHION_MNIST_CLASSES),
    )


# ----------------------------------------------------------------------------------------------
# CIFAR pickles (the data sets' own format, as torchvision leaves them)

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    labels=b"labels", meta="batches.meta", names=b"label_names", k=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     labels=b"fine_labels", meta="meta", names=b"fine_label_names", k=100),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except Exception as err:  # a broken pickle can raise almost anything
        raise DataError(f"{path}: cannot unpickle ({type(err).__name__}: {err}); "
                        "expected a CIFAR python-format pickle") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: unpickled a {type(obj).__name__}, expected a dict")
    return obj


def _read_cifar_batch(path: Path, label_key: bytes, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: expected keys b'data' and {label_key!r}, "
                        f"got {sorted(batch)[:6]}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW_BYTES:
        raise DataError(f"{path}: data is {data.dtype} {list(data.shape)}, expected uint8 "
                        f"[N, {CIFAR_ROW_BYTES}]")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or len(labels) != len(data) or (
            len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: {label_key.decode()} is {labels.dtype} {list(labels.shape)}, "
                        f"expected {len(data)} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"{path}: labels span {int(labels.min())}..{int(labels.max())}, "
                        f"expected 0..{k - 1}")
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _load_cifar(name: str, root: str | None, download: bool) -> Raw:
    spec = _CIFAR[name]
    base = Path(root if root is not None else DEFAULT_ROOT)
    folder = base / spec["folder"]
    needed = [folder / f for f in spec["train"] + spec["test"]]
    missing = [p for p in needed if not p.is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        download_into(base, lambda into: (CIFAR10 if name == "cifar10" else CIFAR100)(into, train=True, download=True),
                      f"{missing[0]}: missing, and torchvision's {name} download into {base} failed",
                      f"put the python-format batches under {folder}")
        missing = [p for p in needed if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: missing {name} batch file (expected torchvision's "
                        f"python-format layout under {folder}; missing: "
                        f"{', '.join(p.name for p in missing)})")

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_cifar_batch(folder / f, spec["labels"], spec["k"]) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train_x, train_y = read(spec["train"])
    test_x, test_y = read(spec["test"])
    classes = [str(i) for i in range(spec["k"])]
    meta = folder / spec["meta"]
    if meta.is_file():
        info = _unpickle(meta)
        names = info.get(spec["names"])
        if names is None or len(names) != spec["k"]:
            raise DataError(f"{meta}: expected {spec['names']!r} with {spec['k']} class names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Raw(train_x, train_y, test_x, test_y, classes)


def load_raw(name: str, root: str | None = None, download: bool = False) -> Raw:
    """Load the official train/test split of `name` (one of DATASETS)."""
    if name not in DATASETS:
        raise DataError(f"data.name={name!r}: unknown data set, expected one of "
                        f"{', '.join(DATASETS)}")
    if name in FOLDER_DATASETS:
        raise DataError(f"data.name={name!r} is a folder data set: prepare writes a manifest for it "
                        "(suptickets.imagefolder), not tensors")
    if name == "fashion_mnist":
        return _load_fashion_mnist(root, download)
    return _load_cifar(name, root, download)


# ----------------------------------------------------------------------------------------------
# Splits


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"{list(labels.shape)}")
    return labels.detach().to("cpu", torch.int64)


def stratified_split(labels: torch.Tensor, fraction: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep_idx, held_idx): hold out round(n_c * fraction) random samples of every class c.

    Classes are visited in ascending order, each drawing one permutation from a generator
    seeded with `seed`; both index tensors come back sorted ascending.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    labels = _check_labels(labels)
    gen = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for c in torch.unique(labels, sorted=True).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        perm = idx[torch.randperm(len(idx), generator=gen)]
        n_held = int(round(len(idx) * fraction))
        held.append(perm[:n_held])
        keep.append(perm[n_held:])
    empty = torch.empty(0, dtype=torch.int64)
    keep_idx = torch.sort(torch.cat(keep)).values if keep else empty
    held_idx = torch.sort(torch.cat(held)).values if held else empty
    return keep_idx, held_idx


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset of size n (all indices if n >= len).

    Every class gets n // K samples (the remainder goes one each to the smallest classes,
    then the lowest labels); a class with too few samples gives all it has and its shortfall is
    shared among the others.
    """
    labels = _check_labels(labels)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    if n >= len(labels):
        return torch.arange(len(labels))
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    classes, counts = classes.tolist(), counts.tolist()
    # water-filling: smallest classes first, each takes its share of what is left
    order = sorted(range(len(classes)), key=lambda i: (counts[i], classes[i]))
    quota = [0] * len(classes)
    remaining = n
    for j, i in enumerate(order):
        share = -(-remaining // (len(order) - j))  # ceil
        quota[i] = min(counts[i], share)
        remaining -= quota[i]
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, q in zip(classes, quota):
        idx = torch.nonzero(labels == c).squeeze(1)
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:q]])
    return torch.sort(torch.cat(picked)).values


def prepare_splits(raw: Raw, val_fraction: float, seed: int, limit_train: int | None = None,
                   limit_test: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"} -> (x, y): optional class-balanced subsets of the official
    splits first, then a stratified validation split carved from the (subset) train split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
    if limit_train is not None and limit_train < len(train_y):
        idx = stratified_subset(train_y, limit_train, seed)
        train_x, train_y = train_x[idx], train_y[idx]
    if limit_test is not None and limit_test < len(test_y):
        idx = stratified_subset(test_y, limit_test, seed)
        test_x, test_y = test_x[idx], test_y[idx]
    keep, held = stratified_split(train_y, val_fraction, seed)
    return {
        "train": (train_x[keep].contiguous(), train_y[keep].contiguous()),
        "val": (train_x[held].contiguous(), train_y[held].contiguous()),
        "test": (test_x.contiguous(), test_y.contiguous()),
    }
