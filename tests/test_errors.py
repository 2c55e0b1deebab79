"""Errors that tell the truth, through real stage processes: the project's own errors (a setting, a
data or model file the user can fix) are one line and exit 2 with nothing written; anything else is a
bug and keeps its traceback (exit 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import error_lines, run_stage, tree
from suptickets import errors

def test_every_project_error_is_a_suptickets_error_and_keeps_its_old_base():
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DataError, ValueError)
    assert issubclass(errors.TrainingDiverged, RuntimeError) and issubclass(errors.MissingInput, FileNotFoundError)
    assert issubclass(errors.BadModelFile, errors.BadInputFile)
    assert issubclass(errors.SparseFileError, errors.BadModelFile) and issubclass(errors.VerificationFailed, ValueError)
    for name in ("ConfigError", "DataError", "ValidationFailed", "TrainingDiverged", "MissingInput",
                 "BadInputFile", "BadModelFile", "SparseFileError", "VerificationFailed"):
        assert issubclass(getattr(errors, name), errors.SupticketsError), name
    from suptickets.config import ConfigError
    from suptickets.errors import DataError
    from suptickets.schemas import ValidationFailed
    from suptickets.train import TrainingDiverged
    assert (ConfigError, DataError, ValidationFailed, TrainingDiverged) == \
        (errors.ConfigError, errors.DataError, errors.ValidationFailed, errors.TrainingDiverged)


def test_missing_prepared_data_is_one_line_exit_2_and_nothing_is_written(tmp_path):
    proc = run_stage(tmp_path, "dense")
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == [
        "error: dense: data/prepared/train.safetensors: missing prepared split, expected a safetensors "
        "file with 'x' (uint8) and 'y' (int64)"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(tmp_path) == {}


def test_a_model_file_of_another_architecture_is_one_line_exit_2(small_project):
    """evaluate reads a dense model trained for another hidden width: named, not a traceback."""
    from suptickets import runtime
    from suptickets.artifacts import read_json

    project = small_project
    summary = read_json(project / "data/prepared/summary.json")
    cfg = {"seed": 0, "model": {"name": "mlp", "hidden": [16, 8], "batch_norm": True}, "train": {}}
    runtime.save_model(project / "models/dense.safetensors", runtime.new_model(cfg, summary, "cpu"))
    before = tree(project)
    proc = run_stage(project, "evaluate")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith("error: evaluate: models/dense.safetensors: does not fit model MLP: "
                           "net.1.weight: shape (16, 784), expected (64, 784)"), line
    assert tree(project) == before


def test_a_missing_input_model_is_one_line_exit_2(small_project):
    project = small_project
    before = tree(project)
    proc = run_stage(project, "tickets")
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == ["error: tickets: models/warmup.safetensors: no such file"]
    assert tree(project) == before


def test_a_nan_at_a_topology_update_is_one_line_exit_2_and_nothing_is_written(small_project):
    """Divergence found before an update (the ranking would see NaN): the stage named once, epoch and step."""
    before = tree(small_project)
    proc = run_stage(small_project, "sparse_baseline", "train.lr=1e30", "dst.update_frequency=1")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert re.fullmatch(r"error: sparse_baseline: training diverged \(loss (nan|inf)\) at epoch 1, step \d+, "
                        r"before a topology update; lower train.lr or tickets.lr_max", line), line
    assert "Traceback" not in proc.stderr
    assert tree(small_project) == before


@pytest.mark.parametrize("corrupt,raised", [
    # summary.json claims fewer classes than the labels hold: torch's loss raises (IndexError)
    (lambda s: {**s, "num_classes": 5}, "IndexError"),
    # two channel means for one-channel images: the project's own normalize raises a plain ValueError
    (lambda s: {**s, "mean": [0.5, 0.5], "std": [0.3, 0.3]}, "ValueError"),
], ids=["library-error", "plain-valueerror"])
def test_an_error_that_is_not_the_projects_keeps_its_traceback_and_exits_1(small_project, corrupt, raised):
    """A prepared folder edited by hand (DVC would call it modified) reaches code that trusts it: that
    is not a message for the user to act on, so it must not look like one."""
    project = small_project
    path = project / "data/prepared/summary.json"
    path.write_text(json.dumps(corrupt(json.loads(path.read_text()))))
    before = tree(project)
    proc = run_stage(project, "dense", "train.epochs=1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert any(line.startswith(f"{raised}: ") for line in proc.stderr.splitlines()), proc.stderr[-2000:]
    assert "error: dense:" not in proc.stderr
    assert tree(project) == before


# ----------------------------------------------------------------------------------------------
# a bad data root: nothing created outside the repository, the whole reason kept

NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # a closed port: fails at once


@pytest.mark.parametrize("data", ["fashion_mnist", "cifar10"])
def test_a_data_root_that_does_not_exist_creates_nothing_and_keeps_the_whole_reason(tmp_path, data):
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    root = outside / "nonexistent"
    proc = run_stage(project, "prepare", f"data={data}", f"data.root={root}", "hydra.run.dir=.", env=NO_NETWORK)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith("error: prepare: ") and f"download into {root} failed (" in line, line
    assert "<urlopen error [Errno 111] Connection refused>" in line, line  # torchvision's whole message
    assert not outside.exists()
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == []


def test_a_download_lands_in_the_data_root_only_when_it_succeeds(tmp_path, monkeypatch):
    from suptickets.datasets.download import download_into

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "elsewhere" / "root"

    def fetch(folder):
        (Path(folder) / "FashionMNIST" / "raw").mkdir(parents=True)
        (Path(folder) / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"labels")

    def fail(folder):
        (Path(folder) / "half").write_bytes(b"half a file")
        raise RuntimeError("Error downloading x.gz:\nTried http://mirror/, got:\n<urlopen error refused>\n")

    with pytest.raises(errors.DataError) as info:
        download_into(target, fail, "download failed", "set data.root")
    assert str(info.value) == ("download failed (RuntimeError: Error downloading x.gz: Tried http://mirror/, got: "
                               "<urlopen error refused>); set data.root")
    assert not (tmp_path / "elsewhere").exists() and list(tmp_path.iterdir()) == []
    download_into(target, fetch, "download failed", "set data.root")
    assert (target / "FashionMNIST/raw/t10k-labels-idx1-ubyte").read_bytes() == b"labels"
    assert list(tmp_path.iterdir()) == [tmp_path / "elsewhere"]
