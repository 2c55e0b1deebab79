"""superpose: average T0 (warmup) and the tickets (CAA or CIMA), re-prune to the budget, recompute
BatchNorm statistics; writes models/superposed.safetensors."""

import itertools

from _stage import Stage, log, main_of

from suptickets.artifacts import write_text


def run(s: Stage) -> None:
    import pandas as pd

    from suptickets import runtime
    from suptickets.sparsity.engine import masks_of
    from suptickets.sparsity.masks import densities
    from suptickets.superpose import load_state, read_like_t0, starting_point, superpose_steps
    from suptickets.train import evaluate

    cfg, sp = s.cfg, s.cfg["superpose"]
    data, bn_batches, model, (state0, masks0), tickets, counts = starting_point(cfg)
    keys = list(masks0)
    states = itertools.chain([state0], (read_like_t0(f, model, keys)[0] for f in tickets))
    rows = []
    for k, state, masks in superpose_steps(states, method=sp["method"], cima_factor=sp["cima_factor"],
                                           reprune_mode=sp["reprune"], masked_keys=keys, counts=counts,
                                           scope=sp["scope"]):
        load_state(model, state, {n: masks[n] for n in keys}, bn_batches if sp["bn_update"] else None)
        val_acc, val_loss = evaluate(model, data["val"])
        rows.append({"k": k, "val_acc": val_acc, "val_loss": val_loss, "density": densities(masks_of(model))[0]})
        s.run.log({"superpose/val_acc": val_acc, "superpose/k": k})
    runtime.save_model("models/superposed.safetensors", model)
    write_text("plots/superpose.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    empty = [k for k in keys if not bool(masks[k].any())]
    if empty:  # global magnitude re-pruning compares magnitudes across layers; BN makes them incomparable
        log.warning(f"superpose: the global re-prune left no weights in {', '.join(empty)}; such a model is "
                    f"usually dead: consider superpose.scope=layerwise")
    s.write_metrics({"val_acc": rows[-1]["val_acc"], "density": rows[-1]["density"], "budget": sum(counts),
                     "empty_layers": empty,
                     "steps": {f"S_{r['k']:02d}": r["val_acc"] for r in rows}})
    log.info(f"superpose: {len(tickets)} tickets + T0 -> val_acc {rows[-1]['val_acc']:.4f} "
          f"at density {rows[-1]['density']:.4f}")


if __name__ == "__main__":
    main_of("superpose", run)
