"""Does superposing tickets beat the DST method alone at the same sparsity and cost, and which settings
decide it?

Queues the DAG up to `evaluate` as DVC experiments (`dvc exp run --queue evaluate`), one per cell of a factorial grid and
seed, runs the queue, and prints per cell the test accuracy of each model and the paired gains
superposed − sparse_baseline and superposed − best ticket with 95% t intervals over seeds; for every
factor with several levels, its effect on the gain (paired by seed, averaged over the other factors).

    python benchmarks/gain.py                        # 5 seeds x densities 0.05, 0.02, RigL
    python benchmarks/gain.py --seeds 3 --densities 0.05 -S train.epochs=10 --json gain.json
    python benchmarks/gain.py --collect-only         # tabulate the experiments of an earlier run
    python benchmarks/gain.py --factor dst.prune_rate_decay=constant,cosine --factor dst.repicked=keep,zero \\
        --densities 0.05 --seeds 5 --prefix study --list   # any -S keys: the 2x2 grid's 20 runs, not run
    python benchmarks/gain.py --factor train.epochs+tickets.cycle_rate+tickets.cycle_epochs=30+0.2+2,100+0.1+3 ...
                     # one factor whose levels set several keys together ('+' joins keys and their values)
    python benchmarks/gain.py --grid --jobs 2 -S threads=1 --png benchmarks/gain_grid.png
                     # densities 0.2/0.05/0.02 x tickets.lr_max 0.01/0.05/0.1, 3 seeds, with a heatmap
    python benchmarks/gain.py --lanes 8 -S device=cuda --seeds 8
                     # no DVC: the runs 8 to a process, as lanes of stages/chain.py (+lanes), in .gain/gain/

With `--lanes N` the runs are not DVC experiments: each process is one `stages/chain.py` job of N
lanes (the stages `--stages` needs, prepare first, in `.gain/<prefix>/part-<i>/lane-<k>/`, its log in
`part-<i>.log`, the run names' folders in `.gain/<prefix>/runs.json`), `--jobs` processes at a time,
and the table comes from the folders' `metrics/evaluate.json`. On a GPU the lanes of a process share
the device (each its own CUDA stream); on a CPU they take as long as the same runs one by one.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common
from project_copy import dvc  # noqa: E402

from suptickets import dvcfiles  # noqa: E402
from suptickets.errors import ConfigError  # noqa: E402
from suptickets.gains import effects, row, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LANES_DIR = Path(".gain")  # --lanes: the runs' folders, under the working directory (git-ignored)

GRID = {"dst.density": ["0.2", "0.05", "0.02"], "tickets.lr_max": ["0.01", "0.05", "0.1"]}


def parse_factor(text: str) -> tuple[list[str], list[list[str]]]:
    """'a.b=1,2' -> (['a.b'], [['1'], ['2']]); 'a+b=1+x,2+y' -> (['a', 'b'], [['1', 'x'], ['2', 'y']])."""
    keys_part, sep, levels_part = text.partition("=")
    keys = keys_part.split("+")
    levels = [level.split("+") for level in levels_part.split(",")] if levels_part else []
    if not sep or not all(keys) or not levels or any(len(v) != len(keys) or not all(v) for v in levels):
        raise SystemExit(f"error: --factor {text!r}: expected KEY=V1,V2,... or KEY1+KEY2=A1+B1,A2+B2,... "
                         "(each level one value per key)")
    if len(set(map(tuple, levels))) != len(levels):
        raise SystemExit(f"error: --factor {text!r}: a level is repeated")
    return keys, levels


def label(values: list[str]) -> str:
    """A level's part of an experiment name (git ref characters only)."""
    return re.sub(r"[^A-Za-z0-9._]", "_", "_".join(values))


def plan(factors: list[tuple[list[str], list[list[str]]]], seeds: int, prefix: str, method: str,
         extra: list[str]) -> dict[tuple[str, ...], dict[str, list[str]]]:
    """Cell (one level label per factor) -> {experiment name: overrides}, one experiment per seed; cells in
    the grid's order, so a queue runs a cell's seeds side by side and later cells reuse, through DVC's run
    cache, the stages whose settings they share with earlier ones (dense across every cell of a seed)."""
    cells = {}
    for levels in itertools.product(*[lv for _, lv in factors]):
        key = tuple(label(v) for v in levels)
        sets = [f"{k}={v}" for (keys, _), vals in zip(factors, levels) for k, v in zip(keys, vals)]
        cells[key] = {f"{prefix}-{'-'.join(key)}-s{s}": [f"dst={method}", *sets, f"seed={s}", *extra]
                      for s in range(seeds)}
    return cells


