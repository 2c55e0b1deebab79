"""evaluate: test accuracy and loss of every model present on the official test split, their
density, the tickets' ensemble (averaged softmax), and the gains of the superposed model
(metrics/evaluate.json, fractions); the figures a reader compares across runs, in % and points,
in metrics/summary.json and the W&B run's summary."""

from _stage import Stage, log, main_of

from suptickets import comparison
from suptickets.artifacts import model_files, write_json
from suptickets.errors import BadModelFile, MissingInput


def run(s: Stage) -> None:
    import pandas as pd

    from suptickets import runtime
    from suptickets.schemas import validate_evaluation
    from suptickets.sparsity.engine import masks_of
    from suptickets.sparsity.masks import count, densities
    from suptickets.train import predict, score

    cfg = s.cfg
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    rows, ticket_probs, budget = [], [], {}
    for name, path in model_files().items():
        model = runtime.load_model(path, runtime.new_model(cfg, summary, device))
        probs, labels = predict(model, data["test"])
        acc, loss = score(probs, labels)
        masks = masks_of(model)
        density, _ = densities(masks)
        sparse = name != "dense"
        rows.append({"model": name, "test_acc": acc, "test_loss": loss, "density": density if sparse else None})
        if comparison.is_ticket(name):
            ticket_probs.append(probs)
        if sparse:
            budget[name] = count(masks.values())
            if name == "superposed":
                superposed_masks, total_masked = masks, sum(m.numel() for m in masks.values())
    if ticket_probs:
        acc, loss = score(sum(ticket_probs) / len(ticket_probs), labels)
        rows.append({"model": "ticket_ensemble", "test_acc": acc, "test_loss": loss, "density": None})
    if not rows:
        raise MissingInput("models/: no model files to evaluate")
    if "superposed" in budget and "warmup" in budget and budget["superposed"] != budget["warmup"]:
        raise BadModelFile(f"models/superposed.safetensors: {budget['superposed']} active weights, but the "
                         f"budget (warmup's masks) is {budget['warmup']}; refusing to report it")
    if "superposed" in budget:
        d = next(r["density"] for r in rows if r["model"] == "superposed")
        target, layers = cfg["dst"]["density"], len(superposed_masks)
        if abs(d - target) * total_masked > layers:
            raise BadModelFile(f"models/superposed.safetensors: density {d:.6f} differs from dst.density={target} "
                             f"by more than one weight per layer; refusing to report it")
    table = validate_evaluation(pd.DataFrame(rows))
    acc = dict(zip(table["model"], table["test_acc"]))
    metrics = {"target_density": cfg["dst"]["density"], "test_acc": acc,
               "test_loss": dict(zip(table["model"], table["test_loss"])),
               "density": {r["model"]: r["density"] for r in rows if r["density"] is not None}}
    best = comparison.best_ticket(acc)
    if "superposed" in acc:
        metrics["gain"] = {}
        if "sparse_baseline" in acc:
            metrics["gain"]["vs_sparse_baseline"] = acc["superposed"] - acc["sparse_baseline"]
        if best is not None:
            metrics["gain"]["vs_best_ticket"] = acc["superposed"] - best
    write_json("metrics/evaluate.json", metrics)  # fractions: the contract; W&B gets the display units
    s.write_metrics(comparison.summary(metrics, cfg["dst"]["method"]), "metrics/summary.json")
    for r in rows:
        density = "" if r["density"] is None else f"  density {r['density']:.4f}"
        log.info(f"evaluate: {r['model']:<16} test_acc {r['test_acc']:.4f}{density}")
    if "superposed" in acc and "sparse_baseline" in acc:
        gain = 100 * metrics["gain"]["vs_sparse_baseline"]
        log.info(f"superposed {acc['superposed']:.4f} vs sparse_baseline {acc['sparse_baseline']:.4f} "
                 f"({gain:+.2f} pts) at density {metrics['density']['superposed']:.3f}")


if __name__ == "__main__":
    main_of("evaluate", run)
