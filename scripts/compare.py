"""One readable row per DVC experiment (`make compare`): the DST method, density, seed and cyclic
lr_max of each, the test accuracy (%) of superposed, sparse_baseline, the best ticket, the tickets'
ensemble and dense, and the superposed model's gains in points.

Reads `dvc exp show --json` of the repository it runs in: the baseline commit (HEAD, or every
commit with --all-commits), its experiments, and the workspace when it differs from all of them.
The figures come from each experiment's metrics/summary.json (the evaluate stage), or, for runs
made before that file existed, from metrics/evaluate.json through the same function.

    python scripts/compare.py                 # HEAD and its experiments
    python scripts/compare.py --all-commits   # experiments of every commit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from suptickets.comparison import GAINS, MODELS, summary  # noqa: E402
from suptickets.config import get  # noqa: E402

SETTINGS = {"method": "dst.method", "density": "dst.density", "seed": "seed", "lr_max": "tickets.lr_max"}
HEADER = ["experiment", *SETTINGS, *(f"{m} %" for m in MODELS), "gain vs sparse_baseline (pts)",
          "gain vs best ticket (pts)"]


def _figures(metrics: Mapping, method) -> dict:
    """The run's summary.json, else the same built from its evaluate.json, else {}."""
    data = lambda path: (metrics.get(path) or {}).get("data") or {}  # noqa: E731
    if data("metrics/summary.json"):
        return data("metrics/summary.json")
    evaluate = data("metrics/evaluate.json")
    return summary(evaluate, method) if evaluate.get("test_acc") else {}


def _revisions(shown: list) -> Iterator[tuple[str, dict]]:
    """(label, data) of every revision in `dvc exp show --json`: the workspace, baseline commits and
    their experiments (labelled with their state while queued, running or failed)."""
    for commit in shown:
        rev = str(commit.get("rev", ""))
        if commit.get("data"):
            yield commit.get("name") or (rev if rev == "workspace" else rev[:7]), commit["data"]
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for r in exp.get("revs") or []:
                if r.get("data"):
                    label = r.get("name") or exp.get("name") or str(r.get("rev", ""))[:7]
                    yield label + (f" ({state})" if state and state != "success" else ""), r["data"]


def rows(shown: list) -> list[dict]:
    """One row per revision with params: settings, accuracies (%) and gains (points); None where a
    figure is missing. The workspace row is dropped when another row has the same values."""
    out = []
    for label, data in _revisions(shown):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        if not params:
            continue
        row = {"experiment": label, **{k: get(params, key) for k, key in SETTINGS.items()}}
        figures = _figures(data.get("metrics") or {}, row["method"])
        row.update({m: (figures.get("test_acc_pct") or {}).get(m) for m in MODELS})
        row.update({g: (figures.get("gain_pts") or {}).get(g) for g in GAINS})
        out.append(row)
    values = lambda r: {k: v for k, v in r.items() if k != "experiment"}  # noqa: E731
    return [r for r in out if r["experiment"] != "workspace"
            or not any(values(r) == values(o) for o in out if o is not r)]


def _cell(key: str, value) -> str:
    if value is None:
        return "—"
    if key in GAINS:
        return f"{value:+.2f}"
    if key in MODELS:
        return f"{value:.2f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(k, r[k]) for k in r) + " |" for r in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    args = ap.parse_args(argv)
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if args.all_commits else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if proc.returncode != 0:
        print(f"error: {' '.join(cmd)} failed: {proc.stderr.strip()}", file=sys.stderr)
        return 2
    table = rows(json.loads(proc.stdout))
    if not table:
        print("error: no experiments with params to compare here; run `dvc exp run` (or `dvc repro`) first",
              file=sys.stderr)
        return 1
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
