"""Live metrics: after each epoch a training stage rewrites its declared outputs plots/<stage>.csv
(the history so far) and metrics/<stage>.json (that epoch's row), which DVC reads from a running
experiment's workspace (`dvc exp show`, `dvc plots show`); a failed stage removes them."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "stages"))
from _stage import Stage  # noqa: E402

from suptickets.tracking import Run  # noqa: E402


def row(epoch: int) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.1, "train_loss": 1.0 / epoch, "train_acc": 0.5 + epoch / 100,
            "val_acc": 0.4 + epoch / 100, "val_loss": 1.2 / epoch, "density": 0.05}


def test_each_epoch_rewrites_the_stages_metrics_and_history_and_a_failure_removes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage = Stage("warmup", {}, Run(None))
    stage.on_epoch(row(1))
    stage.on_epoch(row(2))
    assert json.loads((tmp_path / "metrics/warmup.json").read_text()) == row(2)
    with open(tmp_path / "plots/warmup.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2] and float(history[1]["val_acc"]) == pytest.approx(row(2)["val_acc"], rel=1e-6)
    stage.discard_live()
    assert not (tmp_path / "metrics/warmup.json").exists() and not (tmp_path / "plots/warmup.csv").exists()


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Stage("warmup", {}, Run(None), rank=1).on_epoch(row(1))
    assert list(tmp_path.iterdir()) == []
