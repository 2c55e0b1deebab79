"""The GPU check's processes: each run of the stages (stages/chain.py, no DVC) is a `Job` in its own
folder, its progress read from the epoch lines it logs; the helpers that compare and read them."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# an epoch's log line; a lane's starts with its name, "lane-<k> (<its overrides>): "
EPOCH_LINE = re.compile(r"^(?:lane-(\d+) \([^)]*\): )?\w+ epoch \d+/\d+: loss", re.M)
STARTED: list["Job"] = []  # every job started, so an interrupted check stops them all


@dataclass
class Job:
    name: str
    cmd: list[str]
    cwd: Path
    epochs_total: int = 0
    status: str = "pending"   # pending, running, done, failed, timed_out, cancelled, cut
    rc: int | None = None
    started: float | None = None
    ended: float | None = None
    epoch_times: list[float] = field(default_factory=list)  # when each epoch line was first seen
    proc: subprocess.Popen | None = None
    note: str = ""

    @property
    def out(self) -> Path:
        return self.cwd / "job.out"

    @property
    def err(self) -> Path:
        return self.cwd / "job.err"

    def start(self, env: dict[str, str]) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=env, stdout=out, stderr=err,
                                         start_new_session=True)  # its own group, so a kill reaches its children
        self.started, self.status = time.time(), "running"
        STARTED.append(self)

    def poll(self, now: float) -> bool:
        """Update progress; True when the process has just ended."""
        if self.status != "running":
            return False
        seen = len(EPOCH_LINE.findall(read_text(self.err) + read_text(self.out)))  # (logging writes to stderr)
        self.epoch_times += [now] * (seen - len(self.epoch_times))
        rc = self.proc.poll()
        if rc is None:
            return False
        self.rc, self.ended = rc, now
        self.status = "done" if rc == 0 else "failed"
        return True

    def lane_epochs(self) -> dict[int, int]:
        """Epoch lines logged so far by each lane of a job of lanes."""
        found = EPOCH_LINE.findall(read_text(self.err) + read_text(self.out))
        return {k: sum(f == str(k) for f in found) for k in sorted({int(f) for f in found if f})}

    def stop(self, status: str, note: str = "") -> None:
        if self.status == "running":
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.rc, self.ended = self.proc.returncode, time.time()
        if self.status in ("running", "pending"):
            self.status, self.note = status, note

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else round((self.ended or time.time()) - self.started, 1)

    def record(self) -> dict:
        return {"name": self.name, "status": self.status, "rc": self.rc, "seconds": self.seconds,
                "epochs_done": len(self.epoch_times), "epochs_total": self.epochs_total, "note": self.note,
                "command": " ".join(self.cmd[1:])}

    def error_tail(self, lines: int = 15) -> str:
        text = (read_text(self.err).strip() or read_text(self.out).strip()).splitlines()
        return "\n".join(text[-lines:])


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def seconds_per_epoch(epoch_times: list[float], window: int = 5) -> float | None:
    """The median of a job's last `window` epoch intervals (a stage change inside the window does not
    skew it); None before two epochs."""
    recent = epoch_times[-window - 1:]
    gaps = [b - a for a, b in zip(recent, recent[1:])]
    return statistics.median(gaps) if gaps else None


def predicted_end(epoch_times: list[float], epochs_total: int, tail_s: float) -> float | None:
    """When a job will end: its last epoch time plus the remaining epochs at its recent pace, plus
    `tail_s` for what follows the last epoch (superpose, evaluate); None before two epochs."""
    pace = seconds_per_epoch(epoch_times)
    return None if pace is None else epoch_times[-1] + (epochs_total - len(epoch_times)) * pace + tail_s


def chain_cmd(overrides: list[str], chain: list[str], importtime: bool = False) -> list[str]:
    """The chain of stages in the job's own folder (its working directory: `hydra.run.dir=.`, where
    a run by hand would otherwise open a run folder of its own under outputs/)."""
    return [sys.executable, *(["-X", "importtime"] if importtime else []), str(ROOT / "stages/chain.py"),
            *overrides, f"+chain=[{','.join(chain)}]", "hydra.run.dir=."]


def file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for sub in ("data/prepared", "models", "metrics", "plots"):
        for p in sorted((folder / sub).rglob("*")):
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def imported_top_level(importtime_stderr: str) -> set[str]:
    """Top-level module names in `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


def run_jobs(jobs: list[Job], env: dict, until: float, log: Callable[[str], None], tick: float = 0.5) -> None:
    """Run every job at once; stop those still running at `until` (status timed_out)."""
    for j in jobs:
        j.start(env)
    while any(j.status == "running" for j in jobs):
        now = time.time()
        for j in jobs:
            if j.poll(now):
                log(f"{j.name}: {j.status} (exit {j.rc}) after {j.seconds} s")
        if now > until:
            for j in jobs:
                if j.status == "running":
                    j.stop("timed_out", "stopped at its time limit")
                    log(f"{j.name}: stopped at its time limit after {j.seconds} s")
        time.sleep(tick)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # W&B is off through tracking.wandb.mode=disabled on every command line. WANDB_MODE is removed:
    # when it is set, a stage leaves the mode to wandb itself and imports it, and wandb is not installed
    # on the GPU machine.
    env.pop("WANDB_MODE", None)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])})
    return env
