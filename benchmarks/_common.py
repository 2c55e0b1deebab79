"""What the benchmark scripts share. Imported first by each of them: it puts this checkout's
package first on sys.path (and scripts/, for project_copy: the throwaway copy and the `dvc` runner)
and sets the process defaults of `suptickets.environment` (OMP_WAIT_POLICY=PASSIVE, MKL_CBWR=AUTO,
unless set), which only count before torch is imported. Also each script's command line: `parser`
and the options several of them take."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))
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


def parser(doc: str, costs: str, *, details: bool = False, one_line: bool = False) -> argparse.ArgumentParser:
    """A benchmark's command line: the first paragraph of its docstring `doc` as the description
    (joined into one line with `one_line`), and as the epilog what the default run `costs` (after
    the docstring's other paragraphs with `details`)."""
    head, *rest = doc.split("\n\n")
    return argparse.ArgumentParser(description=head.replace("\n", " ") if one_line else head,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n\n".join([*rest, cost(costs)] if details else [cost(costs)]))


def add_threads(ap: argparse.ArgumentParser, default: int, help: str = "torch CPU threads (default %(default)s)") -> None:
    ap.add_argument("--threads", type=int, default=default, help=help)


def add_json(ap: argparse.ArgumentParser, help: str = "also write the figures as JSON to this path") -> None:
    ap.add_argument("--json", type=Path, help=help)
