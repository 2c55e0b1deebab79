"""One readable row per DVC experiment (`make compare`): the DST method, density, seed and cyclic
lr_max of each, the test accuracy (%) of superposed, sparse_baseline, the best ticket, the tickets'
ensemble and dense, and the superposed model's gains in points.

Reads `dvc exp show --json` of the repository it runs in: the baseline commit (HEAD, or every
commit with --all-commits), its experiments, and the workspace when it differs from all of them.
Each row names its preset and the settings that differ from the preset's composition of params/.
The workspace row is marked stale when `dvc status` finds its outputs out of date with its
params.yaml (e.g. after a failed `dvc exp run`: its metrics are the last successful run's, its
params the failed one's); `dvc exp apply <name>` or `git checkout params.yaml dvc.lock && dvc
checkout` gets back to a consistent state.
The figures come from each experiment's metrics/summary.json (the evaluate stage), or, for runs
made before that file existed, from metrics/evaluate.json through the same function.

    python scripts/compare.py                 # HEAD and its experiments
    python scripts/compare.py --all-commits   # experiments of every commit
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import yaml
from project_copy import compose_params, dvc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from suptickets.comparison import GAINS, MODELS, summary  # noqa: E402
from suptickets.composition import preset_overrides  # noqa: E402
from suptickets.config import get  # noqa: E402
from suptickets.tracking import overrides  # noqa: E402

SETTINGS = {"method": "dst.method", "density": "dst.density", "seed": "seed", "lr_max": "tickets.lr_max"}
HEADER = ["experiment", *SETTINGS, *(f"{m} %" for m in MODELS), "gain vs sparse_baseline (pts)",
          "gain vs best ticket (pts)", "preset", "overrides"]
STALE = " (stale: outputs not of these params)"


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


def rows(shown: list, presets: Callable[[str], dict] | None = None, stale: bool = False) -> list[dict]:
    """One row per revision with params: settings, accuracies (%) and gains (points); None where a
    figure is missing; the preset (`name`) and, given `presets` (preset name -> its composed params),
    the overrides that differ from it. The workspace row is dropped when another row has the same
    values, and marked when `stale` (DVC finds its outputs out of date with its params.yaml)."""
    out = []
    for label, data in _revisions(shown):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        if not params:
            continue
        row = {"experiment": label, **{k: get(params, key) for k, key in SETTINGS.items()}}
        figures = _figures(data.get("metrics") or {}, row["method"])
        row.update({m: (figures.get("test_acc_pct") or {}).get(m) for m in MODELS})
        row.update({g: (figures.get("gain_pts") or {}).get(g) for g in GAINS})
        row["preset"] = params.get("name")
        row["overrides"] = " ".join(overrides(params, presets(row["preset"]))) if presets else None
        out.append(row)
    values = lambda r: {k: v for k, v in r.items() if k != "experiment"}  # noqa: E731
    kept = [r for r in out if r["experiment"] != "workspace"
            or not any(values(r) == values(o) for o in out if o is not r)]
    for r in kept:
        if r["experiment"] == "workspace" and stale:
            r["experiment"] += STALE
    return kept


def preset_params(root: Path) -> Callable[[str], dict]:
    """Preset name -> params.yaml as DVC's Hydra composition of params/ gives it for that preset
    (params/experiment/<name>.yaml, or the defaults for theirs), composed once per name."""
    composed: dict[str, dict] = {}

    def params(name: str) -> dict:
        if name not in composed:
            with tempfile.TemporaryDirectory() as tmp:
                given = preset_overrides(root / "params", name)
                composed[name] = yaml.safe_load(compose_params(root, given, Path(tmp) / "params.yaml"))
        return composed[name]

    return params


def _cell(key: str, value) -> str:
    if value is None:
        return "—"
    if key in GAINS:
        return f"{value:+.2f}"
    if key in MODELS:
        return f"{value:.2f}"
    if key == "overrides":
        return f"`{value}`" if value else "—"
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
    cmd = ["exp", "show", "--json", *(["--all-commits"] if args.all_commits else [])]
    proc = dvc(*cmd)
    if proc.returncode != 0:
        print(f"error: dvc {' '.join(cmd)} failed: {proc.stderr.strip()}", file=sys.stderr)
        return 2
    status = dvc("status", "--json")
    stale = status.returncode != 0 or json.loads(status.stdout or "{}") != {}
    table = rows(json.loads(proc.stdout), preset_params(Path.cwd()), stale)
    if not table:
        print("error: no experiments with params to compare here; run `dvc exp run` (or `dvc repro`) first",
              file=sys.stderr)
        return 1
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
