"""What the benchmark scripts share."""

from __future__ import annotations

import os
import statistics


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def busy_warning(threads: int) -> None:
    """Say so when other processes compete for the CPU (timings are then noisy)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores - 0.5:
        hint = (" (OpenMP threads spin-wait for each other); OMP_WAIT_POLICY=PASSIVE in the environment "
                "or --threads 1 is steadier") if threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" else ""
        print(f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU, "
              f"so timings are noisy{hint}")
