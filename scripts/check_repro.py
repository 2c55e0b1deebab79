"""The reproducibility check a user runs in their own CI (`make check-repro`).

1. params.yaml is exactly what DVC's Hydra composition of params/ gives (editing params/ alone is
   invisible to `dvc status`).
2. In a throwaway copy of the project, the smoke DAG run twice from scratch (the second time with
   --force and no run cache) gives identical output hashes in dvc.lock.
3. After the run, `dvc status -q` exits 0.
Exits 1 with one line per failure.

    python scripts/check_repro.py [--experiment smoke] [--keep]
    python scripts/check_repro.py --runs RUN_A RUN_B      # compare two finished runs instead (2. and 3.)

`--runs` suits a CI that already ran the pipeline twice (e.g. on two workers): it compares the output
hashes of the two repositories' dvc.lock and their `dvc status`, and checks this project's params.yaml.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from project_copy import compose_params, copy_project, dvc, env_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from suptickets import dvcfiles  # noqa: E402


def out_hashes(repo: Path) -> dict[str, str]:
    return dvcfiles.out_hashes(dvcfiles.lock(repo))


def params_composed(tmp: Path) -> list[str]:
    if (ROOT / "params.yaml").read_text() != compose_params(ROOT, [], tmp / "composed.yaml"):
        return ["params.yaml differs from the composition of params/ (an applied experiment's or a failed "
                "run's settings, or params/ edited): to check the committed pipeline, `git checkout params.yaml "
                "dvc.lock && dvc checkout`; to keep these settings, put them in params/ (a preset), "
                "`dvc exp run`, and commit"]
    return []


def compare(runs: list[dict[str, str]]) -> list[str]:
    """One line per output whose hash differs between the two runs (or exists in one only)."""
    return [f"{key}: {runs[0].get(key)} then {runs[1].get(key)}: not reproducible"
            for key in sorted(set(runs[0]) | set(runs[1])) if runs[0].get(key) != runs[1].get(key)]


def status_clean(repo: Path) -> list[str]:
    status = dvc("status", "-q", cwd=repo, env=env_for(repo))
    return [] if status.returncode == 0 else \
        [f"dvc status -q exited {status.returncode} in {repo} after the run: {status.stdout.strip()}"]


def report(failures: list[str], runs: list[dict[str, str]]) -> int:
    for f in failures:
        print(f"check-repro: FAIL {f}", file=sys.stderr)
    if not failures:
        print(f"check-repro: OK (params.yaml composed; {len(runs[0])} outputs bit-identical over two runs; "
              "dvc status clean)")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smoke", help="params/experiment preset to run twice")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway copy")
    ap.add_argument("--runs", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
                    help="compare these two finished runs (repositories with a dvc.lock) instead of running")
    args = ap.parse_args()
    if args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            failures = params_composed(Path(tmp))
        runs = [out_hashes(repo) for repo in args.runs]
        return report(failures + compare(runs) + [f for repo in args.runs for f in status_clean(repo)], runs)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        failures += params_composed(tmp)
        repo = tmp / "repo"
        copy_project(repo)
        compose_params(repo, [f"experiment={args.experiment}"], repo / "params.yaml")
        runs = []
        for flags in ([], ["--force", "--no-run-cache"]):
            proc = dvc("repro", *flags, cwd=repo, env=env_for(repo))
            if proc.returncode != 0:
                failures.append(f"dvc repro {' '.join(flags)} failed: {proc.stderr.strip().splitlines()[-1:]}")
                break
            runs.append(out_hashes(repo))
            print(f"run {len(runs)}: {len(runs[-1])} outputs hashed")
        if len(runs) == 2:
            failures += compare(runs) + status_clean(repo)
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix="check-repro-"))
            shutil.copytree(repo, kept / "repo", symlinks=True)
            print(f"kept the copy in {kept / 'repo'}")
    return report(failures, runs)


if __name__ == "__main__":
    sys.exit(main())