def queue(names: dict[str, list[str]], jobs: int, stages: list[str]) -> None:
    existing = dvc("exp", "list", "--name-only").stdout.split()
    stale = [n for n in names if n in existing]
    if stale:
        dvc("exp", "remove", *stale, check=True)
    for name, overrides in names.items():
        dvc("exp", "run", "--queue", "--name", name, *[a for o in overrides for a in ("-S", o)], *stages, check=True)
    dvc("queue", "start", "-j", str(jobs), check=True)
    while re.search(r"\b(Queued|Running)\b", dvc("queue", "status", check=True).stdout):
        time.sleep(10)


def results(names: list[str]) -> dict[str, dict]:
    shown = json.loads(dvc("exp", "show", "--json", "--all-commits", check=True).stdout)  # HEAD may have moved on meanwhile
    out = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                name = rev.get("name") or exp.get("name")
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get("metrics/evaluate.json", {})
                if name in names and metrics.get("data"):
                    out[name] = metrics["data"]
    return out


def lane_folders(names: list[str], lanes: int, prefix: str) -> dict[str, Path]:
    """Run name -> its lane's folder: the runs in plan order, `lanes` to a process."""
    return {n: LANES_DIR / prefix / f"part-{i // lanes}" / f"lane-{i % lanes}" for i, n in enumerate(names)}


def run_lanes(names: dict[str, list[str]], folders: dict[str, Path], jobs: int, stages: list[str]) -> None:
    """Each process a `stages/chain.py` job whose lanes are its runs (their overrides), `jobs` at a time."""
    try:
        chain = dvcfiles.upstream(dvcfiles.stages(ROOT), stages)
    except ConfigError as err:
        sys.exit(f"error: --stages: {err}")
    spaced = [o for over in names.values() for o in over if len(o.split()) != 1]
    if spaced:
        sys.exit(f"error: --lanes: {spaced[0]!r}: a lane's overrides are separated by spaces; give values without them")
    base = next(iter(folders.values())).parents[1]
    shutil.rmtree(base, ignore_errors=True)  # earlier runs of this prefix are replaced
    base.mkdir(parents=True)
    (base / "runs.json").write_text(json.dumps({n: str(f) for n, f in folders.items()}, indent=1) + "\n")
    parts: dict[Path, list[str]] = {}
    for n, f in folders.items():
        parts.setdefault(f.parent, []).append(" ".join(names[n]))
    running: list[subprocess.Popen] = []
    for part, lanes in parts.items():
        while len([p for p in running if p.poll() is None]) >= jobs:
            time.sleep(1)
        lanes_arg = "+lanes=[" + ",".join(f'"{lane}"' for lane in lanes) + "]"
        with open(part.with_suffix(".log"), "w") as log:
            running.append(subprocess.Popen([sys.executable, str(ROOT / "stages/chain.py"), f"+chain=[{','.join(chain)}]",
                                             lanes_arg, f"hydra.run.dir={part}"], stdout=log, stderr=subprocess.STDOUT))
    for p in running:
        p.wait()


def lane_results(names: list[str], prefix: str) -> dict[str, dict]:
    """The evaluate metrics of the runs of an earlier --lanes run that finished (from its runs.json)."""
    listed = LANES_DIR / prefix / "runs.json"
    folders = json.loads(listed.read_text()) if listed.is_file() else {}
    return {n: json.loads((Path(folders[n]) / "metrics/evaluate.json").read_text()) for n in names
            if n in folders and (Path(folders[n]) / "metrics/evaluate.json").is_file()}


def interval(s: list[float]) -> str:
    return f"{s[0]:+.2f} [{s[0] - s[2]:+.2f}, {s[0] + s[2]:+.2f}]"


