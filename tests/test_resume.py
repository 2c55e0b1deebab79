"""Resume after interruption: SIGKILL the smoke DAG in the middle of warmup and again in the middle
of tickets, rerun `dvc repro`, and get every output bit-identical to an uninterrupted run (the
`resume_pair` fixture of tests/conftest.py: the shared smoke run is the uninterrupted one)."""

from __future__ import annotations

import re

import pytest
import torch

from suptickets import dvcfiles
from suptickets.models import build_model
from suptickets.resume import Checkpoint, key
from suptickets.sparsity.engine import Masked, init_masks, masks_of


def test_checkpoint_key_depends_on_config_inputs_and_run_folder(tmp_path):
    f = tmp_path / "input.bin"
    f.write_bytes(b"a")
    base = key("warmup", {"seed": 0, "tracking": {"x": 1}}, [f])
    assert key("warmup", {"seed": 0, "tracking": {"x": 2}}, [f]) == base  # tracking is not part of the run
    assert key("warmup", {"seed": 1, "tracking": {"x": 1}}, [f]) != base
    assert key("tickets", {"seed": 0, "tracking": {"x": 1}}, [f]) != base
    assert key("warmup", {"seed": 0, "tracking": {"x": 1}}, [f], workdir="/tmp/exp-a") != base
    f.write_bytes(b"b")
    assert key("warmup", {"seed": 0, "tracking": {"x": 1}}, [f]) != base


def test_checkpoint_round_trip_restores_weights_masks_and_momentum(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 4, hidden=[16])
    init_masks(model, 0.3, "erk", False, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    Masked(model, opt).apply()  # as the loop does after every step
    ck = Checkpoint(tmp_path / "ck")
    ck.save(model, opt, {"epoch": 3, "step": 7, "history": [], "extra": {"a": 1}})
    torch.manual_seed(1)
    fresh = build_model("mlp", (1, 8, 8), 4, hidden=[16])
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    meta = ck.load(fresh, fresh_opt)
    assert meta["epoch"] == 3 and meta["step"] == 7 and meta["extra"] == {"a": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert list(masks_of(fresh)) == list(masks_of(model))
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    ck.clear()
    assert Checkpoint(tmp_path / "ck").load(fresh, fresh_opt) is None


@pytest.mark.e2e
def test_killed_in_warmup_and_in_tickets_then_rerun_gives_identical_outputs(resume_pair):
    out, repo = resume_pair["log"], resume_pair["resumed"]
    assert "warmup: resuming after epoch" not in out  # warmup finished in the second run
    assert re.search(r"tickets: resuming after epoch (9|1[0-5])\b", out), out
    assert dvcfiles.out_hashes(dvcfiles.lock(repo)) == dvcfiles.out_hashes(dvcfiles.lock(resume_pair["uninterrupted"]))
    assert not any((repo / ".cache/suptickets/resume").iterdir()), "checkpoints are removed when stages end"


def test_the_recoveries_the_readme_gives_after_a_ctrl_c_in_dvc_itself(tmp_path):
    """DVC 3 rewrites dvc.lock and .dvc/tmp/rwlock in place (open "w", then dump): an interrupt in that
    moment leaves them cut short or empty, and every later `dvc` command fails. The stages write neither.
    The README's recoveries: `git checkout dvc.lock`; `rm .dvc/tmp/rwlock`."""
    from conftest import make_repo, run

    repo = make_repo(tmp_path / "repo")
    lock = repo / "dvc.lock"
    text = lock.read_text()
    lock.write_text(text[: text.index("    outs:", len(text) // 3) + 7])  # an interrupted dump: "...\n    out"
    assert run(repo, "dvc", "status", check=False).returncode != 0
    run(repo, "git", "checkout", "dvc.lock")
    assert run(repo, "dvc", "status", check=False).returncode == 0
    rwlock = repo / ".dvc/tmp/rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text("")
    failed = run(repo, "dvc", "status", check=False)
    assert failed.returncode != 0 and "RWLock" in failed.stdout + failed.stderr
    rwlock.unlink()
    assert run(repo, "dvc", "status", check=False).returncode == 0
