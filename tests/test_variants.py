"""Other DST methods and densities through the real stage functions, without DVC: `stages/chain.py`
runs sparse_baseline → warmup → tickets → superpose → evaluate in one process on a small subset
(GraNet goes end to end through `dvc exp run`: the README's example, tests/test_readme.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL, STAGE_ENV

CHAIN = "+chain=[dense,sparse_baseline,warmup,tickets,superpose,evaluate]"


@pytest.mark.parametrize("overrides,density", [(["dst=set"], 0.1), (["dst.density=0.02"], 0.02)],
                         ids=["set", "density-0.02"])
def test_a_method_or_density_variant_trains_to_its_exact_budget(small_prepared, tmp_path, overrides, density):
    shutil.copytree(small_prepared, tmp_path / "data" / "prepared")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/chain.py"), *SMALL, "train.epochs=6", "train.batch_size=16",
                           CHAIN,
                           *overrides, "hydra.run.dir=."], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=STAGE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert m["target_density"] == density
    for name, d in m["density"].items():  # exact up to one weight per layer (3 Linear layers)
        assert d == pytest.approx(density, abs=3 / (784 * 64 + 64 * 32 + 32 * 10)), name
    assert m["test_acc"]["sparse_baseline"] > 0.3  # 10 classes; at 0.02 the smoke MLP keeps ~1,000 weights
    if density == 0.1:
        assert m["test_acc"]["superposed"] > 0.3
    else:  # global re-pruning can empty a layer of this tiny MLP at 0.02: reported, not hidden
        empty = json.loads((tmp_path / "metrics/superpose.json").read_text())["empty_layers"]
        assert empty or m["test_acc"]["superposed"] > 0.3
    tickets = json.loads((tmp_path / "metrics/tickets.json").read_text())
    assert tickets["n_tickets"] == 2 and set(tickets["tickets"]) == {"ticket_01", "ticket_02"}
