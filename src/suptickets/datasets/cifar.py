"""CIFAR-10 and CIFAR-100 from their python-format pickles, as torchvision leaves them (torchvision's
download as a fallback)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..splits import Raw
from .download import DEFAULT_ROOT, download_into

CIFAR_ROW_BYTES = 3 * 32 * 32

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


def load_cifar(name: str, root: str | None, download: bool) -> Raw:
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