def tabulate(factors, cells, found: dict[str, dict], seeds: int) -> tuple[dict, list[dict]]:
    """Print the cells' table and the factors' effects; return both for --json."""
    names = [" + ".join(keys) for keys, _ in factors]
    table = {}
    print(f"| {' | '.join(names)} | n | sparse_baseline % | best ticket % | superposed % | superposed − "
          "sparse_baseline | superposed − best ticket | ticket ensemble − sparse_baseline |")
    print("|" + "---|" * (len(names) + 7))
    per_cell_seed = {}
    for cell, runs in cells.items():
        rows = {int(n.rsplit("-s", 1)[1]): row(found[n]) for n in runs if n in found}
        if not rows:
            continue
        per_cell_seed[cell] = {s: 100 * r["gain"] for s, r in rows.items()}
        s = summarize(list(rows.values()))
        table["/".join(cell)] = {"levels": dict(zip(names, cell)), "n": len(rows), **s,
                                 "runs": {str(k): v for k, v in sorted(rows.items())}}
        print(f"| {' | '.join(cell)} | {len(rows)} | {s['sparse_baseline'][0]:.2f} ± {s['sparse_baseline'][1]:.2f} | "
              f"{s['best_ticket'][0]:.2f} ± {s['best_ticket'][1]:.2f} | {s['superposed'][0]:.2f} ± "
              f"{s['superposed'][1]:.2f} | {interval(s['gain'])} | {interval(s['gain_vs_best_ticket'])} | "
              f"{interval(s['ensemble_gain'])} |")
    found_effects = effects(per_cell_seed, [[label(v) for v in lv] for _, lv in factors], names)
    if found_effects:
        print("\neffect on superposed − sparse_baseline (pts; per seed, the level's gain minus the first level's, "
              "averaged over the other factors' cells; mean [95% CI] over seeds):")
        for e in found_effects:
            print(f"- {e['factor']}: {e['level']} vs {e['versus']}: {interval(e['effect'])} (n {e['n']})")
    return table, found_effects


