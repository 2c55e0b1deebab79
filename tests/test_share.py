"""A team shares results instead of retraining: one clone pushes the outputs, the run cache and its
experiments (`make push`, `dvc exp push`), a colleague's clone pulls them (`make pull`, `dvc exp
pull`) and trains nothing, neither for the committed `dvc.lock` nor for a param set someone already
ran. A throwaway bare git repository stands for the team's git server and a throwaway folder for
the DVC remote (`dvc remote modify --local`, as the README says). `make push` / `make pull` run
scripts/share.py (the test runs it directly: make would set up a venv in the copy)."""

from __future__ import annotations

import hashlib
import re
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


def compare_rows(repo: Path) -> dict[str, list[str]]:
    """`scripts/compare.py --all-commits`: seed -> the row's cells after the experiment's name."""
    lines = run(repo, "python", str(ROOT / "scripts/compare.py"), "--all-commits").stdout.strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[3]: row[1:] for row in cells}


@pytest.mark.e2e
def test_a_colleague_pulls_outputs_run_cache_and_experiments_and_trains_nothing(queued_repo, tmp_path):
    assert "scripts/share.py push" in make_recipe("push") and "scripts/share.py pull" in make_recipe("pull")
    storage, server = tmp_path / "dvc-storage", tmp_path / "origin.git"
    # the one who trained: commits the smoke run (seed 0; seed 1 stays an experiment) and shares it
    mine = copy_repo(queued_repo, tmp_path / "mine")
    run(mine, "git", "add", "-A")
    run(mine, "git", "commit", "-qm", "smoke run")
    run(mine, "dvc", "remote", "modify", "--local", "shared", "url", str(storage))
    run(mine, "python", "scripts/share.py", "push")
    run(tmp_path, "git", "init", "-q", "--bare", str(server))
    run(mine, "git", "remote", "add", "origin", str(server))
    run(mine, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    run(mine, "dvc", "exp", "push", "origin", "--all-commits")

    theirs = tmp_path / "theirs"
    run(tmp_path, "git", "clone", "-q", "-b", "main", str(server), str(theirs))
    run(theirs, "dvc", "remote", "modify", "--local", "shared", "url", str(storage))
    pulled = run(theirs, "python", "scripts/share.py", "pull").stdout
    assert "not on the remote" not in pulled, pulled
    assert "Data and pipelines are up to date" in run(theirs, "dvc", "status").stdout
    repro = run(theirs, "dvc", "repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    assert outputs(theirs) == outputs(mine)
    assert run(theirs, "git", "status", "--porcelain").stdout == ""

    # the experiments, with their outputs: the colleague's table shows what the trainer's shows
    run(theirs, "dvc", "exp", "pull", "origin", "--all-commits")
    shared = compare_rows(mine)
    assert set(shared) >= {"0", "1"}, shared
    assert compare_rows(theirs)["1"] == shared["1"]

    # a param set someone already ran (seed 1): every stage restored from the pulled run cache
    rerun = run(theirs, "dvc", "exp", "run", "-S", "experiment=smoke", "-S", "seed=1")
    restored = re.findall(r"Stage '(\w+)' is cached - skipping run", rerun.stdout)
    assert "Running stage" not in rerun.stdout and sorted(restored) == sorted(STAGES), rerun.stdout
