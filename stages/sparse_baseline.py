"""sparse_baseline: the DST method alone for the whole epoch budget (the fair comparison)."""

import hydra
from _stage import Stage, launch, stage
from omegaconf import DictConfig

from suptickets import phases, runtime
from suptickets.sparsity.engine import density_report


def train_sparse(s: Stage, epochs: int):
    """Shared by sparse_baseline and warmup: a DST phase of `epochs` epochs from a fresh mask."""
    cfg = s.cfg
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.new_model(cfg, summary, device)
    opt = runtime.optimizer_for(model, cfg["train"])
    flops = phases.FlopsMeter(model, summary["shape"], cfg["dst"]["method"], cfg["dst"]["update_frequency"])
    start = s.resume(model, opt, ["data/prepared"])
    flops.restore(start["extra"].get("flops", {}))
    s.extra = lambda: {"flops": flops.state()}
    step = phases.sparse_phase(model, opt, data, cfg, epochs=epochs, on_epoch=s.on_epoch, stage=s.name,
                               flops=flops, start_epoch=start["epoch"], step=start["step"])
    overall, layers = density_report(model)
    metrics = {"val_acc": s.history[-1]["val_acc"], "density": overall, "layer_density": layers,
               "flops_ratio": flops.ratio, "epochs": epochs, "steps": step}
    return model, opt, step, metrics


def run(s: Stage) -> None:
    model, _, _, metrics = train_sparse(s, s.cfg["train"]["epochs"])
    s.save_model("models/sparse_baseline.safetensors", model)
    s.write_history()
    s.write_metrics(metrics)
    s.done(metrics["flops_ratio"])


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("sparse_baseline", run, cfg)


if __name__ == "__main__":
    launch(main)
