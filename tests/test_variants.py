"""Other DST methods and densities through the real stage functions, without DVC: `stages/chain.py`
runs sparse_baseline → warmup → tickets → superpose → evaluate in one process on a small subset
(GraNet goes end to end through `dvc exp run`: the README's example, tests/test_readme.py)."""

from __future__ import annotations

import json

import pytest

from conftest import check_budget, run_stage

CHAIN = "+chain=[dense,sparse_baseline,warmup,tickets,superpose,evaluate]"


@pytest.mark.parametrize("overrides,density", [(["dst=set"], 0.1), (["dst.density=0.02"], 0.02)],
                         ids=["set", "density-0.02"])
def test_a_method_or_density_variant_trains_to_its_exact_budget(small_project, overrides, density):
    # 6 epochs: 4 of warmup and 2 one-epoch tickets (the smoke preset's 16 cost more and test no more)
    proc = run_stage(small_project, "chain", "train.epochs=6", "tickets.cycle_rate=0.34", "tickets.cycle_epochs=1",
                     "train.batch_size=16", CHAIN, *overrides, "hydra.run.dir=.", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # at 0.02 global re-pruning can empty a layer of this tiny MLP: reported, not hidden
    check_budget(small_project, density, may_empty=density == 0.02)
    tickets = json.loads((small_project / "metrics/tickets.json").read_text())
    assert tickets["n_tickets"] == 2 and set(tickets["tickets"]) == {"ticket_01", "ticket_02"}
