"""sparse_baseline: the DST method alone for the whole epoch budget (the fair comparison)."""

import hydra
from _stage import Stage, launch, stage
from _training import train_sparse, write_outputs
from omegaconf import DictConfig


def run(s: Stage) -> None:
    model, _, _, metrics = train_sparse(s, s.cfg["train"]["epochs"])
    write_outputs(s, model, "models/sparse_baseline.safetensors", metrics)


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("sparse_baseline", run, cfg)


if __name__ == "__main__":
    launch(main)
