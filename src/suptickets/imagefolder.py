"""Data sets too large to hold as tensors (ImageNet): an `ImageFolder` tree, a manifest, a DataLoader.

On disk: `<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*.JPEG` (torchvision's `ImageFolder`
layout; ImageNet's official validation images sorted into class folders). `prepare` writes a
manifest (path relative to the root, label, split) instead of tensors: the pipeline's validation
split is carved from `train` (stratified, seeded), its test split is the official `val`.

Training reads the manifest through a `DataLoader` with worker processes (PIL decoding, torchvision's
standard augmentation: random resized crop + horizontal flip; evaluation: resize + centre crop) and
yields batches shaped like `batches.Batches` does (normalised float on the device, int64 labels), so
the one training loop serves both. All randomness comes from (seed, epoch, sample index), never
from a worker's RNG: a batch is the same for any number of workers.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .batches import EpochOrder, Normalize, batches_per_epoch, epoch_generator
from .errors import DataError
from .splits import SPLITS, stratified_split, stratified_subset

MANIFEST = "manifest.csv"
FOLDERS = {"train": "train", "test": "val"}  # pipeline split -> folder under data.root
# The usual ImageNet normalisation: computing exact statistics would decode the whole data set.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def scan(root: str | os.PathLike) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """({"train": [(relative path, label)], "test": [...]}, class names) via torchvision's ImageFolder.

    The class list comes from `train`; `val` must have the same class folders."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    found, classes = {}, None
    for split, folder in FOLDERS.items():
        where = root / folder
        if not where.is_dir():
            raise DataError(f"{where}: missing image folder; expected <data.root>/train/<class>/*.JPEG and "
                            f"<data.root>/val/<class>/*.JPEG (torchvision ImageFolder layout)")
        try:
            ds = ImageFolder(str(where))
        except (FileNotFoundError, OSError) as err:
            raise DataError(f"{where}: {str(err).splitlines()[0]}") from None
        if classes is None:
            classes = ds.classes
        elif ds.classes != classes:
            extra = sorted(set(ds.classes) ^ set(classes))[:3]
            raise DataError(f"{where}: class folders differ from {root / FOLDERS['train']} (e.g. {extra}); "
                            "both need the same classes")
        found[split] = [(os.path.relpath(p, root), int(label)) for p, label in ds.samples]
    return found, list(classes or [])


def build_manifest(root: str | os.PathLike, val_fraction: float, seed: int, limit_train: int | None = None,
                   limit_test: int | None = None) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """{"train", "val", "test"} -> [(path relative to root, label)], and the class names: optional
    class-balanced subsets first, then a stratified validation split carved from train."""
    found, classes = scan(root)

    def subset(rows, limit):
        if limit is None or limit >= len(rows):
            return rows
        idx = stratified_subset(torch.tensor([r[1] for r in rows]), limit, seed)
        return [rows[i] for i in idx.tolist()]

    train, test = subset(found["train"], limit_train), subset(found["test"], limit_test)
    keep, held = stratified_split(torch.tensor([r[1] for r in train]), val_fraction, seed)
    return {"train": [train[i] for i in keep.tolist()], "val": [train[i] for i in held.tolist()],
            "test": test}, classes


