"""Fashion-MNIST from its IDX files (plain or gzipped): in the Debian package's folder, under a
configured root, or fetched by torchvision's download."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError
from ..splits import Raw
from .download import DEFAULT_ROOT, download_into

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

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


def load_fashion_mnist(root: str | None, download: bool) -> Raw:
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
