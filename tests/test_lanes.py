"""Lanes (`suptickets.lanes`): several runs in one process, one training step each in turn, each
bit-identical to the same run alone; a failing lane stops alone. The chain's `+lanes` and
benchmarks/gain.py's `--lanes` run real stages in tests/test_lanes_chain.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from suptickets import lanes, phases, train
from suptickets.errors import TrainingDiverged
from suptickets.models import build_model
from suptickets.sparsity.engine import masks_of

from conftest import ROOT, SMALL, STAGE_ENV, error_lines, run_stage, tree
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


# ----------------------------------------------------------------------------------------------
# stages/chain.py +lanes: real stages, real Hydra, on the small subset (tests/conftest.py's SMALL)

def lanes_arg(*lanes: str) -> str:
    return "+lanes=[" + ",".join(f'"{lane}"' for lane in lanes) + "]"


def chain_alone_and_in_lanes(folder: Path, chain: str, lanes: list[str]) -> tuple[list[dict], list[list[str]],
                                                                                  subprocess.CompletedProcess]:
    """Each lane's overrides as a chain run alone (`alone-<k>/`), then all as lanes of one job
    (`job/lane-<k>/`); returns the alone runs' files and error lines, and the job's process."""
    alone, errors = [], []
    for k, lane in enumerate(lanes):
        proc = run_stage(folder, "chain", chain, *lane.split(), f"hydra.run.dir=alone-{k}")
        alone.append(tree(folder / f"alone-{k}"))
        errors.append(error_lines(proc))
    return alone, errors, run_stage(folder, "chain", chain, lanes_arg(*lanes), "hydra.run.dir=job")


def test_chain_lanes_write_exactly_what_each_chain_alone_writes(tmp_path):
    lanes = ["seed=1", "seed=2 dst.density=0.05 dst.update_frequency=3"]
    alone, errors, proc = chain_alone_and_in_lanes(tmp_path, "+chain=[prepare,sparse_baseline,warmup,tickets]", lanes)
    assert proc.returncode == 0 and errors == [[], []], proc.stderr
    for k in range(2):
        files = tree(tmp_path / "job" / f"lane-{k}")
        assert {"models/tickets/ticket_01.safetensors", "metrics/tickets.json", "plots/warmup.csv",
                ".hydra/config.yaml"} <= set(files)
        assert files == alone[k], k  # models, metrics, history, data, the .hydra record: byte for byte
    assert alone[0]["models/warmup.safetensors"] != alone[1]["models/warmup.safetensors"]
    lines = proc.stdout + proc.stderr
    assert "lane-1 (seed=2 dst.density=0.05 dst.update_frequency=3): tickets: done" in lines
    assert "chain: 2 of 2 lanes finished" in proc.stderr


def test_a_diverging_lane_stops_alone_with_its_one_line_error(tmp_path):
    bad = "train.lr=1e30 dst.update_frequency=1"
    alone, errors, proc = chain_alone_and_in_lanes(tmp_path, "+chain=[prepare,sparse_baseline]", [bad, "seed=1"])
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert line.startswith(f"error: lane-0 ({bad}): sparse_baseline: training diverged (loss nan) at epoch 1, "
                           "step 1, before a topology update; lower train.lr"), proc.stderr
    assert errors == [[line.replace(f"lane-0 ({bad}): ", "")], []]  # the line the same run alone ends with
    assert tree(tmp_path / "job" / "lane-1") == alone[1]
    assert not (tmp_path / "job" / "lane-0" / "models").exists()
    assert f"chain: 1 of 2 lanes finished in {tmp_path / 'job'}/lane-*; failed: lane-0 ({bad}): exit 2" in proc.stderr


def test_each_lane_has_its_own_wandb_runs_named_by_its_overrides(tmp_path):
    from test_tracking import read_wandb_records

    proc = run_stage(tmp_path, "chain", "+chain=[prepare,dense]", lanes_arg("seed=1", "seed=2"), "hydra.run.dir=job",
                     env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr
    small = " ".join(o for o in SMALL if not o.startswith("experiment="))
    for k in range(2):
        names = set()
        for r in (tmp_path / "job" / f"lane-{k}" / "wandb").glob("offline-run-*"):
            records = read_wandb_records(next(r.glob("*.wandb")))
            names.add(next(rec.run.display_name for rec in records if rec.HasField("run")))
        assert names == {f"smoke {small} seed={k + 1} · {s}" for s in ("prepare", "dense")}  # not +lanes=[...]


def test_sigterm_stops_every_lane_which_then_resumes_in_its_folder(tmp_path):
    """Killed once a lane has a resume checkpoint, every lane stops at its next step (exit 130); the
    same command with hydra.run.dir of the job goes on and ends with the same files as runs alone."""
    import signal
    import time

    chain, lanes = "+chain=[prepare,sparse_baseline]", lanes_arg("seed=1", "seed=2")
    args = [sys.executable, str(ROOT / "stages/chain.py"), *SMALL, "train.epochs=40", chain, lanes, "hydra.run.dir=job"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=STAGE_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while not list(tmp_path.glob("job/lane-*/.cache/suptickets/resume/*/state.safetensors")) and time.time() - start < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert sorted(line for line in err.splitlines() if line.startswith("error: ")) == [
        f"error: lane-{k} (seed={k + 1}): sparse_baseline: interrupted; rerun the stage to resume from its last "
        "finished epoch" for k in range(2)], err
    assert not list(tmp_path.glob("job/lane-*/models/sparse_baseline.safetensors"))
    again = subprocess.run(args, cwd=tmp_path, env=STAGE_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming after epoch" in again.stdout + again.stderr, again.stderr
    for k in range(2):
        alone = run_stage(tmp_path, "chain", "train.epochs=40", chain, f"seed={k + 1}", f"hydra.run.dir=alone-{k}")
        assert alone.returncode == 0, alone.stderr
        files = tree(tmp_path / "job" / f"lane-{k}")
        for name in ("models/sparse_baseline.safetensors", "metrics/sparse_baseline.json", "plots/sparse_baseline.csv"):
            assert files[name] == tree(tmp_path / f"alone-{k}")[name], (k, name)


@pytest.mark.parametrize("value, says", [
    ("+lanes=[]", "+lanes=[]: expected a list of quoted strings, one per lane"),
    ("+lanes=3", "+lanes=3: expected a list of quoted strings"),
    (lanes_arg("seed=1", "dst.densty=0.1"), "+lanes: lane-1 (dst.densty=0.1): dst.densty: unknown key; did you mean dst.density?"),
    (lanes_arg("seed=1 dst=rigel"), "+lanes: lane-0 (seed=1 dst=rigel): In 'params': Could not find 'dst/rigel'"),
    (lanes_arg("seed=1", "train.lr=-1"), "+lanes: lane-1 (train.lr=-1): train.lr=-1: expected a number > 0"),
    (lanes_arg("seed"), "+lanes: lane-0 (seed): seed: expected key=value"),
    (lanes_arg("+chain=[dense]"), "+lanes: lane-0 (+chain=[dense]): +chain=[dense]: the job's, not a lane's to set"),
])
def test_bad_lanes_are_one_line_before_any_work(tmp_path, value, says):
    proc = run_stage(tmp_path, "chain", "+chain=[prepare,dense]", value)
    assert proc.returncode == 2 and error_lines(proc) == [line for line in error_lines(proc) if says in line] \
        and len(error_lines(proc)) == 1, proc.stderr
    assert error_lines(proc)[0].startswith(f"error: chain: {says}"), proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------------------------
# benchmarks/gain.py --lanes: a grid's runs N to a process, tabulated from their folders

def gain_py(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/gain.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=STAGE_ENV)


def test_gain_lanes_runs_the_grid_in_lane_folders_and_tabulates_them(tmp_path):
    grid = ["--densities", "0.1", "0.05", "--seeds", "2", "--prefix", "t", "--lanes", "3",
            *[a for o in SMALL for a in ("-S", o)]]
    proc = gain_py(tmp_path, *grid, "--json", "gain.json")
    assert proc.returncode == 0, proc.stderr
    folders = json.loads((tmp_path / ".gain/t/runs.json").read_text())
    assert sorted(folders) == [f"t-{d}-s{s}" for d in ("0.05", "0.1") for s in (0, 1)]
    assert folders["t-0.05-s0"] == ".gain/t/part-0/lane-2" and folders["t-0.05-s1"] == ".gain/t/part-1/lane-0"
    cells = json.loads((tmp_path / "gain.json").read_text())["cells"]
    for name, folder in folders.items():
        metrics = json.loads((tmp_path / folder / "metrics/evaluate.json").read_text())
        d, s = name.split("-")[1], name.rsplit("-s", 1)[1]
        assert metrics["target_density"] == float(d)
        assert cells[d]["runs"][s]["superposed"] == metrics["test_acc"]["superposed"]
    assert [c["n"] for c in cells.values()] == [2, 2]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 0.")]
    assert len(table) == 2 and table[0].startswith("| 0.1 | 2 |")
    again = gain_py(tmp_path, *grid, "--collect-only")  # the same table from the folders, nothing run
    assert [line for line in again.stdout.splitlines() if line.startswith("| 0.")] == table


def test_gain_lanes_refuses_a_bad_number_in_one_line(tmp_path):
    proc = gain_py(tmp_path, "--lanes", "0")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: --lanes 0: expected a number of runs per process, 1 or more"]
    assert not list(tmp_path.iterdir())


@pytest.mark.e2e
def test_a_submitit_sweep_over_lane_lists_runs_each_list_as_one_job(tmp_path):
    proc = run_stage(tmp_path, "chain", "-m", "hydra/launcher=submitit_local", *SMALL, "+chain=[prepare,dense]",
                     '+lanes=["seed=0","seed=1"],["seed=2"]', "hydra.sweep.dir=sweep", small=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lanes = sorted(p.relative_to(tmp_path / "sweep").as_posix() for p in (tmp_path / "sweep").glob("*/lane-*"))
    assert lanes == ["0/lane-0", "0/lane-1", "1/lane-0"], proc.stderr
    seeds = [[o for o in yaml.safe_load((tmp_path / "sweep" / lane / ".hydra/overrides.yaml").read_text())
              if o.startswith("seed=")] for lane in lanes]
    assert seeds == [["seed=0"], ["seed=1"], ["seed=2"]]
    assert all((tmp_path / "sweep" / lane / "models/dense.safetensors").is_file() for lane in lanes)
