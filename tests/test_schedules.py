"""Tests of suptickets.schedules: epoch budget split and learning-rate schedules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suptickets.schedules import epoch_split, multistep_lr, triangular_lr


def test_epoch_split_by_hand():
    # E=30, c=0.2, L=2: E*c/L = 3 -> C = 6, M = 3, warmup 24
    assert epoch_split(30, 0.2, 2) == (24, 6, 3)
    # E=250, c=0.1, L=8: 25/8 = 3.125 -> floor 3 -> C = 24, M = 3, warmup 226
    assert epoch_split(250, 0.1, 8) == (226, 24, 3)
    # E=200, c=0.25, L=10: 50/10 = 5 -> C = 50, M = 5, warmup 150
    assert epoch_split(200, 0.25, 10) == (150, 50, 5)


def test_epoch_split_float_guard():
    # 100 * 0.29 = 28.999999999999996 in floating point; by hand it is 29
    assert epoch_split(100, 0.29, 1) == (71, 29, 29)


def test_epoch_split_no_tickets():
    # E=30, c=0.05, L=2: 1.5/2 = 0.75 -> M = 0
    with pytest.raises(ValueError) as err:
        epoch_split(30, 0.05, 2)
    msg = str(err.value)
    for part in ("tickets.cycle_rate", "0.05", "tickets.cycle_epochs", "2", "train.epochs", "30"):
        assert part in msg


def test_epoch_split_no_warmup():
    # E=10, c=1.0, L=2: C = 10 = E -> nothing left for warmup
    with pytest.raises(ValueError) as err:
        epoch_split(10, 1.0, 2)
    msg = str(err.value)
    for part in ("warmup", "tickets.cycle_rate", "tickets.cycle_epochs", "train.epochs", "10"):
        assert part in msg


def test_epoch_split_bad_inputs():
    with pytest.raises(ValueError, match="train.epochs"):
        epoch_split(0, 0.2, 2)
    with pytest.raises(ValueError, match="tickets.cycle_epochs"):
        epoch_split(30, 0.2, 0)


@settings(max_examples=200, deadline=None)
@given(e=st.integers(1, 500), c=st.floats(0.0, 1.0), length=st.integers(1, 20))
def test_epoch_split_properties(e, c, length):
    try:
        warmup, cyclic, m = epoch_split(e, c, length)
    except ValueError:
        return
    assert warmup + cyclic == e and cyclic == m * length and m >= 1 and warmup >= 1
    assert cyclic <= e * c + 1e-6


def test_multistep_lr_by_hand():
    # 250 epochs: milestones floor(125) and floor(187.5) = 187
    lr = lambda ep: multistep_lr(ep, 250, 0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(124) == pytest.approx(0.1)
    assert lr(125) == pytest.approx(0.01)
    assert lr(186) == pytest.approx(0.01)
    assert lr(187) == pytest.approx(0.001)
    assert lr(249) == pytest.approx(0.001)
    # 30 epochs: milestones 15 and floor(22.5) = 22
    assert [multistep_lr(ep, 30, 1.0) for ep in (14, 15, 21, 22)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01]
    )
    # custom milestones and gamma: 10 epochs, milestone floor(0.3 * 10) = 3
    assert multistep_lr(2, 10, 0.5, milestones=(0.3,), gamma=0.5) == pytest.approx(0.5)
    assert multistep_lr(3, 10, 0.5, milestones=(0.3,), gamma=0.5) == pytest.approx(0.25)
    assert multistep_lr(5, 10, 0.5, milestones=()) == pytest.approx(0.5)


def test_triangular_lr_by_hand():
    # 5 steps: t = 0, 1/4, 1/2, 3/4, 1 -> triangle 0, 1/2, 1, 1/2, 0
    got = [triangular_lr(i, 5, 0.001, 0.005) for i in range(5)]
    assert got == pytest.approx([0.001, 0.003, 0.005, 0.003, 0.001])
    assert got[0] == 0.001 and got[-1] == 0.001  # exact at both ends
    # 4 steps: t = 0, 1/3, 2/3, 1 -> 0.001 + 0.004 * 2/3 = 0.0036667 in the middle two
    got = [triangular_lr(i, 4, 0.001, 0.005) for i in range(4)]
    assert got == pytest.approx([0.001, 0.0036666666666666666, 0.0036666666666666666, 0.001])
    assert triangular_lr(0, 1, 0.001, 0.005) == 0.001
    with pytest.raises(ValueError):
        triangular_lr(5, 5, 0.001, 0.005)
    with pytest.raises(ValueError):
        triangular_lr(-1, 5, 0.001, 0.005)
    with pytest.raises(ValueError):
        triangular_lr(0, 0, 0.001, 0.005)
