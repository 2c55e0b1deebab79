"""The user-facing reproducibility check (`make check-repro`) passes on this project."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_check_repro_passes():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/check_repro.py")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outputs bit-identical over two runs" in proc.stdout
