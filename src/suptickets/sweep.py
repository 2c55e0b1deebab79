"""Hydra multirun sweeps outside DVC (e.g. SLURM through Hydra's submitit launcher): which files a
chain of stages needs from the project, and a job folder that holds them.

A job runs the chain in its own folder (Hydra's `hydra.sweep.dir/<job number>`): the chain's inputs
that no stage of the chain produces (e.g. `data/prepared`) are linked there from the project, and
everything the chain writes stays there. DVC is not involved: nothing of a job is in `dvc.lock`, the
DVC cache or `dvc exp show`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .errors import ConfigError

CODE = ("src/", "stages/")


def stage_paths(entries) -> list[str]:
    """Paths of a dvc.yaml deps/outs/metrics/plots list (plain strings or {path: options})."""
    out = []
    for e in entries or []:
        out.extend([e] if isinstance(e, str) else list(e))
    return out


def writes(spec: Mapping) -> list[str]:
    """The paths a dvc.yaml stage writes: its outs, metrics and plots."""
    return [p for key in ("outs", "metrics", "plots") for p in stage_paths(spec.get(key))]


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (dvc.yaml paths, relative, `/`-separated)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def chain_inputs(stages: Mapping[str, dict], chain: Sequence[str]) -> list[str]:
    """The data and model paths the stages of `chain` (in order) read that no earlier stage of the
    chain writes, from dvc.yaml's `stages` mapping; code dependencies are left out."""
    unknown = [s for s in chain if s not in stages]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; dvc.yaml has {', '.join(stages)}")
    produced: set[str] = set()
    needed: list[str] = []
    for name in chain:
        spec = stages[name]
        for dep in stage_paths(spec.get("deps")):
            if dep.startswith(CODE) or dep in needed:
                continue
            if not any(inside(dep, p) for p in produced):
                needed.append(dep)
        produced.update(writes(spec))
    return needed


def upstream(stages: Mapping[str, dict], targets: Sequence[str]) -> list[str]:
    """`targets` and every stage they read from, directly or not, in dvc.yaml's order (the stages
    `dvc repro TARGET...` runs): a chain that makes `targets` from the project's raw inputs."""
    unknown = [s for s in targets if s not in stages]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; dvc.yaml has {', '.join(stages)}")
    needed = set(targets)
    for name in reversed(list(stages)):  # dvc.yaml lists a stage after the stages it reads from
        if name in needed:
            deps = [d for d in stage_paths(stages[name].get("deps")) if not d.startswith(CODE)]
            needed |= {s for s in stages if any(inside(d, p) or inside(p, d) for d in deps for p in writes(stages[s]))}
    return [s for s in stages if s in needed]


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
