"""Sweeps outside DVC: Hydra multirun through the submitit launcher (submitit_local here, SLURM on a
cluster) over `stages/chain.py`, each job in its own folder."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, WANDB_AS_CONFIGURED, make_repo, run
from suptickets.dvcfiles import chain_inputs, stages, upstream
from suptickets.sweep import link_inputs
from test_tracking import read_wandb_records

STAGES = stages(ROOT)


def test_chain_inputs_are_what_the_chain_reads_and_does_not_write():
    assert chain_inputs(STAGES, ["warmup", "tickets", "superpose"]) == ["data/prepared"]
    assert chain_inputs(STAGES, ["tickets"]) == ["data/prepared", "models/warmup.safetensors",
                                                 "models/warmup.optim.safetensors"]
    later = chain_inputs(STAGES, ["superpose", "evaluate"])
    assert {"models/warmup.safetensors", "models/tickets", "models/dense.safetensors",
            "models/sparse_baseline.safetensors"} <= set(later)
    assert "models/superposed.safetensors" not in later and not any(p.startswith(("src/", "stages/")) for p in later)
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]"):
        chain_inputs(STAGES, ["trian"])


def test_upstream_is_what_dvc_repro_of_the_targets_runs_in_order():
    assert upstream(STAGES, ["evaluate"]) == ["prepare", "dense", "sparse_baseline", "warmup", "tickets", "superpose",
                                              "evaluate"]
    assert upstream(STAGES, ["tickets", "dense"]) == ["prepare", "dense", "warmup", "tickets"]
    assert upstream(STAGES, ["prepare"]) == ["prepare"]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['evaluat'\]"):
        upstream(STAGES, ["evaluat"])


def test_link_inputs_links_what_exists_and_reports_the_rest(tmp_path):
    project, job = tmp_path / "p", tmp_path / "j"
    (project / "data/prepared").mkdir(parents=True)
    (project / "data/prepared/summary.json").write_text("{}")
    assert link_inputs(project, job, ["data/prepared", "models/warmup.safetensors"]) == ["models/warmup.safetensors"]
    assert (job / "data/prepared").is_symlink() and (job / "data/prepared/summary.json").read_text() == "{}"


@pytest.mark.e2e
def test_a_submitit_local_sweep_runs_each_job_in_its_own_folder(tmp_path):
    repo = make_repo(tmp_path / "repo")
    run(repo, "python", "stages/prepare.py", "experiment=smoke", "tracking.wandb.mode=disabled", "hydra.run.dir=.")
    proc = run(repo, "python", "stages/chain.py", "-m", "hydra/launcher=submitit_local", "experiment=smoke",
               "+chain=[warmup,tickets,superpose]", "tickets.lr_max=0.01,0.05", "hydra.sweep.dir=sweep",
               timeout=900, wandb=WANDB_AS_CONFIGURED)
    jobs = sorted(p for p in (repo / "sweep").iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout + proc.stderr
    results = {}
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
        lr_max = next(o for o in overrides if o.startswith("tickets.lr_max="))
        assert (job / "data/prepared").is_symlink()
        assert (job / "models/tickets/ticket_02.safetensors").is_file()
        results[lr_max] = json.loads((job / "metrics/superpose.json").read_text())
        names = set()
        for r in (job / "wandb").glob("offline-run-*"):
            records = read_wandb_records(next(r.glob("*.wandb")))
            names.add(next(rec.run.display_name for rec in records if rec.HasField("run")))
        assert names == {f"smoke {lr_max} · {s}" for s in ("warmup", "tickets", "superpose")}
    assert set(results) == {"tickets.lr_max=0.01", "tickets.lr_max=0.05"}
    assert results["tickets.lr_max=0.01"]["steps"] != results["tickets.lr_max=0.05"]["steps"]
    assert not list((repo / "models").rglob("*.safetensors"))  # the project's own outputs are untouched
    assert run(repo, "git", "status", "--porcelain").stdout.split("\n")[0] == "?? sweep/"  # dvc.lock too


def test_a_chain_refuses_an_unknown_stage_before_any_work(tmp_path):
    repo = make_repo(tmp_path / "repo")
    proc = run(repo, "python", "stages/chain.py", "+chain=[warmup,tikets]", check=False)
    assert proc.returncode == 2 and "error: chain: unknown stage(s) ['tikets']" in proc.stderr, proc.stderr
    assert not (repo / "outputs").exists()


def test_a_chain_in_its_own_folder_refuses_missing_inputs_but_a_dense_model_evaluate_only_reports(tmp_path):
    """A chain run in a folder of its own links its inputs from the project and refuses to start
    without them, naming each; evaluate's dense model is not one of them (it scores the models
    present; the GPU check's gain lanes evaluate sparse runs that never train a dense model)."""
    repo = make_repo(tmp_path / "repo")
    proc = run(repo, "python", "stages/chain.py", "experiment=smoke", "+chain=[superpose,evaluate]",
               "hydra.run.dir=job", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: chain: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "data/prepared, models/warmup.safetensors, models/tickets, models/sparse_baseline.safetensors: missing" \
        in errors[0] and "models/dense" not in errors[0], errors
    assert not (repo / "job").exists()  # refused: not even the run folder Hydra made for it is left
