"""landscape: test accuracy and loss along the straight lines from T0 (warmup) to each ticket and
from T0 and each ticket to the superposed model, 11 points a line (α = 0, 0.1, …, 1); writes
metrics/landscape.json and plots/landscape.png. Nothing downstream reads them (`dvc repro report`
does not need this stage).

The end points are the models as they are, so the curves end at evaluate's test accuracies; each
point between them is re-pruned to the budget as superpose does (`superpose.scope`) and, with
`superpose.bn_update`, gets its BatchNorm statistics recomputed on the training data. Each end point
is also measured with its BatchNorm statistics recomputed: how much of a dip BatchNorm alone explains.
"""

from pathlib import Path

from _stage import Stage, log, main_of

FIGURE = Path("plots/landscape.png")


def run(s: Stage) -> None:
    import pandas as pd

    from suptickets import landscape
    from suptickets.figures import plot_landscape, short_name
    from suptickets.schemas import validate_landscape
    from suptickets.sparsity.masks import densities
    from suptickets.superpose import load_state, read_like_t0, starting_point
    from suptickets.train import evaluate

    cfg, sp = s.cfg, s.cfg["superpose"]
    data, bn_batches, model, t0, ticket_files, counts = starting_point(cfg)
    keys = list(t0[1])
    superposed = read_like_t0("models/superposed.safetensors", model, keys)

    def measure(point, bn: bool) -> tuple[float, float]:
        load_state(model, *point, bn_batches if bn else None)
        return evaluate(model, data["test"])

    ends, lines = {}, {}

    def end_point(name: str, point) -> None:
        (acc, loss), (bn_acc, bn_loss) = measure(point, False), measure(point, True)
        ends[name] = {"model": name, "test_acc": acc, "test_loss": loss, "density": densities(point[1])[0],
                      "bn_recomputed_test_acc": bn_acc, "bn_recomputed_test_loss": bn_loss}

    def line(start: str, a, end: str, b) -> None:
        points = [(ends[start]["test_acc"], ends[start]["test_loss"]) if alpha == 0.0 else
                  (ends[end]["test_acc"], ends[end]["test_loss"]) if alpha == 1.0 else
                  measure(landscape.interpolate(*a, *b, alpha, counts=counts, scope=sp["scope"]), sp["bn_update"])
                  for alpha in landscape.ALPHAS]
        lines[landscape.line_name(start, end)] = {"from": start, "to": end, "alpha": list(landscape.ALPHAS),
                                                  "test_acc": [p[0] for p in points],
                                                  "test_loss": [p[1] for p in points]}

    end_point(landscape.T0, t0)
    end_point(landscape.SUPERPOSED, superposed)
    tickets = []
    for path in ticket_files:  # one ticket in memory at a time
        ticket = read_like_t0(path, model, keys)
        tickets.append(path.stem)
        end_point(path.stem, ticket)
        line(landscape.T0, t0, path.stem, ticket)
        line(path.stem, ticket, landscape.SUPERPOSED, superposed)
    line(landscape.T0, t0, landscape.SUPERPOSED, superposed)
    lines = {landscape.line_name(a, b): lines[landscape.line_name(a, b)] for a, b in landscape.line_pairs(tickets)}
    for name, curve in lines.items():
        curve["barrier"], curve["barrier_alpha"] = landscape.barrier(curve["alpha"], curve["test_acc"])
        log.info(f"landscape: {short_name(curve['from']):>3} → {short_name(curve['to']):<3} test_acc "
                 f"{' '.join(f'{v:.4f}' for v in curve['test_acc'])}  barrier {curve['barrier']:.4f} "
                 f"at α {curve['barrier_alpha']:g}")
    validate_landscape(pd.DataFrame(landscape.points(lines)), pd.DataFrame(list(ends.values())), landscape.ALPHAS)
    if s.rank != 0:
        return
    plot_landscape(lines, ends, FIGURE, bn_update=sp["bn_update"])
    s.write_metrics({"budget": sum(counts), "scope": sp["scope"], "bn_update": sp["bn_update"],
                     "endpoints": {n: {k: v for k, v in e.items() if k != "model"} for n, e in ends.items()},
                     "lines": lines}, "metrics/landscape.json")
    landscape.log_to_wandb(s.run.wandb_run, lines, FIGURE)
    worst = max(lines, key=lambda n: lines[n]["barrier"])
    log.info(f"landscape: {len(lines)} lines of {len(landscape.ALPHAS)} points; highest barrier "
             f"{lines[worst]['barrier']:.4f} on {worst}")


if __name__ == "__main__":
    main_of("landscape", run)
