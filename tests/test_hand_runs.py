"""Stages run by hand (outside DVC) work in a run folder of their own and leave DVC's outputs alone,
and refuse prepared data made for other data settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import error_lines, run_stage, tree
from suptickets import schemas
from suptickets.errors import ValidationFailed


@pytest.fixture()
def project(small_project) -> Path:
    """A folder holding the small data/prepared and an earlier (DVC-tracked, say) dense model."""
    (small_project / "models").mkdir()
    (small_project / "models" / "dense.safetensors").write_bytes(b"DVC's output")
    return small_project


def run_folders(project: Path) -> list[Path]:
    return sorted(p for p in (project / "outputs").glob("*/*") if p.is_dir()) if (project / "outputs").exists() else []


def test_a_stage_run_by_hand_writes_to_its_own_run_folder(project):
    before = tree(project)
    proc = run_stage(project, "dense", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert tree(project / "data") == {k[5:]: v for k, v in before.items() if k.startswith("data/")}
    assert (project / "models/dense.safetensors").read_bytes() == b"DVC's output"
    (folder,) = run_folders(project)
    assert folder.name.endswith("-dense") and f"dense: outputs in {folder.relative_to(project)}/" in proc.stderr
    assert (folder / "data/prepared").is_symlink() and (folder / "data/prepared").resolve() == project / "data/prepared"
    assert (folder / "models/dense.safetensors").stat().st_size > 1000
    assert json.loads((folder / "metrics/dense.json").read_text())["epochs"] == 1
    assert "train.epochs=1" in yaml.safe_load((folder / ".hydra/overrides.yaml").read_text())
    assert yaml.safe_load((folder / ".hydra/config.yaml").read_text())["train"]["epochs"] == 1


def test_hydra_run_dir_dot_writes_into_the_project_itself(project):
    proc = run_stage(project, "dense", "train.epochs=1", "hydra.run.dir=.")
    assert proc.returncode == 0, proc.stderr
    assert run_folders(project) == []
    assert (project / "models/dense.safetensors").read_bytes() != b"DVC's output"


def test_a_chain_run_by_hand_works_in_one_run_folder(project):
    proc = run_stage(project, "chain", "train.epochs=4", "+chain=[warmup,tickets]")
    assert proc.returncode == 0, proc.stderr
    (folder,) = run_folders(project)
    assert folder.name.endswith("-chain")
    assert (folder / "models/warmup.safetensors").is_file() and (folder / "models/tickets/ticket_01.safetensors").is_file()
    assert not (project / "models/warmup.safetensors").exists()


@pytest.mark.parametrize("override,message", [
    ("data.limit_train=300", "data.limit_train=200 there, 300 here"),
    ("seed=1", "seed=0 there, 1 here"),
])
def test_prepared_data_made_for_other_data_settings_are_refused(project, override, message):
    before = tree(project)
    proc = run_stage(project, "dense", "train.epochs=1", override)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith("error: dense: data/prepared was made for other data settings (") and message in line, line
    assert tree(project) == before and run_folders(project) == []  # the run folder is gone again


def test_a_refused_run_removes_the_hydra_run_dir_that_hydra_made_for_it(tmp_path):
    """Hydra makes `hydra.run.dir` before the stage starts; a refusal (a setting, before the run folder
    is entered; an input, after) removes the folders it made, and keeps a folder that was there."""
    (tmp_path / "kept").mkdir()
    for stage, args in [("dense", ["train.lr=-1", "hydra.run.dir=a/b"]),  # refused setting
                        ("dense", ["hydra.run.dir=c/d"]),  # no data/prepared here
                        ("chain", ["+chain=[dense]", "hydra.run.dir=e/f"]),
                        ("dense", ["train.lr=-1", "hydra.run.dir=kept"])]:
        proc = run_stage(tmp_path, stage, *args)
        assert proc.returncode == 2 and len(error_lines(proc)) == 1, proc.stderr
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]


def test_prepared_data_that_record_no_settings_are_refused(project):
    path = project / "data/prepared/summary.json"
    summary = json.loads(path.read_text())
    del summary["config"]
    path.write_text(json.dumps(summary))
    proc = run_stage(project, "dense", "train.epochs=1")
    assert proc.returncode == 2
    assert error_lines(proc) == ["error: dense: data/prepared: records no data settings (made by an older "
                                 "prepare); rerun prepare (dvc repro prepare)"]


def test_the_recorded_data_settings_are_in_the_validated_summary(small_prepared):
    summary = json.loads((small_prepared / "summary.json").read_text())
    assert summary["config"] == {"seed": 0, "data.name": "fashion_mnist", "data.root": None, "data.val_fraction": 0.1,
                                 "data.limit_train": 200, "data.limit_test": 50, "data.folder": None}
    schemas.validate_summary(summary, (1, 28, 28), 10)
    with pytest.raises(ValidationFailed, match="key 'config' is"):
        schemas.validate_summary({**summary, "config": ["seed"]}, (1, 28, 28), 10)
