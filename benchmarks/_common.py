"""What the benchmark scripts share. Imported first by each of them: it puts this checkout's
package first on sys.path and sets the process defaults of `suptickets.environment`
(OMP_WAIT_POLICY=PASSIVE, MKL_CBWR=AUTO, unless set), which only count before torch is imported."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from suptickets.environment import apply_defaults  # noqa: E402

apply_defaults()


def cost(text: str) -> str:
    """The --help epilog that states what the default run costs, wrapped for a terminal."""
    return textwrap.fill("Cost: " + text, 100)


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


def dvc(*args: str, check: bool = True) -> str:
    """Run the `dvc` command in the current directory and return its stdout; exit with its output on failure."""
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if check and proc.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
