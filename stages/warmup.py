"""warmup: the DST method for the first E - C epochs; leaves T0 and what `tickets` needs to go on."""

import hydra
from _stage import Stage, launch, stage
from omegaconf import DictConfig
from sparse_baseline import train_sparse

from suptickets import runtime
from suptickets.schedules import epoch_split


def run(s: Stage) -> None:
    t = s.cfg["tickets"]
    warmup_epochs, _, _ = epoch_split(s.cfg["train"]["epochs"], t["cycle_rate"], t["cycle_epochs"])
    model, opt, step, metrics = train_sparse(s, warmup_epochs)
    s.save_model("models/warmup.safetensors", model)
    if s.rank == 0:
        runtime.save_optimizer("models/warmup.optim.safetensors", model, opt, step)
    s.write_history()
    s.write_metrics(metrics)
    s.done(metrics["flops_ratio"])


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("warmup", run, cfg)


if __name__ == "__main__":
    launch(main)
