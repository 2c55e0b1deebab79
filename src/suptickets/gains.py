"""Paired gains over seeds: one row per run from its `metrics/evaluate.json`, and mean ± std with a
95% Student t interval per density (used by benchmarks/gain.py and scripts/gpu_check.py)."""

from __future__ import annotations

import math
import statistics
from typing import Mapping

from .comparison import best_ticket

# two-sided 95% Student t quantiles t_{0.975, df}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
COLUMNS = ["sparse_baseline", "best_ticket", "superposed", "ticket_ensemble"]


def t975(df: int) -> float:
    """t_{0.975, df}; for a df between the table's entries, the next smaller one (a wider interval)."""
    return T975.get(df) or T975[max(k for k in T975 if k <= df)] if df >= 1 else float("nan")


def row(metrics: Mapping) -> dict[str, float]:
    """Test accuracies of one run's evaluate.json, its gain superposed − sparse_baseline, and the
    tickets' ensemble's gain over sparse_baseline (how diverse the tickets are)."""
    acc = metrics["test_acc"]
    return {"sparse_baseline": acc["sparse_baseline"], "best_ticket": best_ticket(acc),
            "superposed": acc["superposed"], "ticket_ensemble": acc["ticket_ensemble"],
            "gain": acc["superposed"] - acc["sparse_baseline"],
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
    """Per column (and the two gains), in percent: [mean, std, 95% half-width] over the rows (seeds)."""
    return {key: mean_sd_half([100 * r[key] for r in rows]) for key in COLUMNS + ["gain", "ensemble_gain"]}


TABLE_HEADER = [f"| sparsity | {' | '.join(COLUMNS)} | gain (pts) | 95% CI |", "|" + "---|" * (len(COLUMNS) + 3)]


def table_row(density: float, s: Mapping[str, list[float]]) -> str:
    """One markdown row of a `summarize` result: mean ± std per column, the gain and its interval."""
    cells = " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in COLUMNS)
    g = s["gain"]
    return f"| {1 - density:.2f} | {cells} | {g[0]:+.2f} ± {g[1]:.2f} | [{g[0] - g[2]:+.2f}, {g[0] + g[2]:+.2f}] |"
