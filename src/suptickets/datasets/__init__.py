"""Data sets from their sources: the official train/test pairs read from IDX files (Fashion-MNIST,
`fashion_mnist`) and CIFAR pickles (`cifar`), with torchvision's download, made safe (`download`),
as a fallback. The splits carved from them are `splits.py`'s.
"""

from __future__ import annotations

from ..choices import DATASETS, FOLDER_DATASETS
from ..errors import DataError
from ..splits import Raw
from .cifar import load_cifar
from .fashion_mnist import load_fashion_mnist


def load_raw(name: str, root: str | None = None, download: bool = False) -> Raw:
    """Load the official train/test split of `name` (one of DATASETS)."""
    if name not in DATASETS:
        raise DataError(f"data.name={name!r}: unknown data set, expected one of "
                        f"{', '.join(DATASETS)}")
    if name in FOLDER_DATASETS:
        raise DataError(f"data.name={name!r} is a folder data set: prepare writes a manifest for it "
                        "(suptickets.imagefolder), not tensors")
    if name == "fashion_mnist":
        return load_fashion_mnist(root, download)
    return load_cifar(name, root, download)
