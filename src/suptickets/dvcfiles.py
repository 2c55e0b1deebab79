"""The project's reading of DVC's two files, and the only module of the package that reads them:
`dvc.yaml` (the stages: their deps, params, outs, metrics and plots, in DVC's order for this DAG)
and `dvc.lock` (what the last run recorded: each stage's params, dependency and output hashes).

Loading: `stages(project)`, `lock(project)`. The rest are pure functions over those mappings:
- paths: `stage_paths`, `writes`, `inside`, `declared_params`, `out_hashes`;
- chains of stages run outside DVC (suptickets.sweep): `chain_inputs`, `upstream`;
- which stages `dvc repro` is expected to run after a given one (suptickets.progress):
  `params_changed`, `deps_changed`, `expected_stages`, and `expected_run` that reads both files for them.

Running the `dvc` command is not the package's business: scripts/project_copy.py does it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .artifacts import file_md5, parse_yaml
from .config import get
from .errors import ConfigError

DVC_YAML, DVC_LOCK = "dvc.yaml", "dvc.lock"
CODE = ("src/", "stages/")


def stages(project: Path = Path(".")) -> dict:
    """The `stages` mapping of `project`'s dvc.yaml, in its order."""
    return parse_yaml((Path(project) / DVC_YAML).read_text())["stages"]


def lock(project: Path = Path("."), name: str = DVC_LOCK) -> dict:
    """`project`'s dvc.lock (or another file of its format, `name`) as a mapping; {} when there is none."""
    path = Path(project) / name
    return (parse_yaml(path.read_text()) or {}) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------
# paths


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


def declared_params(spec: Mapping) -> list[str]:
    """The params a dvc.yaml stage declares (keys or whole sections of params.yaml; a {file: [keys]}
    entry gives its keys)."""
    return [k for entry in spec.get("params") or [] for k in ([entry] if isinstance(entry, str) else
                                                               [x for v in entry.values() for x in v])]


def out_hashes(recorded: Mapping) -> dict[str, str]:
    """`stage:path` -> md5 of every output a dvc.lock mapping records."""
    return {f"{stage}:{o['path']}": o["md5"] for stage, s in (recorded.get("stages") or {}).items()
            for o in s.get("outs", [])}


# ----------------------------------------------------------------------------------------------
# chains of stages


def _known(stages: Mapping[str, Mapping], names: Sequence[str]) -> None:
    unknown = [s for s in names if s not in stages]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; dvc.yaml has {', '.join(stages)}")


def chain_inputs(stages: Mapping[str, Mapping], chain: Sequence[str]) -> list[str]:
    """The data and model paths the stages of `chain` (in order) read that no earlier stage of the
    chain writes, from dvc.yaml's `stages` mapping; code dependencies are left out."""
    _known(stages, chain)
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


def upstream(stages: Mapping[str, Mapping], targets: Sequence[str]) -> list[str]:
    """`targets` and every stage they read from, directly or not, in dvc.yaml's order (the stages
    `dvc repro TARGET...` runs): a chain that makes `targets` from the project's raw inputs."""
    _known(stages, targets)
    needed = set(targets)
    for name in reversed(list(stages)):  # dvc.yaml lists a stage after the stages it reads from
        if name in needed:
            deps = [d for d in stage_paths(stages[name].get("deps")) if not d.startswith(CODE)]
            needed |= {s for s in stages if any(inside(d, p) or inside(p, d) for d in deps for p in writes(stages[s]))}
    return [s for s in stages if s in needed]


# ----------------------------------------------------------------------------------------------
# what `dvc repro` is expected to run


def reads_from(stages: Mapping[str, Mapping], stage: str, writers: Iterable[str]) -> bool:
    """Whether `stage` depends on a path that one of the `writers` stages writes."""
    made = [m for w in writers for m in writes(stages[w])]
    return any(inside(d, m) or inside(m, d) for d in stage_paths(stages[stage].get("deps")) for m in made)


def params_changed(lock: Mapping, cfg: Mapping) -> set[str]:
    """Stages whose params (as dvc.lock recorded them from params.yaml) differ from `cfg`, plus the
    stages dvc.lock has no record of."""
    recorded = lock.get("stages") or {}
    changed = set()
    for name, entry in recorded.items():
        params = (entry.get("params") or {}).get("params.yaml") or {}
        if any(get(cfg, key) != value for key, value in params.items()):
            changed.add(name)
    return changed


def deps_changed(lock: Mapping, digest: Callable[[str], str | None]) -> set[str]:
    """Stages with a file dependency whose md5 (`digest(path)`, None for a folder or a missing file,
    which are not judged) differs from what dvc.lock recorded."""
    changed = set()
    for name, entry in (lock.get("stages") or {}).items():
        for dep in entry.get("deps") or []:
            now = digest(dep["path"])
            if now is not None and dep.get("md5") is not None and now != dep["md5"]:
                changed.add(name)
    return changed


def expected_stages(stages: Mapping[str, Mapping], stage: str, *, missing: Callable[[str], bool],
                    changed: set[str], recorded: set[str]) -> list[str]:
    """`stage` and the later stages (dvc.yaml order) DVC is expected to run after it: with an output
    `missing`, with `changed` params or code, not `recorded` in dvc.lock at all, or reading what an
    expected stage writes (a rerun changes their inputs)."""
    order = list(stages)
    expected = [stage]
    for s in order[order.index(stage) + 1:]:
        if (s in changed or s not in recorded or any(missing(p) for p in writes(stages[s]))
                or reads_from(stages, s, expected)):
            expected.append(s)
    return expected


def md5_of_file(path: Path) -> str | None:
    return file_md5(path) if path.is_file() else None


def expected_run(project: Path, stage: str, cfg: Mapping) -> tuple[list[str], list[str]] | None:
    """(every stage in dvc.yaml's order, the stages `dvc repro` is expected to run from `stage` on:
    `expected_stages` judged by `project`'s dvc.yaml, dvc.lock and files); None when dvc.yaml has no
    such stage."""
    project = Path(project)
    order = stages(project)
    if stage not in order:
        return None
    recorded = lock(project)
    # only the later stages' code is judged (expected_stages asks nothing else), each file hashed once
    later = set(list(order)[list(order).index(stage) + 1:])
    later_lock = {"stages": {k: v for k, v in (recorded.get("stages") or {}).items() if k in later}}
    digest = functools.cache(lambda p: md5_of_file(project / p))
    changed = params_changed(recorded, cfg) | deps_changed(later_lock, digest)
    expected = expected_stages(order, stage, missing=lambda p: not (project / p).exists(),
                               changed=changed, recorded=set(recorded.get("stages") or {}))
    return list(order), expected
