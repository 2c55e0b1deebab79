"""prepare: load the data set, carve the validation split, validate with pandera, write tensors."""

import shutil
import tempfile
from pathlib import Path

import hydra
from _stage import Stage, launch, log, stage
from omegaconf import DictConfig

from suptickets.data import load_raw, prepare_splits, save_prepared, summarize
from suptickets.schemas import validate_summary, validate_tensors

OUT = Path("data/prepared")


def run(s: Stage) -> None:
    d = s.cfg["data"]
    raw = load_raw(d["name"], d["root"], d["download"])
    splits = prepare_splits(raw, d["val_fraction"], s.cfg["seed"], d["limit_train"], d["limit_test"])
    summary = summarize(splits, raw.classes)
    shape = tuple(raw.train_x.shape[1:])
    validate_tensors(splits, shape, len(raw.classes))
    validate_summary(summary, shape, len(raw.classes))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepared.", dir=OUT.parent))
    try:
        save_prepared(tmp, splits, summary)
        shutil.rmtree(OUT, ignore_errors=True)
        tmp.rename(OUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s.run.summary({f"{k}_size": v["size"] for k, v in summary["splits"].items()})
    log.info(f"prepare: {d['name']} train {len(splits['train'][1])}, val {len(splits['val'][1])}, "
          f"test {len(splits['test'][1])} images of shape {list(shape)}")


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("prepare", run, cfg)


if __name__ == "__main__":
    launch(main)
