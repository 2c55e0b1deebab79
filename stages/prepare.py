"""prepare: load the data set, carve the validation split, validate with pandera, write tensors
(or, for a folder data set such as ImageNet, a manifest of files checked to exist and decode)."""

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from _stage import Stage, declared_settings, log, main_of

from suptickets.artifacts import write_json, write_text
from suptickets.choices import FOLDER_DATASETS

OUT = Path("data/prepared")


def write_atomically(files: Callable[[Path], None]) -> None:
    """Build data/prepared in a temporary sibling folder, then swap it in: never half-written."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepared.", dir=OUT.parent))
    try:
        files(tmp)
        shutil.rmtree(OUT, ignore_errors=True)
        tmp.rename(OUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_folder(s: Stage) -> None:
    """A data set too large for tensors: a pandera-validated manifest of files that exist and decode."""
    import pandas as pd

    from suptickets.imagefolder import MANIFEST, build_manifest, check_files, manifest_summary
    from suptickets.schemas import validate_manifest, validate_summary

    d = s.cfg["data"]
    splits, classes = build_manifest(d["root"], d["val_fraction"], s.cfg["seed"], d["limit_train"], d["limit_test"])
    manifest = validate_manifest(pd.DataFrame([(p, label, name) for name, rows in splits.items() for p, label in rows],
                                              columns=["path", "label", "split"]), len(classes))
    if d["folder"]["check_decode"]:
        check_files(d["root"], manifest["path"].tolist(), workers=max(d["workers"], 1))
    summary = {**manifest_summary(splits, classes, d["folder"]["image_size"], d["root"]), "config": data_settings(s)}
    shape = tuple(summary["shape"])
    validate_summary(summary, shape, len(classes))
    write_atomically(lambda tmp: (write_text(tmp / MANIFEST, manifest.to_csv(index=False)),
                                  write_json(tmp / "summary.json", summary)))
    finish(s, summary, shape)


def data_settings(s: Stage) -> dict:
    """What the prepared data were made from (prepare's params in dvc.yaml), recorded in summary.json
    so that a run with other data settings refuses them (runtime.load_batches)."""
    return declared_settings(s.cfg, "prepare")


def finish(s: Stage, summary: dict, shape: tuple) -> None:
    sizes = {k: v["size"] for k, v in summary["splits"].items()}
    s.run.summary({f"{k}_size": v for k, v in sizes.items()})
    log.info(f"prepare: {s.cfg['data']['name']} train {sizes['train']}, val {sizes['val']}, "
             f"test {sizes['test']} images of shape {list(shape)}")


def run(s: Stage) -> None:
    import suptickets.imagefolder  # noqa: F401  (run_folder's: loaded for every data set, as dvc.yaml declares)

    d = s.cfg["data"]
    if d["name"] in FOLDER_DATASETS:
        return run_folder(s)
    from suptickets.datasets import load_raw
    from suptickets.prepared import save_prepared, summarize
    from suptickets.schemas import validate_summary, validate_tensors
    from suptickets.splits import prepare_splits

    raw = load_raw(d["name"], d["root"], d["download"])
    splits = prepare_splits(raw, d["val_fraction"], s.cfg["seed"], d["limit_train"], d["limit_test"])
    summary = {**summarize(splits, raw.classes), "config": data_settings(s)}
    shape = tuple(raw.train_x.shape[1:])
    validate_tensors(splits, shape, len(raw.classes))
    validate_summary(summary, shape, len(raw.classes))
    write_atomically(lambda tmp: save_prepared(tmp, splits, summary))
    finish(s, summary, shape)


if __name__ == "__main__":
    main_of("prepare", run)
