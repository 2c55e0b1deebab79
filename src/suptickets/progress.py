"""Where a pipeline run stands: `[4/10] warmup — about 4m07s left (last run's times)`, logged when
a stage starts under DVC, and each stage's wall time kept for the next run's estimate.

Under `dvc repro` a stage does not know which other stages DVC will run, so it predicts them from
what it can see (suptickets.dvcfiles.expected_run): the later stages of the pipeline (in DVC's order
for this DAG) that have an output missing (a fresh clone: all of them), whose params in the composed
config differ from what the last run recorded (`dvc exp run -S ...`), with a dependency file (code)
whose md5 differs from the recorded one (folders are not hashed, so an edit inside
src/suptickets/sparsity alone is not foreseen), and every stage that reads what an expected stage
writes (a rerun changes its inputs). The numbering is the stage's place in the pipeline's order
([4/10]: the fourth of ten stages), whichever of them run. The estimate adds the last recorded wall
time of each expected stage under the same preset (`name`), from `.cache/suptickets/stage_times.json`
under the repository root (ignored by git, shared by queued experiments); stages never timed are
named instead.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .artifacts import write_json
from .dvcfiles import expected_run

log = logging.getLogger("suptickets")
TIMES = Path(".cache") / "suptickets" / "stage_times.json"


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
        runs the stage in (the pipeline's files; a temporary copy for queued experiments)."""
        import psutil  # (installed with DVC) counted from the process start: imports are part of the wait

        clock = cls(stage, str(cfg.get("name")), Path(root) / TIMES, psutil.Process().create_time())
        run = expected_run(project, stage, cfg)
        if run is not None:
            order, expected = run
            log.info(progress_line(order, stage, expected, clock.load().get(clock.preset, {})))
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
