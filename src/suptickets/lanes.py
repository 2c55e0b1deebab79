"""Lanes: several training runs in one process, advanced one training step each in turn.

A GPU is filled by several small models at once, not by several processes (processes time-slice
the device; their kernels never overlap). Each lane is a thread running one whole run (its model,
optimizer, masks, data order; on CUDA its own stream, so its kernels may overlap the others'). A
baton lets exactly one lane run at a time: the training loop hands it on once per step
(`train.turn`, a no-op outside lanes), round-robin. Everything a lane does between two hand-offs is
therefore exclusive, and at each hand-off the process-wide state a run reads or changes is swapped
with the lane's own: the global torch RNG (and CUDA's, once initialised), the thread count, and
the working directory (`os.chdir` is process-wide; stages write relative paths). So each lane
computes exactly what the same run alone would, bit for bit.

A lane that raises leaves the rotation with its exit code (a `SystemExit`'s; 130 for an interrupt;
1 for any other exception, whose traceback is printed); the others go on. On CPU lanes are only as
fast as running the runs one after the other: they help where one run leaves the device idle.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import train
from .environment import raise_keyboard_interrupt

log = logging.getLogger("suptickets")


@dataclass
class Context:
    """The process-wide state one lane sees: put back each time it gets the baton."""

    cwd: str
    rng: torch.Tensor
    threads: int
    cuda_rng: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls) -> "Context":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(os.getcwd(), torch.get_rng_state(), torch.get_num_threads(), cuda)

    def restore(self) -> None:
        os.chdir(self.cwd)
        torch.set_rng_state(self.rng)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


@dataclass
class Lane:
    index: int
    name: str
    body: Callable[[], None]
    context: Context
    code: int | None = None  # exit code once finished: 0, or the failure's
    rotation: "Rotation | None" = field(default=None, repr=False)
    stream: object = field(default=None, repr=False)  # on CUDA: the lane's own stream


_current = threading.local()  # .lane: the Lane this thread runs (unset outside lanes)


def current() -> Lane | None:
    return getattr(_current, "lane", None)


class Rotation:
    """The baton: which lane may run now, and the order the others wait in."""

    def __init__(self, lanes: Sequence[Lane]):
        self.cond = threading.Condition()
        self.waiting = [lane.index for lane in lanes]  # lanes still running, in turn order
        self.holder = self.waiting[0] if self.waiting else None
        self.stopping = False

    def acquire(self, lane: Lane) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.holder == lane.index)
        lane.context.restore()
        if self.stopping:
            raise KeyboardInterrupt("lanes interrupted")

    def release(self, lane: Lane, leaving: bool = False) -> None:
        if not leaving:
            lane.context = Context.capture()
        with self.cond:
            i = self.waiting.index(lane.index)
            if leaving:
                self.waiting.remove(lane.index)
                self.holder = self.waiting[i % len(self.waiting)] if self.waiting else None
            else:
                self.holder = self.waiting[(i + 1) % len(self.waiting)]
            self.cond.notify_all()

    def pass_on(self, lane: Lane) -> None:
        """One training step done: the next lane's turn (at once back to this one when it is alone)."""
        if len(self.waiting) > 1 or self.stopping:
            self.release(lane)
            self.acquire(lane)


def _turn() -> None:
    lane = current()
    if lane is not None:
        lane.rotation.pass_on(lane)


class _LaneNames(logging.Filter):
    """Log lines of a lane start with its name."""

    def filter(self, record: logging.LogRecord) -> bool:
        lane = current()
        if lane is not None and not getattr(record, "lane", None):
            record.lane = lane.name
            record.msg = f"{lane.name}: {record.msg}"
        return True


def run(bodies: Sequence[Callable[[], None]], names: Sequence[str]) -> list[int]:
    """Run each body as a lane (thread `names[k]`), one training step each in turn, until all have
    ended; returns their exit codes in order (0: finished). Ctrl-C or SIGTERM stops every lane at
    its next step (exit 130 each; a stage keeps its resume checkpoint of the last finished epoch)."""
    start = Context.capture()
    lanes = [Lane(k, name, body, Context(start.cwd, start.rng.clone(), start.threads, start.cuda_rng))
             for k, (body, name) in enumerate(zip(bodies, names))]
    rotation = Rotation(lanes)
    threads = [threading.Thread(target=_main, args=(lane, rotation), name=lane.name, daemon=True) for lane in lanes]
    names_filter = _LaneNames()
    log.addFilter(names_filter)
    train.turn = _turn
    main = threading.current_thread() is threading.main_thread()
    # a kill (SLURM, DVC) stops them as Ctrl-C
    before = signal.signal(signal.SIGTERM, raise_keyboard_interrupt) if main else None
    try:
        for t in threads:
            t.start()
        while any(lane.code is None for lane in lanes):  # (a join cut by a signal may leave a thread "dead")
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                rotation.stopping = True
        for t in threads:
            t.join()
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)
        train.turn = train.no_turn
        log.removeFilter(names_filter)
        start.restore()
    return [lane.code for lane in lanes]


def _main(lane: Lane, rotation: Rotation) -> None:
    _current.lane = lane
    lane.rotation = rotation
    try:
        rotation.acquire(lane)  # from here on this thread holds the baton except inside pass_on
        if torch.cuda.is_available():  # the current stream is per thread: this lane's own
            lane.stream = torch.cuda.Stream()
            torch.cuda.set_stream(lane.stream)
        lane.body()
        lane.code = 0
    except SystemExit as exit:
        lane.code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except KeyboardInterrupt:
        lane.code = 130
    except BaseException:
        traceback.print_exc()
        lane.code = 1
    finally:
        if lane.stream is not None:
            lane.stream.synchronize()
        rotation.release(lane, leaving=True)
