"""A throwaway copy of the project: what a commit would hold, committed in a fresh git repository
(DVC comes along: .dvc/config is tracked). Shared by tests/conftest.py, scripts/check_repro.py and
benchmarks/pipeline.py; a helper module, not a command.

Dev tooling, so it lives here rather than in the package (which never knows about DVC).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"GIT_AUTHOR_NAME": "copy", "GIT_COMMITTER_NAME": "copy",
            "GIT_AUTHOR_EMAIL": "copy@example.invalid", "GIT_COMMITTER_EMAIL": "copy@example.invalid"}


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
    env = dict(os.environ, **IDENTITY)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "copy of the project"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, text=True)
    return dest


def compose_params(root: Path, overrides: list[str], out: Path) -> str:
    """Write to `out` the params.yaml DVC's Hydra composition of root/params gives; return its text."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(str(out), str(Path(root) / "params"), None, "params", "", overrides)
    return Path(out).read_text()
