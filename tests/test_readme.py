"""The README's `dvc exp run` and hand-run examples, taken from its code blocks and run exactly as
written, in a copy of the smoke run (DVC's run cache skips the stages it has seen). An example that
cannot run here says so in its comment: `(not run by the tests...: why)`."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run

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
RUN = [c for c, why in DVC_RUNS + HAND_RUNS if SKIPPED not in why]


def test_the_examples_are_found_and_every_one_left_out_says_why():
    assert "dvc exp run -S experiment=smoke -S dst=granet -S dst.density=0.02" in RUN
    assert ".venv/bin/python stages/dense.py experiment=smoke train.epochs=2 device=cpu" in RUN
    left_out = [(c, why) for c, why in DVC_RUNS + HAND_RUNS if c not in RUN]
    assert all(re.search(r"\(not run by the tests[^:]*: \S", why) for _, why in left_out), left_out


@pytest.mark.e2e
def test_the_readme_examples_run_as_written(smoke_repo, tmp_path):
    def ignore(folder, names):  # W&B runs and resume checkpoints are not needed
        return {n for n in names if folder == str(smoke_repo) and n in ("wandb", ".cache")}

    repo = Path(shutil.copytree(smoke_repo, tmp_path / "repo", symlinks=True, ignore=ignore))
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the README's .venv: the one running the tests
    order = [c for c, _ in README if c in RUN]
    for command in order:
        proc = run(repo, "bash", "-c", command, check=False, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if "dst.density=0.02" in command:
            assert json.loads((repo / "metrics/evaluate.json").read_text())["target_density"] == 0.02
        if command.startswith(".venv/bin/python stages/dense.py"):  # by hand: in a run folder of its own
            (made,) = list((repo / "outputs").glob("*/*-dense/models/dense.safetensors"))
            assert made.stat().st_size > 1000
            assert run(repo, "dvc", "status", "-q", check=False).returncode == 0  # DVC's outputs untouched

