"""Process-wide defaults that only take effect when set before `import torch` (so this module
never imports torch): stages/_stage.py and benchmarks/_common.py apply them in their first lines,
and every process they start (torchrun ranks, DataLoader workers, submitit jobs) inherits them.

- OMP_WAIT_POLICY=PASSIVE: an OpenMP thread that waits for its team sleeps instead of spinning.
  With torch's default (spin-wait) a 2-core machine shared with another busy process makes each
  step up to 10x slower; passive waiting costs a little on a quiet machine and nothing in the
  results (the thread count stays fixed by the `threads` setting).
- MKL_CBWR=AUTO: MKL's conditional numerical reproducibility (CNR) on the machine's best code
  path, so a matrix product's bits no longer depend on where its operands sit in memory. Without
  it, on the development machine (AMD EPYC, torch 2.14.1's MKL 2024.2), a [1000, 100] x [100, 10]
  product (the default MLP's last layer at eval batch 1000) gave 4 different results over 16
  input offsets and the evaluation's loss changed in its last bit; with AUTO every offset gives the
  same bits. It changes which kernels run, hence the numbers (once), and costs about 5-10% of an
  MLP training step here. CNR holds per machine kind, for a fixed thread count.

A variable the user already set is left as it is.

One signal handler too: a stage, and the lanes of `chain.py +lanes`, let SIGTERM (a kill from
SLURM or DVC) stop a run as Ctrl-C does, so it ends the same way (exit 130, resume checkpoint kept).
"""

from __future__ import annotations

import os
import signal
from typing import MutableMapping

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "MKL_CBWR": "AUTO"}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of DEFAULTS the environment does not already hold; returns the ones set."""
    added = {k: v for k, v in DEFAULTS.items() if k not in environ}
    environ.update(added)
    return added


def raise_keyboard_interrupt(signum, frame) -> None:
    """A signal handler (`signal.signal(signal.SIGTERM, raise_keyboard_interrupt)`): the signal
    raises KeyboardInterrupt, named after it."""
    raise KeyboardInterrupt(signal.Signals(signum).name)
