"""The training stages under torchrun: 2 CPU processes with gloo, chosen in the config."""

from __future__ import annotations

import json
import re

import pytest

from conftest import make_repo, run
from test_pipeline import STAGES, compose

pytestmark = pytest.mark.e2e


def test_two_process_smoke_dag_keeps_ranks_in_sync_and_matches_one_process(smoke_repo, tmp_path):
    repo = make_repo(tmp_path / "repo")
    compose(["experiment=smoke", "launcher.nproc_per_node=2", "launcher.check_sync=true"], repo / "params.yaml")
    proc = run(repo, "dvc", "repro")
    out = proc.stdout + proc.stderr
    for stage in ["sparse_baseline", "warmup", "tickets"]:
        m = re.search(rf"{stage}: masks and weights identical on all 2 ranks at each of (\d+) topology updates", out)
        assert m and int(m.group(1)) > 0, out[-3000:]
    two = json.loads((repo / "metrics/evaluate.json").read_text())["test_acc"]
    one = json.loads((smoke_repo / "first_evaluate.json").read_text())["test_acc"]
    assert set(two) == set(one)
    for model in one:  # same global batch and lr; only BN batch statistics are per rank
        assert abs(two[model] - one[model]) < 0.05, (model, one[model], two[model])
    runs = list((repo / "wandb").glob("offline-run-*"))
    assert len(runs) == len(STAGES), "only rank 0 logs to W&B"
