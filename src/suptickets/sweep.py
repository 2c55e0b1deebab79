"""Hydra multirun sweeps outside DVC (e.g. SLURM through Hydra's submitit launcher): a job folder
that holds what a chain of stages needs from the project (which files those are:
suptickets.dvcfiles.chain_inputs).

A job runs the chain in its own folder (Hydra's `hydra.sweep.dir/<job number>`): the chain's inputs
that no stage of the chain produces (e.g. `data/prepared`) are linked there from the project, and
everything the chain writes stays there. DVC is not involved: nothing of a job is in DVC's record of
the pipeline, the DVC cache or `dvc exp show`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def link_inputs(project: Path, job_dir: Path, paths: Sequence[str]) -> list[str]:
    """Symlink each path from the project into the job folder; returns the paths that the project
    does not have (the caller decides whether that is an error)."""
    missing = []
    for rel in paths:
        source, target = project / rel, job_dir / rel
        if not source.exists():
            missing.append(rel)
            continue
        if target.is_symlink() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), target, target_is_directory=source.is_dir())
    return missing
