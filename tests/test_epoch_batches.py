"""Epoch-level batches (issue #21 §2): `Batches.epoch_batches` builds an epoch at its start; its
batches must be those the per-step loop drew before, bit for bit: same order, crops and flips."""

from __future__ import annotations

import pytest
import torch

from suptickets.batches import Batches, augment, epoch_generator


def per_step_epoch(b: Batches, epoch: int):
    """`Batches.epoch` as it was before #21: each batch indexed, augmented and normalized in turn."""
    n = b.x.shape[0]
    g = epoch_generator(b.seed, epoch, b.x.device)
    order = torch.randperm(n, generator=g, device=g.device) if b.shuffle else None
    for i in range(len(b)):
        sl = slice(i * b.batch_size, (i + 1) * b.batch_size)
        idx = order[sl] if order is not None else sl
        xb, yb = b.x[idx], b.y[idx]
        if b.padding or b.flip:
            xb = augment(xb, g, b.padding, b.flip)
        if b.world_size > 1:
            xb, yb = xb[b.rank::b.world_size], yb[b.rank::b.world_size]
        yield b._normalize(xb), yb


def data(n: int, shape=(3, 9, 7), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle,padding,flip", [(True, 2, True), (True, 0, True), (True, 3, False),
                                                  (False, 0, False), (False, 1, True)])
@pytest.mark.parametrize("n,batch_size", [(100, 16), (96, 16), (10, 16), (7, 1)])
def test_epoch_batches_are_the_per_step_batches(drop_last, shuffle, padding, flip, n, batch_size):
    x, y = data(n)
    for seed in [0, 5]:
        b = Batches(x, y, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25], batch_size=batch_size, shuffle=shuffle,
                    drop_last=drop_last, seed=seed, padding=padding, flip=flip)
        for epoch in [0, 1, 7]:
            built = b.epoch_batches(epoch)
            want = list(per_step_epoch(b, epoch))
            got = list(built)
            assert len(got) == len(want) == len(b) == len(built)
            for (gx, gy), (wx, wy) in zip(got, want):
                assert gx.dtype == torch.float32 and torch.equal(gx, wx) and torch.equal(gy, wy)
            assert [tuple(t.shape) for t, _ in got] == [tuple(t.shape) for t, _ in want]
            assert built.x.shape == (n // batch_size, batch_size, 3, 9, 7) and built.x.dtype == torch.uint8
            assert (built.last is None) == (drop_last or n % batch_size == 0)
            assert [torch.equal(a, c) for (a, _), (c, _) in zip(b.epoch(epoch), want)] == [True] * len(want)


def test_an_epoch_longer_than_one_augmentation_chunk_is_the_per_step_epoch():
    from suptickets.batches import _CHUNK

    x, y = data(_CHUNK + 300, shape=(1, 4, 4))  # a chunk boundary inside a batch of 100
    b = Batches(x, y, [0.5], [0.25], batch_size=100, shuffle=True, seed=2, padding=1, flip=True)
    got, want = list(b.epoch_batches(3)), list(per_step_epoch(b, 3))
    assert len(got) == len(want) == 85  # 84 full batches and a last one of 92
    assert all(torch.equal(a, c) and torch.equal(p, q) for (a, p), (c, q) in zip(got, want))


def test_the_epochs_differ_and_the_augmentation_is_drawn():
    x, y = data(64)
    b = Batches(x, y, [0.5] * 3, [0.25] * 3, batch_size=16, shuffle=True, seed=1, padding=2, flip=True)
    e0, e1 = b.epoch_batches(0), b.epoch_batches(1)
    assert not torch.equal(e0.x, e1.x)
    plain = b.plain().epoch_batches(0)
    assert torch.equal(plain.x.reshape(64, 3, 9, 7), x) and torch.equal(plain.y.reshape(-1), y)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_rank_takes_its_share_of_the_same_batches(rank):
    x, y = data(50)
    b = Batches(x, y, [0.5] * 3, [0.25] * 3, batch_size=12, shuffle=True, seed=3, padding=1, flip=True,
                rank=rank, world_size=3)
    want = list(per_step_epoch(b, 2))
    got = list(b.epoch_batches(2))
    assert len(got) == len(want) == 5
    assert all(torch.equal(a, c) and torch.equal(p, q) for (a, p), (c, q) in zip(got, want))


def test_a_batch_index_out_of_range_is_refused():
    x, y = data(20)
    built = Batches(x, y, [0.5] * 3, [0.25] * 3, batch_size=8).epoch_batches(0)
    assert len(built) == 3
    with pytest.raises(IndexError, match=r"batch index must be in \[0, 3\), got 3"):
        built.batch(3)
