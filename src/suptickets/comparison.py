"""The handful of figures a reader compares across runs and sweeps (`metrics/summary.json`), in the
units a person reads: test accuracy in percent, gains in percentage points.

`metrics/evaluate.json` keeps fractions (the pipeline's contract); this is the same evaluation in
display units, built by a pure function over it. Values are rounded to 4 decimals: an accuracy
over up to a million test images is exact at that precision, and the float noise of a difference
(-0.08000000000000007) goes away.
"""

from __future__ import annotations

from typing import Mapping

MODELS = ("superposed", "sparse_baseline", "best_ticket", "ticket_ensemble", "dense")
GAINS = ("vs_sparse_baseline", "vs_best_ticket")


def percent(fraction: float) -> float:
    return round(100 * float(fraction), 4)


def is_ticket(name: str) -> bool:
    """Whether a model name is a single ticket's (ticket_01 ...), not the tickets' ensemble."""
    return name.startswith("ticket_") and name != "ticket_ensemble"


def best_ticket(test_acc: Mapping[str, float]) -> float | None:
    """The highest test accuracy of a single ticket (ticket_01 ...), None without tickets."""
    tickets = [v for k, v in test_acc.items() if is_ticket(k)]
    return max(tickets) if tickets else None


def summary(evaluate: Mapping, method: str) -> dict:
    """metrics/summary.json from metrics/evaluate.json and the DST method:
    {"method", "density", "test_acc_pct": {model: %}, "gain_pts": {vs_...: points}}; models or
    gains the evaluation lacks are left out."""
    acc = dict(evaluate["test_acc"])
    best = best_ticket(acc)
    if best is not None:
        acc["best_ticket"] = best
    return {"method": method, "density": evaluate["target_density"],
            "test_acc_pct": {m: percent(acc[m]) for m in MODELS if m in acc},
            "gain_pts": {g: percent(v) for g, v in evaluate.get("gain", {}).items()}}
