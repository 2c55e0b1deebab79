"""The user-facing reproducibility check (`make check-repro`, scripts/check_repro.py) on this project:
its comparison of two finished runs, given the suite's own pair of independent runs of one config
(`resume_pair`: the shared smoke run, and the same config killed twice and resumed in a fresh
copy), instead of making two runs of its own."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_check_repro_passes_on_two_independent_runs(resume_pair):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/check_repro.py"), "--runs",
                           str(resume_pair["uninterrupted"]), str(resume_pair["resumed"])],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-repro: OK (params.yaml composed;" in proc.stdout
    assert "outputs bit-identical over two runs; dvc status clean)" in proc.stdout


def test_check_repro_fails_naming_an_output_that_differs(resume_pair, tmp_path):
    """The comparison can fail: a copy of the resumed run with one plot changed (and its lock entry
    kept as DVC wrote it) is reported, output by output."""
    import shutil

    other = shutil.copytree(resume_pair["resumed"], tmp_path / "other", symlinks=True)
    lock = (other / "dvc.lock").read_text()
    (other / "dvc.lock").write_text(lock.replace(_first_plot_md5(lock), "f" * 32, 1))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/check_repro.py"), "--runs",
                           str(resume_pair["uninterrupted"]), str(other)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1
    assert "not reproducible" in proc.stderr and "f" * 32 in proc.stderr, proc.stderr


def _first_plot_md5(lock: str) -> str:
    import yaml

    stages = yaml.safe_load(lock)["stages"]
    return next(o["md5"] for s in stages.values() for o in s.get("outs", []) if o["path"].startswith("plots/"))
