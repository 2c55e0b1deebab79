"""data/prepared: what `prepare` writes and every other stage reads. A summary of the splits
(sizes, class counts, the normalisation statistics of train) and its tables for validation, the
split files ({train,val,test}.safetensors, uint8 images and int64 labels) with summary.json, and
the check that they were made for the run's data settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from .artifacts import load_tensors, read_json, save_tensors, write_json
from .config import get
from .errors import DataError
from .splits import SPLITS

if TYPE_CHECKING:
    import pandas as pd


# ----------------------------------------------------------------------------------------------
# Summaries


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of x/255 (exact, via 256-bin histograms)."""
    if x.shape[0] == 0:
        nan = [float("nan")] * x.shape[1]
        return nan, list(nan)
    values = torch.arange(256, dtype=torch.float64, device=x.device) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).to(torch.uint8), minlength=256)
        hist = hist.to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return means, stds


def summarize(splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
              classes: Sequence[str]) -> dict:
    """JSON-ready description of prepared splits (normalisation stats come from "train")."""
    train_x = splits["train"][0]
    out_splits = {}
    for name, (x, y) in splits.items():
        mean, std = _channel_stats(x)
        counts = torch.bincount(y.to("cpu", torch.int64), minlength=len(classes)).tolist() \
            if len(y) else [0] * len(classes)
        out_splits[name] = {"size": int(len(y)), "class_counts": counts, "mean": mean, "std": std}
    return {
        "num_classes": len(classes),
        "classes": list(classes),
        "shape": [int(s) for s in train_x.shape[1:]],
        "mean": out_splits["train"]["mean"],
        "std": out_splits["train"]["std"],
        "splits": out_splits,
    }


def summary_tables(summary: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(splits table, class table) of a summary, for validation and reporting.

    splits: one row per split — split, size, channels, height, width, mean, std (channel
    averages). classes: one row per (split, label) in each split's class_counts — split, label,
    count (zero counts included).
    """
    import pandas as pd  # only here: training processes (and a GPU image without pandas) never need it
    channels, height, width = (list(summary["shape"]) + [None, None, None])[:3]
    split_rows, class_rows = [], []
    for name, info in summary["splits"].items():
        mean, std = list(info["mean"]), list(info["std"])
        split_rows.append({
            "split": name, "size": info["size"],
            "channels": channels, "height": height, "width": width,
            "mean": float(np.mean(mean)) if mean else float("nan"),
            "std": float(np.mean(std)) if std else float("nan"),
        })
        for label, count in enumerate(info["class_counts"]):
            class_rows.append({"split": name, "label": label, "count": count})
    splits_df = pd.DataFrame(split_rows, columns=["split", "size", "channels", "height", "width",
                                                  "mean", "std"])
    classes_df = pd.DataFrame(class_rows, columns=["split", "label", "count"])
    return splits_df, classes_df


# ----------------------------------------------------------------------------------------------
# Prepared files


def save_prepared(out_dir: str | os.PathLike,
                  splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                  summary: Mapping) -> None:
    """Write <out_dir>/{train,val,test}.safetensors ("x" uint8, "y" int64), then summary.json."""
    out = Path(out_dir)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"save_prepared: splits {missing} missing, expected {list(SPLITS)}")
    for name in SPLITS:
        x, y = splits[name]
        save_tensors(out / f"{name}.safetensors",
                     {"x": x.to(torch.uint8), "y": y.to(torch.int64)}, metadata={"split": name})
    write_json(out / "summary.json", dict(summary))


def check_prepared_for(summary: Mapping, cfg: Mapping, where: str | os.PathLike) -> None:
    """Refuse prepared data made for other data settings: summary["config"] holds the settings
    prepare read (dotted keys, e.g. "data.limit_train", "seed"); each must equal the run's."""
    recorded = summary.get("config")
    if not isinstance(recorded, Mapping) or not recorded:
        raise DataError(f"{where}: records no data settings (made by an older prepare); rerun prepare "
                        "(dvc repro prepare)")
    here = {k: get(cfg, k, "(missing)") for k in recorded}
    differ = [f"{k}={recorded[k]!r} there, {here[k]!r} here" for k in sorted(recorded) if here[k] != recorded[k]]
    if differ:
        raise DataError(f"{where} was made for other data settings ({'; '.join(differ)}); prepare it for "
                        "these (dvc repro prepare, or dvc exp run with them), or run with the settings it was made for")


def load_prepared(out_dir: str | os.PathLike
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """(splits, summary) as written by save_prepared."""
    out = Path(out_dir)
    splits = {}
    for name in SPLITS:
        path = out / f"{name}.safetensors"
        if not path.is_file():
            raise DataError(f"{path}: missing prepared split, expected a safetensors file with "
                            "'x' (uint8) and 'y' (int64)")
        try:
            tensors = load_tensors(path)
        except Exception as err:
            raise DataError(f"{path}: cannot read safetensors ({type(err).__name__}: {err})") \
                from None
        if set(tensors) != {"x", "y"}:
            raise DataError(f"{path}: holds tensors {sorted(tensors)}, expected ['x', 'y']")
        splits[name] = (tensors["x"], tensors["y"])
    path = out / "summary.json"
    if not path.is_file():
        raise DataError(f"{path}: missing prepared summary, expected the JSON from save_prepared")
    try:
        summary = read_json(path)
    except ValueError as err:
        raise DataError(f"{path}: invalid JSON ({err})") from None
    return splits, summary
