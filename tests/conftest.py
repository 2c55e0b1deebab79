"""Shared fixtures: a throwaway git + DVC copy of the project, and a runner for its commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "scripts"))
from project_copy import copy_project  # noqa: E402


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")
    env.pop("WANDB_MODE", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return env


def run(repo: Path, *cmd: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=env_for(repo), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_repo(dest: Path) -> Path:
    """A fresh git repo holding the project's files, committed, with DVC initialised as in the project."""
    return copy_project(dest)


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory) -> Path:
    """The project copied into a new repo, after `dvc exp run -S experiment=smoke`."""
    repo = make_repo(tmp_path_factory.mktemp("smoke") / "repo")
    proc = run(repo, "dvc", "exp", "run", "-S", "experiment=smoke")
    (repo / "exp_run.log").write_text(proc.stdout + proc.stderr)
    shutil.copy(repo / "metrics/evaluate.json", repo / "first_evaluate.json")  # before other tests change it
    return repo
