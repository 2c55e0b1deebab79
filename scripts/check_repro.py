"""The reproducibility check a user runs in their own CI (`make check-repro`).

1. params.yaml is exactly what DVC's Hydra composition of params/ gives (editing params/ alone is
   invisible to `dvc status`).
2. In a throwaway copy of the project, the smoke DAG run twice from scratch (the second time with
   --force and no run cache) gives identical output hashes in dvc.lock.
3. After the run, `dvc status -q` exits 0.
Exits 1 with one line per failure.

    python scripts/check_repro.py [--experiment smoke] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from project_copy import compose_params, copy_project

ROOT = Path(__file__).resolve().parents[1]


def out_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {f"{stage}:{o['path']}": o["md5"] for stage, s in lock["stages"].items() for o in s.get("outs", [])}


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", WANDB_MODE="disabled", PYTHONPATH=str(repo / "src"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smoke", help="params/experiment preset to run twice")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway copy")
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (ROOT / "params.yaml").read_text() != compose_params(ROOT, [], tmp / "composed.yaml"):
            failures.append("params.yaml differs from the composition of params/: run `dvc exp run` "
                            "(or compose) and commit params.yaml")
        repo = tmp / "repo"
        copy_project(repo)
        compose_params(repo, [f"experiment={args.experiment}"], repo / "params.yaml")
        runs = []
        for flags in ([], ["--force", "--no-run-cache"]):
            proc = dvc(repo, "repro", *flags)
            if proc.returncode != 0:
                failures.append(f"dvc repro {' '.join(flags)} failed: {proc.stderr.strip().splitlines()[-1:]}")
                break
            runs.append(out_hashes(repo))
            print(f"run {len(runs)}: {len(runs[-1])} outputs hashed")
        if len(runs) == 2:
            for key in sorted(set(runs[0]) | set(runs[1])):
                if runs[0].get(key) != runs[1].get(key):
                    failures.append(f"{key}: {runs[0].get(key)} then {runs[1].get(key)}: not reproducible")
            status = dvc(repo, "status", "-q")
            if status.returncode != 0:
                failures.append(f"dvc status -q exited {status.returncode} after the run: {status.stdout.strip()}")
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="check-repro-"))
            shutil.copytree(repo, kept / "repo", symlinks=True)
            print(f"kept the copy in {kept / 'repo'}")
    for f in failures:
        print(f"check-repro: FAIL {f}", file=sys.stderr)
    if not failures:
        print(f"check-repro: OK (params.yaml composed; {len(runs[0])} outputs bit-identical over two runs; "
              "dvc status clean)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
