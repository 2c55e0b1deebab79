"""Paired gains over seeds: one row per run from its `metrics/evaluate.json`, mean ± std with a 95%
Student t interval per cell, and the effect of a factor on the gain, paired by seed (used by
benchmarks/gain.py and scripts/gpu_check.py)."""

from __future__ import annotations

import math
import statistics
import itertools
from typing import Mapping, Sequence

from .comparison import best_ticket

# two-sided 95% Student t quantiles t_{0.975, df}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
COLUMNS = ["sparse_baseline", "best_ticket", "superposed", "ticket_ensemble"]


def t975(df: int) -> float:
    """t_{0.975, df}; for a df between the table's entries, the next smaller one (a wider interval)."""
    return T975.get(df) or T975[max(k for k in T975 if k <= df)] if df >= 1 else float("nan")


def row(metrics: Mapping) -> dict[str, float]:
    """Test accuracies of one run's evaluate.json (T₀ = warmup too), its gains superposed −
    sparse_baseline and superposed − best ticket, and the tickets' ensemble's gain over
    sparse_baseline (how diverse the tickets are)."""
    acc = metrics["test_acc"]
    best = best_ticket(acc)
    return {"sparse_baseline": acc["sparse_baseline"], "best_ticket": best,
            "superposed": acc["superposed"], "ticket_ensemble": acc["ticket_ensemble"], "warmup": acc["warmup"],
            "gain": acc["superposed"] - acc["sparse_baseline"], "gain_vs_best_ticket": acc["superposed"] - best,
            "ensemble_gain": acc["ticket_ensemble"] - acc["sparse_baseline"]}


def mean_sd_half(values: list[float]) -> list[float]:
    """[mean, sample std, half-width of the 95% t interval of the mean] (std and interval NaN for
    one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return [mean, float("nan"), float("nan")]
    sd = statistics.stdev(values)
    return [mean, sd, t975(len(values) - 1) * sd / math.sqrt(len(values))]


def summarize(rows: list[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per column (T₀ and the gains too), in percent: [mean, std, 95% half-width] over the rows (seeds)."""
    return {key: mean_sd_half([100 * r[key] for r in rows])
            for key in COLUMNS + ["warmup", "gain", "gain_vs_best_ticket", "ensemble_gain"]}


def effects(gain: Mapping[tuple[str, ...], Mapping[int, float]], levels: Sequence[Sequence[str]],
            names: Sequence[str]) -> list[dict]:
    """The effect of each factor's level against its first level on the gain, paired by seed.

    `gain[cell][seed]`: the gain of one run, cells being one level per factor (in `levels` order). For
    factor f and level b ≠ a (its first), each seed's effect is the mean over the other factors'
    combinations of gain(…b…) − gain(…a…); the result is [mean, std, 95% half-width] over the seeds that
    have every run of both levels. Factors with one level are skipped."""
    out = []
    for f, (name, lv) in enumerate(zip(names, levels)):
        others = [levels[j] for j in range(len(levels)) if j != f]
        for b in lv[1:]:
            seeds = set.intersection(*[set(runs) for runs in gain.values()]) if gain else set()
            per_seed = []
            for s in sorted(seeds):
                diffs = []
                for rest in itertools.product(*others):
                    cell_a, cell_b = list(rest), list(rest)
                    cell_a.insert(f, lv[0])
                    cell_b.insert(f, b)
                    if tuple(cell_a) in gain and tuple(cell_b) in gain:
                        diffs.append(gain[tuple(cell_b)][s] - gain[tuple(cell_a)][s])
                if diffs and len(diffs) == len(list(itertools.product(*others))):
                    per_seed.append(sum(diffs) / len(diffs))
            if per_seed:
                out.append({"factor": name, "level": b, "versus": lv[0], "n": len(per_seed),
                            "effect": mean_sd_half(per_seed)})
    return out


TABLE_HEADER = [f"| sparsity | {' | '.join(COLUMNS)} | gain (pts) | 95% CI |", "|" + "---|" * (len(COLUMNS) + 3)]


def table_row(density: float, s: Mapping[str, list[float]]) -> str:
    """One markdown row of a `summarize` result: mean ± std per column, the gain and its interval."""
    cells = " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in COLUMNS)
    g = s["gain"]
    return f"| {1 - density:.2f} | {cells} | {g[0]:+.2f} ± {g[1]:.2f} | [{g[0] - g[2]:+.2f}, {g[0] + g[2]:+.2f}] |"