def forest(table: dict, path: str, title: str) -> None:
    """Every cell's two paired gains with their 95% intervals, one row per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(table)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(cells) + 1.4), dpi=110)
    for offset, key, colour, name in [(-0.15, "gain", "tab:blue", "superposed − sparse_baseline"),
                                      (0.15, "gain_vs_best_ticket", "tab:orange", "superposed − best ticket")]:
        ys = [i + offset for i in range(len(cells))]
        means = [table[c][key][0] for c in cells]
        halves = [table[c][key][2] for c in cells]
        ax.errorbar(means, ys, xerr=halves, fmt="o", color=colour, capsize=3, label=name)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(cells)), [c.replace("/", "  ") for c in cells], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("points of test accuracy (mean and 95% t interval over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def heatmap(table: dict, factors, path: str, subtitle: str) -> None:
    """Two factors: the two gains (vs sparse_baseline, the ensemble's) over the grid; each cell shows the
    mean and its 95% interval; the colour scale is symmetric around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    (rk, rows), (ck, cols) = [(" + ".join(k), [label(v) for v in lv]) for k, lv in factors]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, key, title in zip(axes, ["gain", "ensemble_gain"],
                              ["superposed − sparse_baseline (pts)", "ticket ensemble − sparse_baseline (pts)"]):
        mean = np.full((len(rows), len(cols)), np.nan)
        text = [["" for _ in cols] for _ in rows]
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                cell = table.get(f"{r}/{c}")
                if cell:
                    m, _, half = cell[key]
                    mean[i, j] = m
                    text[i][j] = f"{m:+.2f}\n[{m - half:+.2f}, {m + half:+.2f}]\nn={cell['n']}"
        bound = max(0.1, float(np.nanmax(np.abs(mean))))
        ax.imshow(mean, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                dark = abs(mean[i, j]) > 0.6 * bound  # (NaN compares False)
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(ck)
        ax.set_ylabel(rk)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Where does the gain appear? ({subtitle}; mean [95% CI])", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> int:
    ap = _common.parser(
        __doc__, one_line=True, costs=(
            "every (cell, seed) is one whole DAG of the default pipeline: dense, sparse_baseline and warmup + "
            "tickets of train.epochs each (about 2.5 minutes for 30 epochs on a quiet 2-core CPU with -S "
            "threads=1; train.epochs=100 about 3.3 times that). DVC's run cache trains dense once per (seed, "
            "budget) and sparse_baseline once per seed and setting it reads, for all cells. The default, 5 seeds x "
            "2 densities = 10 runs, takes about 25 minutes with --jobs 2 -S threads=1; docs/results.md's 8-cell study "
            "(2 x 2 x 2 factors, 5 seeds, budgets 30 and 100 epochs): about 3 minutes per 30-epoch run and 10 per 100-epoch run, two at a time; "
            "-S experiment=smoke makes each run about a minute. Run it in the project (it queues DVC "
            "experiments there); --list and --collect-only run nothing."))
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per cell (default 5; 3 with --grid)")
    ap.add_argument("--densities", type=float, nargs="+", default=None,
                    help="dst.density values: shorthand for --factor dst.density=... (default 0.05 0.02; with "
                         "--grid 0.2 0.05 0.02)")
    ap.add_argument("--factor", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a factor of the grid: a -S key and its levels (repeatable; the cells are every "
                         "combination). KEY1+KEY2=A1+B1,A2+B2 makes one factor whose levels set several keys")
    ap.add_argument("--method", default="rigl", help="the DST method, dst=<method>: rigl, set or granet (default %(default)s)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run, as in `dvc exp run -S` (repeatable; e.g. -S threads=1, "
                         "-S experiment=smoke)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="queue workers, `dvc queue start -j` (default %(default)s; with 2 use -S threads=1 on 2 cores)")
    ap.add_argument("--stages", nargs="+", default=["evaluate"], metavar="STAGE",
                    help="the stages each experiment reproduces with what they depend on, as `dvc exp run STAGE` "
                         "(default %(default)s: the gains need nothing after it; export, report and landscape "
                         "are skipped; pass landscape to run it for every run)")
    ap.add_argument("--prefix", default=None,
                    help="experiment names are <prefix>-<level>-...-s<seed> (default gain; grid with --grid); "
                         "existing ones of the same name are replaced")
    ap.add_argument("--lanes", type=int, default=None, metavar="N",
                    help="no DVC: run the runs N to a process, as lanes of stages/chain.py jobs, in .gain/<prefix>/ "
                         "(see above); with --collect-only, tabulate such a run")
    ap.add_argument("--json", help="also write the cells (with every run's accuracies) and effects as JSON here")
    ap.add_argument("--png", help="write a figure: every cell's gains with their intervals (with --grid: a heatmap)")
    ap.add_argument("--list", action="store_true", help="run nothing; print the planned experiments and their overrides")
    ap.add_argument("--collect-only", action="store_true",
                    help="run nothing; tabulate the finished experiments of an earlier run (same factors, "
                         "--seeds, --prefix)")
    ap.add_argument("--grid", action="store_true",
                    help="map the gain over density x tickets.lr_max: --factor dst.density=0.2,0.05,0.02 --factor "
                         "tickets.lr_max=0.01,0.05,0.1, 3 seeds, prefix grid (27 runs; 55 minutes measured with "
                         "--jobs 2 -S threads=1 on a busy 2-core machine, the run cache sharing sparse_baseline "
                         "and warmup across lr_max)")
    args = ap.parse_args()
    if args.lanes is not None and args.lanes < 1:
        sys.exit(f"error: --lanes {args.lanes}: expected a number of runs per process, 1 or more")
    factors = [parse_factor(f) for f in args.factor]
    densities = args.densities or ([] if args.grid or factors else [0.05, 0.02])
    if densities:
        factors.insert(0, (["dst.density"], [[f"{d:g}"] for d in densities]))
    if args.grid:
        factors += [([k], [[v] for v in vs]) for k, vs in GRID.items() if not any(k in keys for keys, _ in factors)]
    keys = [k for ks, _ in factors for k in ks]
    if len(set(keys)) != len(keys):
        sys.exit(f"error: a key is set by two factors: {keys}")
    seeds = args.seeds or (3 if args.grid else 5)
    prefix = args.prefix or ("grid" if args.grid else "gain")
    cells = plan(factors, seeds, prefix, args.method, args.overrides)
    names = {n: o for runs in cells.values() for n, o in runs.items()}
    if args.list:
        for n, o in names.items():
            print(n, " ".join(f"-S {x}" for x in o))
        print(f"{len(cells)} cells x {seeds} seeds = {len(names)} experiments")
        return 0
    if args.lanes is None:
        if not args.collect_only:
            queue(names, args.jobs, args.stages)
        found = results(list(names))
    else:
        if not args.collect_only:
            run_lanes(names, lane_folders(list(names), args.lanes, prefix), args.jobs, args.stages)
        found = lane_results(list(names), prefix)
    logs = "`dvc queue logs <name>`" if args.lanes is None else f"{LANES_DIR / prefix}/part-*.log"
    if not found:
        print(f"error: no finished {'runs' if args.lanes else 'experiments'} named {prefix}-<levels>-s<seed> to "
              "tabulate; run `python benchmarks/gain.py` without --collect-only first (same factors, --seeds, "
              "--prefix)" if args.collect_only else f"error: none of the {len(names)} runs finished; see {logs}",
              file=sys.stderr)
        return 2
    missing = sorted(set(names) - set(found))
    if missing:
        print(f"no metrics for: {', '.join(missing)} (see {logs})", file=sys.stderr)
    print(f"method {args.method}, {seeds} seeds per cell, overrides {args.overrides or 'none'}; test accuracy in %, "
          "mean ± std; gains in points, paired by seed, mean [95% CI]")
    table, found_effects = tabulate(factors, cells, found, seeds)
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": table, "effects": found_effects}, indent=2) + "\n")
    if args.png and table:
        subtitle = f"{args.method}, {seeds} seeds per cell"
        if args.grid and len(factors) == 2:
            heatmap(table, factors, args.png, subtitle)
        else:
            forest(table, args.png, f"Paired gains per cell ({subtitle})")
        print(f"figure: {args.png}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
