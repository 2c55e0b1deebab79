"""The landscape between the tickets: points on the straight line between two sparse models, and
the barrier a curve of accuracies shows along it.

Averaging weights helps only where the models it averages lie in one basin. The `landscape` stage
measures test accuracy along the lines T0 → T_k (k = 1..M) and T_k → S (k = 0..M, S the superposed
model) at `ALPHAS`; the math is here, as pure functions over state dicts (inputs never modified):
`interpolate` makes a point, `barrier` reads a curve, `line_pairs` names the lines.

A point between two sparse models lives on the union of their masks; where that union holds more
weights than the budget it is re-pruned to it by `superpose.reprune`, exactly as superposition
does, and its floating tensors are mixed by `superpose.average` (integer buffers are not
averaged). The end points are the two models as they are.
"""

from __future__ import annotations

from os import PathLike
from typing import Mapping, Sequence

from torch import Tensor

from .schemas import LANDSCAPE_COLUMNS
from .superpose import State, _check_scope, average, reprune

ALPHAS = tuple(round(i / 10, 1) for i in range(11))  # 0, 0.1, ..., 1: 11 points per line
T0, SUPERPOSED = "warmup", "superposed"  # the end points' names, as metrics/evaluate.json has them


def interpolate(a: State, a_masks: Mapping[str, Tensor], b: State, b_masks: Mapping[str, Tensor], alpha: float,
                *, counts: Sequence[int], scope: str) -> tuple[State, dict[str, Tensor]]:
    """The point (1 − α)·a + α·b of the straight line from model a to model b, and its masks.

    α = 0 is a and α = 1 is b as they are (the same tensors, their own masks: nothing re-pruned).
    Between them every floating tensor is mixed (weights, biases, BatchNorm's affine parameters and
    running statistics) and integer buffers (num_batches_tracked) are b's, as `superpose.average`
    does. The point's weights lie on the union of the two masks; when that union is the budget
    (`counts`: the weights per masked tensor, in the order of `a_masks`, held per tensor under
    `scope="layerwise"` and in total under `"global"`) it is kept, else the point is re-pruned to
    the budget by magnitude (`superpose.reprune`, as superposition re-prunes). Either way the
    returned masks hold exactly the budget's count of weights (for end points at the budget).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_scope(scope)
    keys = list(a_masks)
    if set(keys) != set(b_masks):
        raise ValueError(f"masked tensors differ: {sorted(set(keys) ^ set(b_masks))}")
    if len(keys) != len(counts):
        raise ValueError(f"{len(keys)} masked tensors but {len(counts)} counts")
    if alpha == 0.0:
        return dict(a), dict(a_masks)
    if alpha == 1.0:
        return dict(b), dict(b_masks)
    mixed = average(a, b, alpha)
    union = {k: a_masks[k].bool() | b_masks[k].bool() for k in keys}
    held = [int(union[k].sum()) for k in keys]
    at_budget = held == [int(c) for c in counts] if scope == "layerwise" else sum(held) == sum(counts)
    if at_budget:  # both models use the same weights: the point is already sparse at the budget
        return mixed, union
    return reprune(mixed, keys, counts, scope)


def barrier(alphas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(height, α) of the largest dip of a curve below the chord between its end points:
    the max over α of (1 − α)·v(0) + α·v(1) − v(α), and the first α where it is reached.

    Never negative: the chord meets the curve at both ends (0 there), so a curve that stays on or
    above its chord has barrier 0 (at α = 0). Rounded to 12 decimals, so that the chord's float
    noise (a flat curve's 1e-16) reads 0; accuracies differ by 1/N, N the test images, far above."""
    if len(alphas) != len(values) or len(alphas) < 2:
        raise ValueError(f"{len(alphas)} alphas and {len(values)} values: need the same number, at least 2")
    if alphas[0] != 0.0 or alphas[-1] != 1.0:
        raise ValueError(f"alphas must run from 0 to 1, got {alphas[0]} .. {alphas[-1]}")
    first, last = float(values[0]), float(values[-1])
    gaps = [round((1.0 - x) * first + x * last - float(v), 12) + 0.0 for x, v in zip(alphas, values)]
    i = max(range(len(gaps)), key=lambda j: (gaps[j], -j))
    return max(gaps[i], 0.0), float(alphas[i])


def line_pairs(tickets: Sequence[str], start: str = T0, end: str = SUPERPOSED) -> list[tuple[str, str]]:
    """The lines measured, as (from, to): T0 → T_k for each ticket, then T_k → S for T0 and each ticket."""
    return [(start, t) for t in tickets] + [(m, end) for m in (start, *tickets)]


def line_name(start: str, end: str) -> str:
    """A line's key in metrics/landscape.json and W&B: `warmup_to_ticket_01`."""
    return f"{start}_to_{end}"


def points(lines: Mapping[str, Mapping]) -> list[dict]:
    """The lines ({name: {"from", "to", "alpha", "test_acc", "test_loss"}}) as one row of
    LANDSCAPE_COLUMNS per line and α: the table `schemas.validate_landscape` checks."""
    return [{"line": name, "from": line["from"], "to": line["to"], "alpha": x, "test_acc": acc, "test_loss": loss}
            for name, line in lines.items() for x, acc, loss in zip(line["alpha"], line["test_acc"], line["test_loss"])]

# ----------------------------------------------------------------------------------------------
# Weights & Biases


def log_to_wandb(wb_run, lines: Mapping[str, Mapping], figure: str | PathLike | None = None) -> None:
    """Log the curves on a wandb run (nothing when `wb_run` is None): one row per α holding every
    line's test accuracy and loss (`curve/<line>/test_acc`, plotted against `alpha`, not the step),
    the points as a table (`landscape/points`) and the figure (`landscape/figure`)."""
    if wb_run is None:
        return
    import wandb

    wb_run.define_metric("alpha")
    wb_run.define_metric("curve/*", step_metric="alpha")
    alphas = next(iter(lines.values()))["alpha"]
    for i, alpha in enumerate(alphas):
        row = {"alpha": alpha}
        for name, line in lines.items():
            row[f"curve/{name}/test_acc"] = line["test_acc"][i]
            row[f"curve/{name}/test_loss"] = line["test_loss"][i]
        wb_run.log(row)
    table = wandb.Table(columns=LANDSCAPE_COLUMNS, data=[[r[c] for c in LANDSCAPE_COLUMNS] for r in points(lines)])
    logged = {"landscape/points": table}
    if figure is not None:
        logged["landscape/figure"] = wandb.Image(str(figure), caption="Test accuracy between the tickets")
    wb_run.log(logged)
