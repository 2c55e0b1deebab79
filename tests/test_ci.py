"""The team's CI: the workflow file passes a linter for GitHub workflows (and the linter does reject
a broken one), it runs the plain script any CI can call, and the script's report, made on two real
commits of a smoke run (RigL at 0.1, then the queued experiment, GraNet at 0.02, applied and committed), shows
the param change and the metrics it moved."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_repo, queued_experiment, run

WORKFLOW = ROOT / ".github/workflows/pipeline.yml"
LINT = [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]


def test_the_workflow_passes_the_linter_which_rejects_a_broken_one(tmp_path):
    assert subprocess.run([*LINT, str(WORKFLOW)], capture_output=True, text=True).returncode == 0
    broken = yaml.safe_load(WORKFLOW.read_text())
    del broken["jobs"]["check"]["runs-on"]
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    proc = subprocess.run([*LINT, str(tmp_path / "broken.yml")], capture_output=True, text=True)
    assert proc.returncode != 0 and "runs-on" in proc.stdout + proc.stderr


def test_the_workflow_runs_the_plain_script_with_the_readme_setup():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["check"]["steps"]
    assert any(step.get("run") == "scripts/ci.sh" for step in steps)
    script = (ROOT / "scripts/ci.sh").read_text()
    assert "make setup" in script and "make pull" in script and "make check-repro" in script
    assert "scripts/ci_report.py" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/ci.sh")]).returncode == 0


@pytest.mark.e2e
def test_the_report_on_two_commits_shows_the_param_change_and_the_metrics(queued_repo, tmp_path):
    repo = copy_repo(queued_repo, tmp_path / "repo")
    granet = queued_experiment(repo)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "smoke run, RigL at 0.1")
    base = run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    run(repo, "dvc", "exp", "apply", granet)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "GraNet at 0.02")

    out = run(repo, "python", "scripts/ci_report.py", "--base", base).stdout
    sections = dict(re.findall(r"^## (\w+)\n\n(.*?)(?=^## |\Z)", out, flags=re.S | re.M))
    assert set(sections) == {"Params", "Metrics", "Experiments", "Figures"}, out
    assert re.search(r"\| params\.yaml \| dst\.density\s+\| 0\.1\s+\| 0\.02\s+\|", sections["Params"]), sections["Params"]
    before = json.loads(run(repo, "git", "show", f"{base}:metrics/summary.json").stdout)
    after = json.loads((repo / "metrics/summary.json").read_text())
    row = re.search(r"\| metrics/summary\.json\s+\| test_acc_pct\.superposed\s+\|\s*(\S+)\s*\|\s*(\S+)\s*\|",
                    sections["Metrics"])
    assert row and [float(v) for v in row.groups()] == [before["test_acc_pct"]["superposed"],
                                                         after["test_acc_pct"]["superposed"]], sections["Metrics"]
    assert sections["Experiments"].startswith("| experiment | method | density | seed")
    assert "![val_acc](plots/val_acc.png)" in sections["Figures"]

    proc = run(repo, "python", "scripts/ci_report.py", "--base", "no-such-branch", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "no-such-branch" in proc.stderr


def test_the_long_tests_named_for_the_suites_order_exist_and_read_a_shared_run_or_none():
    """conftest.LONG_READERS and LONG_E2E order the suite (`make test`); a renamed test would silently
    drop out."""
    import importlib
    import inspect

    from conftest import BUILT, LONG_E2E, LONG_READERS

    for name in LONG_READERS + LONG_E2E:
        module, _, function = name.partition("::")
        test = getattr(importlib.import_module(module.removesuffix(".py")), function, None)
        assert test is not None, f"{name}: no such test"
        shared = set(inspect.signature(test).parameters) & {*BUILT, "smoke_copy"}
        assert shared if name in LONG_READERS else not shared, f"{name}: {sorted(shared)}"
