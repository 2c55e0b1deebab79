"""The official train/test pair of a data set (`Raw`, what `datasets.load_raw` returns) and the
splits carved from it: class-balanced subsets and a stratified, seeded validation split.

Images stay uint8 [N, C, H, W] and labels int64, on disk and in memory; `prepared.py` summarises and
writes the splits, `batches.py` turns them into training inputs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPLITS = ("train", "val", "test")


@dataclass
class Raw:
    """An official train/test pair: x uint8 [N, C, H, W], y int64 [N], class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


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
