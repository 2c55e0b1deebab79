"""Where a pipeline run stands: `[4/8] warmup — about 2m40s left (last run's times)`, logged when
a stage starts under DVC, and each stage's wall time kept for the next run's estimate.

Under `dvc repro` a stage does not know which other stages DVC will run, so it predicts them from
what it can see (`expected_stages`): the stages after it in dvc.yaml's order (DVC's order for this
DAG) that have an output missing (a fresh clone: all of them), whose params in the composed config
differ from what dvc.lock recorded (`dvc exp run -S ...`), with a dependency file (code) whose md5
differs from dvc.lock's (folders are not hashed, so an edit inside src/suptickets/sparsity alone is
not foreseen), and every stage that reads what an expected stage writes (a rerun changes its
inputs). The numbering is the stage's place in dvc.yaml's order ([4/8]: the
fourth of eight stages), whichever of them run. The estimate adds the last recorded wall time of
each expected stage under the same preset (`name`), from `.cache/suptickets/stage_times.json`
under the repository root (ignored by git, shared by queued experiments); stages never timed are
named instead.

The functions over dvc.yaml / dvc.lock mappings are pure; `StageClock` does the file work.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import yaml

from .artifacts import file_md5, write_json
from .config import get
from .sweep import inside, stage_paths, writes

log = logging.getLogger("suptickets")
TIMES = Path(".cache") / "suptickets" / "stage_times.json"


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


def md5_of_file(path: Path) -> str | None:
    return file_md5(path) if path.is_file() else None


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


def duration(seconds: float) -> str:
    """45s, 2m40s, 1h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(order: Sequence[str], stage: str, expected: Sequence[str], times: Mapping[str, float]) -> str:
    """`[i/n] stage — about T left (last run's times)`: i is the stage's place in `order`, T the sum
    of the last times of the `expected` stages (this one included); stages without a time are named."""
    head = f"[{list(order).index(stage) + 1}/{len(order)}] {stage}"
    known = [s for s in expected if s in times]
    unknown = [s for s in expected if s not in times]
    if not known:
        return f"{head} — no earlier times to estimate what is left ({len(expected)} stage(s) expected)"
    left = f"{head} — about {duration(sum(times[s] for s in known))} left (last run's times"
    return left + (f"; none yet for {', '.join(unknown)})" if unknown else ")")


@dataclass
class StageClock:
    """Logs the progress line when a stage starts, records its wall time when it ends."""

    stage: str
    preset: str
    times_file: Path
    started: float  # the process's start, seconds since the epoch

    @classmethod
    def start(cls, stage: str, cfg: Mapping, root: Path, project: Path = Path(".")) -> "StageClock":
        """`root`: the repository (DVC_ROOT; its .cache keeps the times); `project`: the folder DVC
        runs the stage in (dvc.yaml, dvc.lock; a temporary copy for queued experiments)."""
        import psutil  # (installed with DVC) counted from the process start: imports are part of the wait

        clock = cls(stage, str(cfg.get("name")), Path(root) / TIMES, psutil.Process().create_time())
        stages = yaml.safe_load((Path(project) / "dvc.yaml").read_text())["stages"]
        if stage in stages:
            lock_file = Path(project) / "dvc.lock"
            lock = (yaml.safe_load(lock_file.read_text()) or {}) if lock_file.is_file() else {}
            # only the later stages' code is judged (expected_stages asks nothing else), each file hashed once
            later = set(list(stages)[list(stages).index(stage) + 1:])
            later_lock = {"stages": {k: v for k, v in (lock.get("stages") or {}).items() if k in later}}
            digest = functools.cache(lambda p: md5_of_file(Path(project) / p))
            changed = params_changed(lock, cfg) | deps_changed(later_lock, digest)
            expected = expected_stages(stages, stage, missing=lambda p: not (Path(project) / p).exists(),
                                       changed=changed, recorded=set(lock.get("stages") or {}))
            log.info(progress_line(list(stages), stage, expected, clock.load().get(clock.preset, {})))
        return clock

    def load(self) -> dict:
        try:
            return json.loads(self.times_file.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        times = self.load()
        times.setdefault(self.preset, {})[self.stage] = round(time.time() - self.started, 1)
        write_json(self.times_file, times)
