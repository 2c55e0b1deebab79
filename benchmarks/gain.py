"""Does superposing tickets beat the DST method alone at the same sparsity and cost?

Queues the whole DAG as DVC experiments (`dvc exp run --queue`) for every (density, seed), runs the
queue, and prints mean ± std of test accuracy per model and the paired gain superposed −
sparse_baseline with its 95% confidence interval (Student t over seeds).

    python benchmarks/gain.py                                  # 5 seeds x densities 0.05, 0.02, RigL
    python benchmarks/gain.py --seeds 3 --densities 0.05 -S train.epochs=10 --json gain.json
    python benchmarks/gain.py --collect-only            # tabulate the experiments of an earlier run
    python benchmarks/gain.py --grid --jobs 2 -S threads=1 --png benchmarks/gain_grid.png
                      # where does the gain appear: densities 0.2/0.05/0.02 x tickets.lr_max 0.01/0.05/0.1,
                      # 3 seeds each, with a heatmap of the mean paired gain and the tickets' ensemble gain
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (the environment defaults; the runs it starts inherit them)
from suptickets.gains import TABLE_HEADER, row, summarize, table_row  # noqa: E402


def dvc(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True,
                          env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if check and proc.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def queue(names: dict[str, list[str]], jobs: int) -> None:
    existing = dvc("exp", "list", "--name-only", check=False).split()
    stale = [n for n in names if n in existing]
    if stale:
        dvc("exp", "remove", *stale)
    for name, overrides in names.items():
        dvc("exp", "run", "--queue", "--name", name, *[a for o in overrides for a in ("-S", o)])
    dvc("queue", "start", "-j", str(jobs))
    while re.search(r"\b(Queued|Running)\b", dvc("queue", "status")):
        time.sleep(10)


def results(names: list[str]) -> dict[str, dict]:
    shown = json.loads(dvc("exp", "show", "--json", "--all-commits"))  # HEAD may have moved on meanwhile
    out = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                name = rev.get("name") or exp.get("name")
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get("metrics/evaluate.json", {})
                if name in names and metrics.get("data"):
                    out[name] = metrics["data"]
    return out


def grid_runs(args) -> dict[tuple[float, float], dict[str, list[str]]]:
    """(density, lr_max) -> {experiment name: overrides}, one experiment per seed."""
    return {(d, lr): {f"{args.prefix}-d{d:g}-lr{lr:g}-s{s}": [f"dst={args.method}", f"dst.density={d}",
                                                             f"tickets.lr_max={lr}", f"seed={s}", *args.overrides]
                      for s in range(args.seeds)}
            for d in args.densities for lr in args.lr_max}


def grid(args) -> int:
    """Where does the gain appear? Every (density, tickets.lr_max) cell over the seeds: the mean paired
    gain superposed − sparse_baseline and the ticket ensemble's gain (how diverse the tickets are), with
    95% t intervals; a table on stdout, optionally JSON and a PNG heatmap."""
    cells = grid_runs(args)
    names = {n: o for runs in cells.values() for n, o in runs.items()}
    if not args.collect_only:
        # sparse_baseline and warmup do not read tickets.lr_max: DVC's run cache serves the other cells
        # of a (density, seed) from the first one that ran, so the queue holds lr_max-major order
        queue(dict(sorted(names.items(), key=lambda kv: kv[0].split("-lr")[1].split("-s")[0] != f"{args.lr_max[0]:g}")),
              args.jobs)
    found = results(list(names))
    missing = sorted(set(names) - set(found))
    if missing:
        print(f"no metrics for: {', '.join(missing)} (see `dvc queue logs`)", file=sys.stderr)
    table = {}
    print(f"method {args.method}, {args.seeds} seeds per cell, overrides {args.overrides or 'none'}; "
          "gains in points (test accuracy), paired by seed, mean [95% CI]")
    print("| density | tickets.lr_max | n | sparse_baseline % | superposed − sparse_baseline | ticket ensemble − sparse_baseline |")
    print("|---|---|---|---|---|---|")
    for (d, lr), runs in cells.items():
        rows = [row(found[n]) for n in runs if n in found]
        if not rows:
            continue
        s = summarize(rows)
        table[f"{d:g}/{lr:g}"] = {"density": d, "lr_max": lr, "n": len(rows), **s}
        g, e = s["gain"], s["ensemble_gain"]
        print(f"| {d:g} | {lr:g} | {len(rows)} | {s['sparse_baseline'][0]:.2f} | {g[0]:+.2f} [{g[0] - g[2]:+.2f}, "
              f"{g[0] + g[2]:+.2f}] | {e[0]:+.2f} [{e[0] - e[2]:+.2f}, {e[0] + e[2]:+.2f}] |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    if args.png and table:
        heatmap(table, args.densities, args.lr_max, args.png, f"{args.method}, {args.seeds} seeds per cell")
        print(f"heatmap: {args.png}")
    return 1 if missing else 0


def heatmap(table: dict, densities: list[float], lrs: list[float], path: str, subtitle: str) -> None:
    """Two panels (superposed's gain, the ensemble's gain) over density x lr_max; each cell shows the
    mean and its 95% interval; the colour scale is symmetric around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, key, title in zip(axes, ["gain", "ensemble_gain"],
                              ["superposed − sparse_baseline (pts)", "ticket ensemble − sparse_baseline (pts)"]):
        mean = np.full((len(densities), len(lrs)), np.nan)
        text = [["" for _ in lrs] for _ in densities]
        for i, d in enumerate(densities):
            for j, lr in enumerate(lrs):
                cell = table.get(f"{d:g}/{lr:g}")
                if cell:
                    m, _, half = cell[key]
                    mean[i, j] = m
                    text[i][j] = f"{m:+.2f}\n[{m - half:+.2f}, {m + half:+.2f}]\nn={cell['n']}"
        bound = max(0.1, float(np.nanmax(np.abs(mean))))
        ax.imshow(mean, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for i in range(len(densities)):
            for j in range(len(lrs)):
                dark = abs(mean[i, j]) > 0.6 * bound  # (NaN compares False)
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(densities)), [f"{d:g}" for d in densities])
        ax.set_xlabel("tickets.lr_max")
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Where does the gain appear? ({subtitle}; mean [95% CI])", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_common.cost("every (density, seed) is one whole DAG of the default pipeline (30 epochs of dense, "
               "sparse_baseline, warmup + tickets), about 5 minutes on a quiet 2-core CPU. The default, 5 seeds x "
               "2 densities = 10 runs, takes close to an hour with --jobs 1 (about 35 minutes with --jobs 2 "
               "-S threads=1, longer on a busy machine); -S experiment=smoke makes each run well under a minute. "
               "Run it in the project (it queues DVC experiments there); --collect-only only reads them."))
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per density (default %(default)s)")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.02],
                    help="dst.density values, one row each (default %(default)s)")
    ap.add_argument("--method", default="rigl", help="the DST method, dst=<method>: rigl, set or granet (default %(default)s)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run, as in `dvc exp run -S` (repeatable; e.g. -S threads=1, "
                         "-S experiment=smoke)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="queue workers, `dvc queue start -j` (default %(default)s; with 2 use -S threads=1 on 2 cores)")
    ap.add_argument("--prefix", default="gain",
                    help="experiment names are <prefix>-d<density>-s<seed> (default %(default)s); existing ones "
                         "of the same name are replaced")
    ap.add_argument("--json", help="also write the table as JSON to this path")
    ap.add_argument("--collect-only", action="store_true",
                    help="run nothing; tabulate the finished experiments of an earlier run (same --seeds, "
                         "--densities, --prefix)")
    ap.add_argument("--grid", action="store_true",
                    help="map the gain over --densities x --lr-max instead (their defaults become 0.2 0.05 0.02 x "
                         "0.01 0.05 0.1, 3 seeds, prefix grid: 27 runs that share sparse_baseline and warmup "
                         "across lr_max through DVC's run cache, roughly 1.5 hours with --jobs 2 -S threads=1 on a "
                         "busy 2-core machine)")
    ap.add_argument("--lr-max", type=float, nargs="+", default=[0.01, 0.05, 0.1],
                    help="--grid: tickets.lr_max values, one column each (default %(default)s)")
    ap.add_argument("--png", help="--grid: write the heatmap of the two gains to this path")
    args = ap.parse_args()
    if args.grid:
        if "--densities" not in sys.argv:
            args.densities = [0.2, 0.05, 0.02]
        if "--seeds" not in sys.argv:
            args.seeds = 3
        if args.prefix == "gain":
            args.prefix = "grid"
        return grid(args)
    runs = {f"{args.prefix}-d{d:g}-s{s}": [f"dst={args.method}", f"dst.density={d}", f"seed={s}", *args.overrides]
            for d in args.densities for s in range(args.seeds)}
    if not args.collect_only:
        queue(runs, args.jobs)
    found = results(list(runs))
    if not found:
        print(f"error: no finished experiments named {args.prefix}-d<density>-s<seed> to tabulate; run "
              f"`python benchmarks/gain.py` without --collect-only first (same --seeds, --densities, --prefix)"
              if args.collect_only else f"error: none of the {len(runs)} queued experiments finished; see "
              "`dvc queue logs <name>`", file=sys.stderr)
        return 2
    missing = sorted(set(runs) - set(found))
    if missing:
        print(f"no metrics for: {', '.join(missing)} (see `dvc queue logs`)", file=sys.stderr)
    table = {}
    print(f"method {args.method}, {args.seeds} seeds, overrides {args.overrides or 'none'}; test accuracy in %,"
          f" mean ± std; gain = superposed − sparse_baseline, paired, with 95% CI")
    print("\n".join(TABLE_HEADER))
    for d in args.densities:
        rows = [row(found[n]) for n in runs if n.startswith(f"{args.prefix}-d{d:g}-") and n in found]
        if not rows:
            continue
        s = summarize(rows)
        table[f"{d:g}"] = {"n": len(rows), **s}
        print(table_row(d, s))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
