"""The README's `dvc exp run` and hand-run examples, taken from its code blocks and run exactly as
written, in a copy of the smoke run (DVC's run cache skips the stages it has seen). An example that
cannot run here says so in its comment: `(not run by the tests...: why)`."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from conftest import README_QUEUE, ROOT, check_budget, run

SKIPPED = "(not run by the tests"


def examples(text: str) -> list[tuple[str, str]]:
    """(command, comment) of every line of the README's ```sh blocks (continued lines joined)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command, _, comment = line.partition("  #")
            if command.strip():
                out.append((" ".join(command.split()), comment.strip()))
    return out


README = examples((ROOT / "README.md").read_text())
DVC_RUNS = [(c, why) for c, why in README if c.startswith("dvc exp run ")]
HAND_RUNS = [(c, why) for c, why in README if c.startswith(".venv/bin/python stages/")]
RUN = [c for c, why in DVC_RUNS + HAND_RUNS if SKIPPED not in why and c not in README_QUEUE]


def test_the_examples_are_found_and_every_one_left_out_says_why():
    assert "dvc exp run -S experiment=smoke -S dst=granet -S dst.density=0.02" in RUN
    assert ".venv/bin/python stages/dense.py experiment=smoke train.epochs=2 device=cpu" in RUN
    left_out = [(c, why) for c, why in DVC_RUNS + HAND_RUNS if c not in RUN and c not in README_QUEUE]
    assert all(re.search(r"\(not run by the tests[^:]*: \S", why) for _, why in left_out), left_out


def granet_checks(repo: Path) -> None:
    """GraNet pruned from density 0.5 to exactly 0.02 in the warmup's window; every sparse model holds
    the budget within one weight per layer; the models learned."""
    check_budget(repo, 0.02, may_empty=True)
    baseline = json.loads((repo / "metrics/sparse_baseline.json").read_text())
    assert baseline["flops_ratio"] > 0.05  # counted at the densities used: from 0.5 down to 0.02
    with open(repo / "plots/sparse_baseline.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["density"]) > 0.02 and float(rows[-1]["density"]) == pytest.approx(0.02, abs=1e-3)


@pytest.mark.e2e
def test_the_readme_queue_example_is_run_as_written_by_the_queued_fixture(queued_repo):
    """tests/conftest.py's `queued_repo` runs these README lines, in order, in a copy of the smoke run."""
    commands = [c for c, _ in README]
    assert all(line in commands for line in README_QUEUE), README_QUEUE
    assert commands.index(README_QUEUE[1]) == commands.index(README_QUEUE[0]) + 1
    shown = run(queued_repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    assert shown.count("\n") >= 3  # header, the workspace / HEAD, and the experiments


@pytest.mark.e2e
def test_the_readme_examples_run_as_written(smoke_copy):
    repo = smoke_copy
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the README's .venv: the one running the tests
    order = [c for c, _ in README if c in RUN]
    for command in order:
        proc = run(repo, "bash", "-c", command, check=False, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if "dst=granet" in command:  # GraNet end to end, at density 0.02
            granet_checks(repo)
        if command.startswith(".venv/bin/python stages/dense.py"):  # by hand: in a run folder of its own
            (made,) = list((repo / "outputs").glob("*/*-dense/models/dense.safetensors"))
            assert made.stat().st_size > 1000
            assert run(repo, "dvc", "status", "-q", check=False).returncode == 0  # DVC's outputs untouched

