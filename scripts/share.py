"""Share runs through the DVC remote (`make push`, `make pull`), so that a colleague trains nothing
that someone already ran.

push: `dvc push --run-cache` (the outputs of dvc.lock and the run cache, DVC's record of every stage
run in this clone, experiments included), then the files those records name that DVC 3.67 leaves
behind: the outputs declared `cache: false` (this project's metrics/*.json). Without them the
receiving DVC finds a stage's record but not all of its files, and trains the stage again.
pull: `dvc pull --run-cache`, then the same files, so that afterwards `dvc repro` of the committed
dvc.lock and `dvc exp run` of any param set in the pulled records restore every stage, offline.

    python scripts/share.py push [-r REMOTE]      # REMOTE: a name from `dvc remote list` (default: the default)
    python scripts/share.py pull [-r REMOTE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvc.repo import Repo
from project_copy import dvc


def run_records(repo: Repo) -> list[tuple[str, str]]:
    """(key, value) of every run-cache record in the local cache."""
    runs = Path(repo.cache.legacy.path) / "runs"
    return sorted((p.parent.name, p.name) for p in runs.glob("*/*/*") if p.is_file())


def record_files(repo: Repo, records: list[tuple[str, str]]) -> set:
    """The hashes of every output the records name (cached or not in dvc.yaml)."""
    used = repo.stage_cache.get_used_objs(records)
    return set().union(*used.values()) if used else set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["push", "pull"])
    parser.add_argument("-r", "--remote", help="a DVC remote's name (default: the default remote)")
    args = parser.parse_args(argv)
    remote = ["-r", args.remote] if args.remote else []
    if dvc(args.command, "--run-cache", *remote, capture=False).returncode != 0:
        return 1
    with Repo() as repo:
        files = record_files(repo, run_records(repo))
        if args.command == "push":
            here = [h for h in files if repo.cache.local.exists(h.value)]
            result = repo.cloud.push(here, remote=args.remote)
            gone = len(files) - len(here)
            print(f"share: {len(result.transferred)} file(s) named by the run records pushed"
                  + (f"; {gone} no longer in this cache (dvc gc?), not shared" if gone else ""))
        else:
            result = repo.cloud.pull(files, remote=args.remote)
            missing = len(result.failed)
            print(f"share: {len(result.transferred)} file(s) named by the run records pulled"
                  + (f"; {missing} not on the remote (those stages will train again)" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
