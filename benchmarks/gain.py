"""Does superposing tickets beat the DST method alone at the same sparsity and cost?

Queues the whole DAG as DVC experiments (`dvc exp run --queue`) for every (density, seed), runs the
queue, and prints mean ± std of test accuracy per model and the paired gain superposed −
sparse_baseline with its 95% confidence interval (Student t over seeds).

    python benchmarks/gain.py                                  # 5 seeds x densities 0.05, 0.02, RigL
    python benchmarks/gain.py --seeds 3 --densities 0.05 -S train.epochs=10 --json gain.json
    python benchmarks/gain.py --collect-only            # tabulate the experiments of an earlier run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (the environment defaults; the runs it starts inherit them)
from suptickets.comparison import best_ticket  # noqa: E402

# two-sided 95% Student t quantiles t_{0.975, df}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
COLUMNS = ["sparse_baseline", "best_ticket", "superposed", "ticket_ensemble"]


def t975(df: int) -> float:
    return T975.get(df) or T975[max(k for k in T975 if k <= df)] if df >= 1 else float("nan")


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


def row(m: dict) -> dict[str, float]:
    acc = m["test_acc"]
    return {"sparse_baseline": acc["sparse_baseline"], "best_ticket": best_ticket(acc),
            "superposed": acc["superposed"], "ticket_ensemble": acc["ticket_ensemble"],
            "gain": acc["superposed"] - acc["sparse_baseline"]}


def summarize(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    out = {}
    for key in COLUMNS + ["gain"]:
        vals = [100 * r[key] for r in rows]
        mean = statistics.fmean(vals)
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        half = t975(len(vals) - 1) * sd / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        out[key] = [mean, sd, half]
    return out


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
    args = ap.parse_args()
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
    print(f"| sparsity | {' | '.join(COLUMNS)} | gain (pts) | 95% CI |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for d in args.densities:
        rows = [row(found[n]) for n in runs if n.startswith(f"{args.prefix}-d{d:g}-") and n in found]
        if not rows:
            continue
        s = summarize(rows)
        table[f"{d:g}"] = {"n": len(rows), **s}
        cells = " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in COLUMNS)
        g = s["gain"]
        print(f"| {1 - d:.2f} | {cells} | {g[0]:+.2f} ± {g[1]:.2f} | [{g[0] - g[2]:+.2f}, {g[0] + g[2]:+.2f}] |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
