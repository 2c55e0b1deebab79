"""A throwaway copy of the project: what a commit would hold, committed in a fresh git repository
(DVC comes along: .dvc/config is tracked); the environment commands run in such a copy get
(`env_for`); the one way the tests, scripts and benchmarks run the `dvc` command (`dvc`); and
params.yaml composed as DVC composes it (`compose_params`). Shared by tests/conftest.py,
scripts/check_repro.py, ci_report.py, compare.py, share.py and the benchmarks; a helper module, not a command.

Dev tooling, so it lives here rather than in the package (whose one module that knows DVC,
suptickets.dvcfiles, only reads the pipeline's files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this Python's bin folder: its dvc, python and tools come first


def identity(author: str = "copy") -> dict[str, str]:
    """A git author and committer named `author`, for commits in a copy."""
    return {"GIT_AUTHOR_NAME": author, "GIT_COMMITTER_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author}@example.invalid", "GIT_COMMITTER_EMAIL": f"{author}@example.invalid"}


def env_for(repo: Path, *, wandb: str | None = "disabled", author: str = "copy", bin_dir: Path = BIN) -> dict[str, str]:
    """The environment of commands run in the copy `repo`: `bin_dir` first on PATH, `repo`/src as
    PYTHONPATH, DVC_NO_ANALYTICS=1, a git identity named `author`, WANDB_MODE=`wandb` (None:
    unset, so that W&B does what params.yaml says), and PYTHONDONTWRITEBYTECODE unset."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(Path(repo) / "src")
    if wandb is None:
        env.pop("WANDB_MODE", None)
    else:
        env["WANDB_MODE"] = wandb
    env["DVC_NO_ANALYTICS"] = "1"
    # a copy holds no compiled bytecode of its code: let its first processes write it for the others
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(identity(author))
    return env


def dvc(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, capture: bool = True,
        check: bool = False) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in `cwd` (default: here) with `env` (default: this process's, with this Python's
    bin folder first on PATH), DVC_NO_ANALYTICS=1 either way. `capture`: its stdout and stderr come
    back as text in the result; else they go straight to this process's (a user sees DVC's
    progress). `check`: a failure ends this process with the command and its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") if env is None else dict(env)
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=capture, text=True)
    if check and proc.returncode != 0:
        output = f":\n{proc.stdout}\n{proc.stderr}" if capture else f" (exit {proc.returncode})"
        sys.exit(f"dvc {' '.join(args)} failed{output}")
    return proc


def project_files(root: Path = ROOT) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the project (what a commit would hold)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True, text=True).stdout.splitlines()
    return [f for f in out if f and (root / f).is_file()]


def copy_project(dest: Path, root: Path = ROOT) -> Path:
    """Copy the project's files to `dest` and commit them there in a new git repo (branch main)."""
    dest = Path(dest)
    for f in project_files(root):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)
    env = dict(os.environ, **identity())
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "copy of the project"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, text=True)
    return dest


def compose_params(root: Path, overrides: list[str], out: Path) -> str:
    """Write to `out` the params.yaml DVC's Hydra composition of root/params gives; return its text."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(str(out), str(Path(root) / "params"), None, "params", "", overrides)
    return Path(out).read_text()
