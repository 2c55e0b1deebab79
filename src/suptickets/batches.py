"""Mini-batches on the training device.

A data set that fits in memory lives on the device as uint8 tensors (`Batches`); each epoch's order
and augmentation come from a generator seeded by (seed, epoch), so an epoch is the same whether the
run was interrupted or not, and there is no hidden RNG state to carry. `normalize` and `augment`
turn a batch into training inputs on whatever device it lives on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import torch


def normalize(x_uint8: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(x/255 - mean[c]) / std[c] as float32 on x's device; x is [..., C, H, W]."""
    if x_uint8.dim() < 3:
        raise ValueError(f"normalize expects [..., C, H, W], got {list(x_uint8.shape)}")
    c = x_uint8.shape[-3]
    m = torch.as_tensor(mean, dtype=torch.float32).to(x_uint8.device).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).to(x_uint8.device).reshape(-1, 1, 1)
    if m.shape[0] != c or s.shape[0] != c:
        raise ValueError(f"normalize: {c} channels but {m.shape[0]} means and {s.shape[0]} stds")
    return (x_uint8.to(torch.float32) / 255.0 - m) / s


class Normalize:
    """`normalize` with the constants put on the device once, so a batch costs no host-to-device copy."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str):
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(x_uint8, self.mean, self.std)


def augment(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Random crop (zero padding `padding`, 0 = none) and random horizontal flip of a batch.

    x is [N, C, H, W] of any dtype on any device; the random numbers come from `generator` (crop
    offsets first, then flips: `augment_draws`) on the generator's own device, so results depend only
    on its state, and a generator on x's device (CUDA) makes no host-to-device copy. With padding 0
    and flip False, x itself is returned.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects [N, C, H, W], got {list(x.shape)}")
    return apply_augment(x, augment_draws(x.shape[0], generator, padding, flip, x.device), padding)


def augment_draws(n: int, generator: torch.Generator, padding: int,
                  flip: bool, device: torch.device | str) -> tuple[torch.Tensor | None, ...]:
    """The random numbers of one batch of n: (row offsets, column offsets, flipped), each [n, 1] on
    `device` or None where that augmentation is off, drawn from `generator` in this order."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    gdev = generator.device
    oy = ox = flipped = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=gdev).to(device)
        ox = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=gdev).to(device)
    if flip:
        flipped = (torch.rand((n, 1), generator=generator, device=gdev) < 0.5).to(device)
    return oy, ox, flipped


def apply_augment(x: torch.Tensor, draws: tuple[torch.Tensor | None, ...], padding: int) -> torch.Tensor:
    """The crops and flips of `augment_draws` (one row per image) applied to x [N, C, H, W]."""
    oy, ox, flipped = draws
    if oy is None and flipped is None:
        return x
    n, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    source = x
    if oy is not None:
        rows = rows + oy
        cols = cols + ox
        source = x.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
        source[:, :, padding:padding + h, padding:padding + w] = x
    if flipped is not None:
        cols = torch.where(flipped, cols.flip(1), cols)
    n_idx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    c_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return source[n_idx, c_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


# Images cropped and flipped at once when an epoch is built (`Batches.epoch_batches`): a chunk's
# temporaries (the padded images, the indices) stay a few tens of MB whatever the data set's size.
_CHUNK = 1 << 13


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random source of one epoch (order, augmentation), seeded by (seed, epoch): on the CPU, or
    on the data's CUDA device so that no random number crosses to the device inside a step (a CUDA
    generator with the same seed draws other numbers than the CPU's: results are per machine kind)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


@dataclass(kw_only=True)
class EpochOrder:
    """How a split's mini-batches come, for any source of them (keywords only): shuffled by the
    (seed, epoch) generator or in order, the last partial batch dropped or kept, and under DDP
    each rank taking its share of every (global) batch."""

    shuffle: bool = False
    drop_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1


@dataclass
class Batches(EpochOrder):
    """Mini-batches of a tensor data set held on one device."""

    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    mean: list[float]
    std: list[float]
    batch_size: int
    padding: int = 0
    flip: bool = False
    _normalize: Normalize = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._normalize = Normalize(self.mean, self.std, self.x.device)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return batches_per_epoch(self.x.shape[0], self.batch_size, self.drop_last)

    def plain(self) -> "Batches":
        """The same split in order, without augmentation, whole on every rank (BN recalibration)."""
        return replace(self, shuffle=False, padding=0, flip=False, rank=0, world_size=1)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's mini-batches, normalized, in order (built at once: `epoch_batches`)."""
        return iter(self.epoch_batches(epoch))

    def epoch_batches(self, epoch: int = 0) -> "EpochBatches":
        """The whole epoch built at its start: the order (`randperm`), then each batch's crops and flips
        drawn in turn from the epoch's generator, as batch after batch would draw them, and applied to
        the images in chunks of `_CHUNK`; this rank's share of each batch."""
        n, size = self.x.shape[0], self.batch_size
        steps = len(self)
        g = epoch_generator(self.seed, epoch, self.x.device)
        order = torch.randperm(n, generator=g, device=g.device) if self.shuffle else None
        used = min(n, steps * size)
        idx = order[:used] if order is not None else torch.arange(used, device=self.x.device)
        y = self.y[idx]
        if (self.padding or self.flip) and steps:
            draws = [augment_draws(min(size, used - i * size), g, self.padding, self.flip, self.x.device)
                     for i in range(steps)]
            draws = tuple(None if d[0] is None else torch.cat(d) for d in zip(*draws))
            x = torch.empty((used, *self.x.shape[1:]), dtype=self.x.dtype, device=self.x.device)
            for a in range(0, used, _CHUNK):  # in chunks: the temporaries stay small
                b = min(used, a + _CHUNK)
                x[a:b] = apply_augment(self.x[idx[a:b]], tuple(None if d is None else d[a:b] for d in draws),
                                       self.padding)
        else:
            x = self.x[idx] if order is not None else self.x[:used]
        full = used // size
        xs, ys = x[:full * size].view(full, size, *x.shape[1:]), y[:full * size].view(full, size)
        last = (x[full * size:], y[full * size:]) if used > full * size else None
        if self.world_size > 1:  # the whole batch was drawn, so every rank's RNG agrees
            xs, ys = xs[:, self.rank::self.world_size], ys[:, self.rank::self.world_size]
            last = None if last is None else (last[0][self.rank::self.world_size], last[1][self.rank::self.world_size])
        return EpochBatches(xs, ys, last, self._normalize)


@dataclass(frozen=True)
class EpochBatches:
    """One epoch's mini-batches, built at its start: `x` uint8 [steps, B, C, H, W] (cropped and flipped)
    and `y` [steps, B] hold the full batches, `last` the smaller last one (drop_last off) or None.
    A step takes `batch(i)`; a graphed step would copy `x[i]`, `y[i]` into its static inputs and
    normalize inside the graph."""

    x: torch.Tensor
    y: torch.Tensor
    last: tuple[torch.Tensor, torch.Tensor] | None
    normalize: Normalize

    def __len__(self) -> int:
        return self.x.shape[0] + (self.last is not None)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch i, normalized (float32) with its labels."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch index must be in [0, {len(self)}), got {i}")
        xb, yb = (self.x[i], self.y[i]) if i < self.x.shape[0] else self.last
        return self.normalize(xb), yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.batch(i) for i in range(len(self)))