def _decodes(path: Path) -> str | None:
    """None if the file opens and decodes as an image, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still every block of the file
            img.convert("RGB").load()
        return None
    except Exception as err:  # PIL raises many kinds: say which and move on
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def check_files(root: str | os.PathLike, paths: Sequence[str], workers: int = 8) -> None:
    """Every file exists and decodes; else one DataError naming the first bad file and the count."""
    root = Path(root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(lambda p: _decodes(root / p), paths)) if why]
    if problems:
        path, why = problems[0]
        raise DataError(f"{root / path}: cannot decode image ({why}); {len(problems)} of {len(paths)} "
                        f"manifest files are bad")


def manifest_summary(splits: dict[str, list[tuple[str, int]]], classes: list[str], image_size: int,
                     root: str) -> dict:
    """The summary.json of a folder data set (same keys as prepared.summarize, plus format and root)."""
    k = len(classes)
    out = {}
    for name, rows in splits.items():
        counts = torch.bincount(torch.tensor([r[1] for r in rows], dtype=torch.int64), minlength=k).tolist() \
            if rows else [0] * k
        out[name] = {"size": len(rows), "class_counts": counts, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return {"format": "folder", "root": str(root), "num_classes": k, "classes": list(classes),
            "shape": [3, int(image_size), int(image_size)], "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "splits": out}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


def random_resized_crop_box(height: int, width: int, generator: torch.Generator,
                            scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random area fraction in `scale` with a random
    log-uniform aspect ratio in `ratio` (10 tries, then the centre crop clamped to `ratio`),
    the rule of torchvision's RandomResizedCrop with our own generator."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ManifestImages(torch.utils.data.Dataset):
    """uint8 [3, S, S] images of one split, indexed by (sample index, epoch): `train=True` draws a
    random resized crop and flip from a generator seeded by (seed, epoch, index), else resize to
    `resize_size` and centre-crop. Stateless, so persistent workers serve every epoch."""

    def __init__(self, root: str, paths: list[str], labels: list[int], image_size: int, resize_size: int,
                 train: bool, seed: int):
        self.root, self.paths, self.labels = Path(root), paths, labels
        self.image_size, self.resize_size, self.train, self.seed = image_size, resize_size, train, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision.transforms import functional as TF

        index, epoch = key
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as err:
            raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None
        size = [self.image_size, self.image_size]
        if self.train:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            top, left, h, w = random_resized_crop_box(img.height, img.width, g)
            img = TF.resized_crop(img, top, left, h, w, size, antialias=True)
            if bool(torch.rand((), generator=g) < 0.5):
                img = TF.hflip(img)
        else:
            img = TF.center_crop(TF.resize(img, self.resize_size, antialias=True), size)
        return TF.pil_to_tensor(img), self.labels[index]


class _EpochSampler:
    """The batch sampler of a persistent DataLoader: the current epoch's batches of (index, epoch) keys."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class FolderBatches(EpochOrder):
    """Mini-batches of a manifest split through a DataLoader, with `batches.Batches`' interface:
    `epoch(e)` yields (normalised float x on `device`, int64 y), `len()` is batches per epoch, and
    under DDP each rank gets its share of every global batch. Workers are started once (spawned,
    not forked: a forked child must not touch the parent's W&B run) and serve every epoch."""

    images: ManifestImages
    device: torch.device
    mean: list[float]
    std: list[float]
    batch_size: int
    workers: int = 4
    _loader: object = field(default=None, init=False, repr=False, compare=False)
    _sampler: _EpochSampler = field(default_factory=_EpochSampler, init=False, repr=False, compare=False)
    _normalize: Normalize = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._normalize = Normalize(self.mean, self.std, self.device)

    def __len__(self) -> int:
        return batches_per_epoch(len(self.images), self.batch_size, self.drop_last)

    def plain(self) -> "FolderBatches":
        """The same split in order, without augmentation, whole on every rank (BN recalibration)."""
        images = ManifestImages(str(self.images.root), self.images.paths, self.images.labels,
                                self.images.image_size, self.images.resize_size, False, self.seed)
        return replace(self, images=images, shuffle=False, rank=0, world_size=1)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
        self._sampler.batches = [
            [(i, epoch) for i in order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world_size].tolist()]
            for b in range(len(self))]
        pin = self.device.type == "cuda"
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.images, batch_sampler=self._sampler, num_workers=self.workers, pin_memory=pin,
                persistent_workers=self.workers > 0, multiprocessing_context="spawn" if self.workers > 0 else None)
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=pin)
            yield self._normalize(x), y.to(self.device, non_blocking=pin)


def read_manifest(path: str | os.PathLike):
    import pandas as pd

    from .schemas import validate_manifest

    try:
        df = pd.read_csv(path, dtype={"path": str, "label": "int64", "split": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the manifest ({type(err).__name__}: {err})") from None
    return validate_manifest(df)


def load_folder_batches(prepared: Path, summary: dict, cfg: dict, device: torch.device,
                        rank: int, world: int) -> dict[str, FolderBatches]:
    df = read_manifest(prepared / MANIFEST)
    d, t = cfg["data"], cfg["train"]
    root = d["root"] if d.get("root") is not None else summary["root"]
    out = {}
    for name in SPLITS:
        rows = df[df["split"] == name]
        is_train = name == "train"
        images = ManifestImages(root, rows["path"].tolist(), rows["label"].tolist(), d["folder"]["image_size"],
                                d["folder"]["resize_size"], is_train, cfg["seed"])
        out[name] = FolderBatches(images, device, summary["mean"], summary["std"],
                                  batch_size=t["batch_size"] if is_train else t["eval_batch_size"],
                                  shuffle=is_train, drop_last=is_train, seed=cfg["seed"], workers=d.get("workers", 4),
                                  rank=rank if is_train else 0, world_size=world if is_train else 1)
    return out
