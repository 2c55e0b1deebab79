"""superpose: average T0 (warmup) and the tickets (CAA or CIMA), re-prune to the budget, recompute
BatchNorm statistics; writes models/superposed.safetensors."""

import itertools
from pathlib import Path

import pandas as pd
import hydra
from _stage import Stage, launch, log, stage
from omegaconf import DictConfig
from torch.optim.swa_utils import update_bn

from suptickets import runtime
from suptickets.artifacts import model_files, write_text
from suptickets.comparison import is_ticket
from suptickets.errors import BadModelFile, MissingInput
from suptickets.sparsity.engine import attach_masks, masks_of
from suptickets.sparsity.masks import densities
from suptickets.superpose import superpose_steps
from suptickets.train import evaluate


def superposed_files() -> list[Path]:
    """T0 (warmup) and the tickets, in order."""
    tickets = [p for name, p in model_files().items() if is_ticket(name)]
    if not tickets:
        raise MissingInput("models/tickets: no ticket_*.safetensors; run the tickets stage first")
    return [Path("models/warmup.safetensors"), *tickets]


def strict_state(path: Path, model, masked_keys: list[str]) -> dict:
    """A ticket's (or T0's) weights, checked against the architecture; its masks must cover the
    same layers as T0's."""
    state, masks = runtime.read_model_file(path, model)
    if set(masks) != set(masked_keys):
        raise BadModelFile(f"{path}: masks {sorted(set(masks) ^ set(masked_keys))[:3]} differ from "
                         f"models/warmup.safetensors's masked layers")
    return state


def run(s: Stage) -> None:
    cfg, sp = s.cfg, s.cfg["superpose"]
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    bn_batches = data["train"].plain()
    model = runtime.new_model(cfg, summary, device)
    files = superposed_files()
    state0, masks0 = runtime.read_model_file(files[0], model)
    keys = list(masks0)
    counts = [int(m.sum()) for m in masks0.values()]
    states = itertools.chain([state0], (strict_state(f, model, keys) for f in files[1:]))
    rows = []
    for k, state, masks in superpose_steps(states, method=sp["method"], cima_factor=sp["cima_factor"],
                                           reprune_mode=sp["reprune"], masked_keys=keys, counts=counts,
                                           scope=sp["scope"]):
        model.load_state_dict(state, strict=False)  # every weight key was checked; only the mask buffers are absent
        attach_masks(model, {n: masks[n] for n in keys})
        if sp["bn_update"]:
            update_bn(bn_batches.epoch(), model)
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
    log.info(f"superpose: {len(files) - 1} tickets + T0 -> val_acc {rows[-1]['val_acc']:.4f} "
          f"at density {rows[-1]['density']:.4f}")


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("superpose", run, cfg)


if __name__ == "__main__":
    launch(main)
