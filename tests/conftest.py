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


# ----------------------------------------------------------------------------------------------
# stage scripts run by hand (outside DVC), on a small subset

SMALL = ["experiment=smoke", "data.limit_train=200", "data.limit_test=50", "threads=1", "device=cpu"]
STAGE_ENV = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "src"),
             "OMP_WAIT_POLICY": "PASSIVE"}


def run_stage(cwd: Path, name: str, *args: str, small: bool = True, env: dict | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    """`python stages/<name>.py [SMALL] args...` in `cwd`, as a user would run it by hand."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *(SMALL if small else []), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**STAGE_ENV, **(env or {})})


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The `error: <stage>: ...` lines of a stage's stderr (its log lines go there too)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links followed) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory) -> Path:
    """data/prepared of the SMALL settings, made by the real prepare stage (written in place)."""
    folder = tmp_path_factory.mktemp("prepared")
    proc = run_stage(folder, "prepare", "hydra.run.dir=.")
    assert proc.returncode == 0, proc.stderr
    return folder / "data" / "prepared"
