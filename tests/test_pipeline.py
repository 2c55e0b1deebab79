"""End to end: the real dvc CLI runs the smoke DAG in a throwaway copy of the project."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run
from project_copy import compose_params
from suptickets.artifacts import load_tensors, state_from_file

STAGES = ["prepare", "dense", "sparse_baseline", "warmup", "tickets", "superpose", "export", "evaluate", "report",
          "landscape"]
pytestmark = pytest.mark.e2e


def test_params_yaml_is_the_composition_of_params(tmp_path):
    assert (ROOT / "params.yaml").read_text() == compose_params(ROOT, [], tmp_path / "params.yaml")


def test_every_stage_ran_and_wrote_its_outputs(smoke_repo):
    log = (smoke_repo / "exp_run.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    for path in ["data/prepared/train.safetensors", "data/prepared/summary.json", "models/dense.safetensors",
                 "models/sparse_baseline.safetensors", "models/warmup.safetensors",
                 *(f"models/tickets/ticket_{k:02d}.safetensors" for k in range(1, 5)),
                 "models/superposed.safetensors", "plots/dense.csv", "plots/tickets.csv"]:
        assert (smoke_repo / path).is_file(), path
    assert not (smoke_repo / "models/tickets/ticket_05.safetensors").exists()


def test_evaluate_metrics_have_the_contract_keys(smoke_repo):
    m = json.loads((smoke_repo / "metrics/evaluate.json").read_text())
    assert m["target_density"] == 0.1
    tickets = [f"ticket_{k:02d}" for k in range(1, 5)]  # the smoke preset: 4 tickets
    expected = {"dense", "sparse_baseline", "warmup", *tickets, "superposed", "ticket_ensemble"}
    assert set(m["test_acc"]) == expected
    assert all(0.5 < v <= 1 for v in m["test_acc"].values())  # 10 classes: chance is 0.1
    assert set(m["density"]) == expected - {"dense", "ticket_ensemble"}
    assert set(m["gain"]) == {"vs_sparse_baseline", "vs_best_ticket"}
    best = max(m["test_acc"][t] for t in tickets)
    assert m["gain"]["vs_best_ticket"] == pytest.approx(m["test_acc"]["superposed"] - best)


def test_sparse_models_hold_the_budget_within_one_weight_per_layer(smoke_repo):
    from suptickets.sparsity.masks import layer_counts

    for name in ["sparse_baseline", "warmup", *(f"tickets/ticket_{k:02d}" for k in range(1, 5)), "superposed"]:
        state, masks = state_from_file(load_tensors(smoke_repo / f"models/{name}.safetensors"))
        assert len(masks) == 3 and all(k.endswith(".weight") for k in masks), name  # 3 Linear layers
        counts = layer_counts([tuple(m.shape) for m in masks.values()], 0.1, "erk")
        active = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        assert abs(active - round(0.1 * total)) <= len(masks), name
        if name != "superposed":  # prune-and-regrow keeps every layer's count
            assert [int(m.sum()) for m in masks.values()] == counts, name
        for key, mask in masks.items():
            assert (state[key][~mask] == 0).all(), f"{name}: {key} nonzero outside its mask"


def test_second_repro_runs_nothing_and_status_is_clean(smoke_repo):
    proc = run(smoke_repo, "dvc", "repro")
    assert "Running stage" not in proc.stdout, proc.stdout
    assert run(smoke_repo, "dvc", "status", "-q", check=False).returncode == 0


def test_a_queued_experiment_runs_beside_the_existing_one(queued_repo):
    """The README's queue example in a copy of the smoke run: GraNet at 0.02 queued beside the smoke
    run (RigL at 0.1), run by a queue worker in DVC's temporary copy (its W&B runs: test_tracking.py)."""
    repo = queued_repo
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    methods = set()
    for e in exps:
        for rev in e.get("revs", []):
            data = rev.get("data") or {}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            if "dst" in params and (data.get("metrics") or {}).get("metrics/evaluate.json"):
                methods.add((params["dst"]["method"], params["dst"]["density"]))
    assert methods == {("rigl", 0.1), ("granet", 0.02)}, json.dumps(shown)[:2000]
    leftovers = list((repo / ".cache/suptickets/resume").glob("*")) if (repo / ".cache").exists() else []
    assert leftovers == [], "each experiment's checkpoints are its own and removed at the end"
