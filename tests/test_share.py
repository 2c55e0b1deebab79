"""A team shares results instead of retraining: one clone pushes the outputs, the run cache and its
experiments (`make push`, `dvc exp push`), a colleague's clone pulls them (`make pull`, `dvc exp
pull`) and trains nothing, neither for the committed `dvc.lock` nor for a param set someone already
ran. A throwaway bare git repository stands for the team's git server and a throwaway folder for
the DVC remote (`dvc remote modify --local`, as the README says). `make push` / `make pull` run
scripts/share.py (the test runs it directly: make would set up a venv in the copy)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, copy_repo, run

STAGES = ["prepare", "dense", "sparse_baseline", "warmup", "tickets", "superpose", "export", "evaluate",
          "report", "landscape"]


def make_recipe(target: str) -> str:
    return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file under models/ and of reports/summary.md."""
    files = [p for p in sorted((repo / "models").rglob("*")) if p.is_file()] + [repo / "reports/summary.md"]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def compare_rows(repo: Path) -> set[tuple[str, ...]]:
    """`make compare`'s table (scripts/compare.py): each row's cells, the workspace's left out."""
    lines = run(repo, "python", str(ROOT / "scripts/compare.py")).stdout.strip().splitlines()
    cells = [tuple(c.strip() for c in line.strip("|").split("|")) for line in lines[2:]]
    return {row for row in cells if not row[0].startswith("workspace")}


@pytest.mark.e2e
def test_a_colleague_pulls_outputs_run_cache_and_experiments_and_trains_nothing(queued_repo, tmp_path):
    assert "scripts/share.py push" in make_recipe("push") and "scripts/share.py pull" in make_recipe("pull")
    assert "scripts/compare.py" in make_recipe("compare")
    storage, server = tmp_path / "dvc-storage", tmp_path / "origin.git"
    mine = copy_repo(queued_repo, tmp_path / "mine")  # the one who trained: two experiments, RigL and GraNet
    run(mine, "dvc", "remote", "modify", "--local", "shared", "url", str(storage))
    run(tmp_path, "git", "init", "-q", "--bare", str(server))
    run(mine, "git", "remote", "add", "origin", str(server))
    run(mine, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    run(mine, "dvc", "exp", "push", "origin", "--all-commits")  # code, params, metrics as git refs; outputs to DVC

    # a colleague on the same commit pulls the experiments: `make compare` shows what the trainer's shows
    theirs = tmp_path / "theirs"
    run(tmp_path, "git", "clone", "-q", "-b", "main", str(server), str(theirs))
    run(theirs, "dvc", "remote", "modify", "--local", "shared", "url", str(storage))
    run(theirs, "dvc", "exp", "pull", "origin", "--all-commits")
    shared = compare_rows(mine)
    assert {row[1] for row in shared} >= {"rigl", "granet"}, shared
    assert compare_rows(theirs) == shared

    # the trainer commits the smoke run (seed 0) and pushes it with the run cache; the colleague pulls
    run(mine, "git", "add", "-A")
    run(mine, "git", "commit", "-qm", "smoke run")
    run(mine, "python", "scripts/share.py", "push")
    run(mine, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    run(theirs, "git", "pull", "-q", "origin", "main")
    pulled = run(theirs, "python", "scripts/share.py", "pull").stdout
    assert "not on the remote" not in pulled, pulled
    assert "Data and pipelines are up to date" in run(theirs, "dvc", "status").stdout
    repro = run(theirs, "dvc", "repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    assert outputs(theirs) == outputs(mine)
    assert run(theirs, "git", "status", "--porcelain").stdout == ""

    # a param set someone already ran (GraNet at 0.02): every stage it does not share with the
    # committed run restored from the pulled run cache; the two it shares (prepare, dense), their
    # outputs deleted, restored from it by `dvc repro`
    rerun = run(theirs, "dvc", "exp", "run", "-S", "experiment=smoke", "-S", "dst=granet", "-S", "dst.density=0.02")
    restored = re.findall(r"Stage '(\w+)' is cached - skipping run", rerun.stdout)
    assert "Running stage" not in rerun.stdout and sorted(restored) == sorted(STAGES[2:]), rerun.stdout
    shutil.rmtree(theirs / "data/prepared")
    (theirs / "models/dense.safetensors").unlink()
    repro = run(theirs, "dvc", "repro")
    restored = re.findall(r"Stage '(\w+)' is cached - skipping run", repro.stdout)
    assert "Running stage" not in repro.stdout and restored == STAGES[:2], repro.stdout
