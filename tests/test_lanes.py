"""Lanes (`suptickets.lanes`): several runs in one process, one training step each in turn, each
bit-identical to the same run alone; a failing lane stops alone. The chain's `+lanes` and
benchmarks/gain.py's `--lanes` run real stages in tests/test_lanes_chain.py."""

from __future__ import annotations

import os

import torch

from suptickets import lanes, phases, train
from suptickets.errors import TrainingDiverged
from suptickets.models import build_model
from suptickets.sparsity.engine import masks_of

from test_engine import CLASSES, SHAPE, toy_data
from test_train import cfg

TURNS: list[str] = []


def dst_run(seed: int, lr: float, folder=None) -> dict:
    """A RigL phase of 3 epochs from `seed` that also draws from the global RNG and changes the
    working directory between steps (a lane must see its own of both): its weights, masks, history."""
    torch.manual_seed(seed)
    model = build_model("mlp", SHAPE, CLASSES, hidden=[32, 16])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    train_batches, val = toy_data(seed=seed)
    data = {"train": train_batches, "val": val}
    draws, rows = [], []
    if folder is not None:
        os.chdir(folder)

    def on_epoch(row: dict) -> None:
        draws.append(torch.rand(1).item())  # the global RNG, between steps
        rows.append({**row, "cwd": os.getcwd()})
        TURNS.append(f"{seed}:{row['epoch']}")

    c = cfg(seed=seed)
    c["train"]["lr"] = lr
    phases.sparse_phase(model, opt, data, c, epochs=3, on_epoch=on_epoch, stage="sparse_baseline",
                        flops=phases.FlopsMeter(model, SHAPE, "rigl", 4))
    return {"state": model.state_dict(), "masks": {k: m.clone() for k, m in masks_of(model).items()},
            "rows": rows, "draws": draws}


def same(a: dict, b: dict) -> bool:
    return (a["rows"] == b["rows"] and a["draws"] == b["draws"] and a["masks"].keys() == b["masks"].keys()
            and all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]))


def test_lanes_are_bit_identical_to_each_run_alone_and_take_turns(tmp_path):
    folders = [tmp_path / f"lane-{k}" for k in range(3)]
    for f in folders:
        f.mkdir()
    here = os.getcwd()
    runs = [(1, 0.05), (2, 0.05), (3, 0.02)]
    alone = []
    for (seed, lr), folder in zip(runs, folders):
        alone.append(dst_run(seed, lr, folder))
        os.chdir(here)
    TURNS.clear()
    out: dict[int, dict] = {}
    codes = lanes.run([lambda k=k, s=s, lr=lr, f=f: out.__setitem__(k, dst_run(s, lr, f))
                       for k, ((s, lr), f) in enumerate(zip(runs, folders))], ["lane-0", "lane-1", "lane-2"])
    assert codes == [0, 0, 0]
    assert os.getcwd() == here and train.turn is train.no_turn  # the process is as before
    assert all(same(out[k], alone[k]) for k in range(3))
    assert [r["cwd"] for r in out[2]["rows"]] == [str(folders[2])] * 3
    assert out[0]["draws"] != out[1]["draws"]  # the global RNG is each lane's own, not one shared stream
    # they advanced together: every lane finished its first epoch before any finished its last
    assert max(TURNS.index(f"{s}:1") for s, _ in runs) < min(TURNS.index(f"{s}:3") for s, _ in runs), TURNS


def test_a_lane_that_fails_stops_alone_with_its_code(capsys):
    alone = dst_run(2, 0.05)

    def diverge() -> None:
        try:
            dst_run(1, 1e30)
        except TrainingDiverged as err:  # as a stage ends on a project error: its line, exit 2
            print(f"error: {err}")
            raise SystemExit(2)

    out: dict[int, dict] = {}
    codes = lanes.run([diverge, lambda: out.__setitem__(1, dst_run(2, 0.05)),
                       lambda: 1 / 0], ["lane-0", "lane-1", "lane-2"])
    assert codes == [2, 0, 1]
    assert same(out[1], alone)
    printed = capsys.readouterr()
    assert "error: sparse_baseline: training diverged" in printed.out
    assert "ZeroDivisionError" in printed.err  # not a project error: its traceback is kept
