"""Comparing runs: metrics/summary.json, `make compare` over real DVC experiments, the plots DVC
shows, gains in points in W&B, and the progress line, on the suite's shared runs (tests/conftest.py:
the smoke run, and its copy with one queued experiment beside it)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, env_for, run
from test_tracking import read_wandb_records
from suptickets.comparison import percent, summary

pytestmark = pytest.mark.e2e
INTENDED_PLOTS = {"val_acc", "lr", "density", "superpose", *(f"plots/{p}.png" for p in (
    "val_acc", "lr", "density", "test_acc", "layer_density", "mask_overlap", "export_size", "landscape"))}


def test_summary_is_evaluate_in_percent_and_points(smoke_repo):
    evaluate = json.loads((smoke_repo / "metrics/evaluate.json").read_text())
    acc = evaluate["test_acc"]
    best = max(acc[f"ticket_{k:02d}"] for k in range(1, 5))  # the smoke preset: 4 tickets
    expected = {"method": "rigl", "density": 0.1,
                "test_acc_pct": {"superposed": round(100 * acc["superposed"], 4),
                                 "sparse_baseline": round(100 * acc["sparse_baseline"], 4),
                                 "best_ticket": round(100 * best, 4),
                                 "ticket_ensemble": round(100 * acc["ticket_ensemble"], 4),
                                 "dense": round(100 * acc["dense"], 4)},
                "gain_pts": {"vs_sparse_baseline": round(100 * (acc["superposed"] - acc["sparse_baseline"]), 4),
                             "vs_best_ticket": round(100 * (acc["superposed"] - best), 4)}}
    assert summary(evaluate, "rigl") == expected
    # 1,000 test images: every figure is a whole number of tenths of a point, with no float noise left
    assert all(round(v, 1) == v for part in ("test_acc_pct", "gain_pts") for v in expected[part].values())


def test_the_evaluate_stage_writes_summary_json_as_a_dvc_metric(smoke_repo):
    written = json.loads((smoke_repo / "metrics/summary.json").read_text())
    evaluate = json.loads((smoke_repo / "metrics/evaluate.json").read_text())  # the same evaluate run
    method = yaml.safe_load((smoke_repo / "params.yaml").read_text())["dst"]["method"]
    assert written == summary(evaluate, method)
    shown = json.loads(run(smoke_repo, "dvc", "metrics", "show", "--json").stdout)
    assert any("metrics/summary.json" in (rev.get("data") or {}) for rev in shown.values()), shown


def test_wandb_summaries_give_gains_in_points(smoke_repo):
    checked = []
    for folder in (smoke_repo / "wandb").glob("offline-run-*"):
        records = read_wandb_records(next(folder.glob("*.wandb")))
        job = next(r.run.job_type for r in records if r.HasField("run"))
        seen = {u.key: json.loads(u.value_json) for r in records if r.HasField("summary")
                for u in r.summary.update if u.key}
        if job not in ("evaluate", "report"):
            continue
        assert not any(k.startswith("gain.") for k in seen), (job, sorted(seen))
        if job == "evaluate":
            acc = {m: seen[f"test_acc_pct.{m}"] for m in ("superposed", "sparse_baseline")}
            assert seen["gain_pts.vs_sparse_baseline"] == round(acc["superposed"] - acc["sparse_baseline"], 4)
        else:
            assert seen["gain_pts.vs_sparse_baseline"] == percent(
                seen["test_acc.superposed"] - seen["test_acc.sparse_baseline"])
        checked.append(job)
    assert {"evaluate", "report"} <= set(checked)


def test_compare_shows_one_row_per_experiment_gains_in_points(queued_repo):
    repo = queued_repo
    proc = run(repo, "python", str(ROOT / "scripts/compare.py"))
    lines = proc.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["experiment", "method", "density", "seed", "lr_max"]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    by_method = {row["method"]: row for row in rows.values()}
    assert set(by_method) == {"rigl", "granet"}, proc.stdout  # the smoke run's experiment and the queued one
    mine = by_method["rigl"]
    figures = json.loads((repo / "metrics/summary.json").read_text())  # the applied experiment: the smoke run
    assert (mine["density"], mine["seed"], mine["lr_max"]) == ("0.1", "0", "0.05")
    assert (by_method["granet"]["density"], by_method["granet"]["seed"]) == ("0.02", "0")
    assert mine["superposed %"] == f"{figures['test_acc_pct']['superposed']:.2f}"
    assert mine["gain vs sparse_baseline (pts)"] == f"{figures['gain_pts']['vs_sparse_baseline']:+.2f}"
    for row in rows.values():
        for key in ("gain vs sparse_baseline (pts)", "gain vs best ticket (pts)"):
            assert re.fullmatch(r"[+-]\d+\.\d\d|—", row[key]), row
    assert "scripts/compare.py" in subprocess.run(["make", "-n", "compare"], cwd=ROOT, capture_output=True,
                                                  text=True).stdout


def test_a_fresh_run_says_where_it_stands_with_no_earlier_times(smoke_repo):
    first = (smoke_repo / "exp_run.log").read_text()  # a fresh repository: no times yet
    assert "[1/10] prepare — no earlier times to estimate what is left (10 stage(s) expected)" in first
    stages = ["dense", "sparse_baseline", "warmup", "tickets", "superpose", "export", "evaluate", "report", "landscape"]
    for i, stage in enumerate(stages, 2):
        assert f"[{i}/10] {stage} — " in first, stage
    times = json.loads((smoke_repo / ".cache/suptickets/stage_times.json").read_text())["smoke"]
    assert set(times) == {"prepare", *stages}


def test_dvc_plots_show_lists_exactly_the_intended_plots(smoke_copy):
    smoke_repo = smoke_copy  # `dvc plots show` writes dvc_plots/ (git ignores it)
    shown = json.loads(run(smoke_repo, "dvc", "plots", "show", "--json").stdout)["data"]
    assert set(shown) == INTENDED_PLOTS
    [superpose] = shown["superpose"]
    assert superpose["content"]["encoding"]["x"]["field"] == "k"
    assert superpose["content"]["layer"][0]["encoding"]["y"]["field"] == "val_acc"
    run(smoke_repo, "dvc", "plots", "show")  # writes dvc_plots/index.html
    assert (smoke_repo / "dvc_plots/index.html").is_file()
    assert "dvc_plots" not in run(smoke_repo, "git", "status", "--porcelain").stdout


def test_gain_collect_only_with_nothing_to_collect_says_what_to_run(smoke_repo):
    proc = subprocess.run(["python", str(ROOT / "benchmarks/gain.py"), "--collect-only", "--prefix", "absent"],
                          cwd=smoke_repo, env=env_for(smoke_repo), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert "no finished experiments named absent-<levels>-s<seed>" in line
    assert "run `python benchmarks/gain.py` without --collect-only first" in line


@pytest.mark.e2e
def test_compare_marks_a_stale_workspace_and_names_each_rows_preset_and_overrides(smoke_copy):
    """After a failed `dvc exp run` DVC has deleted the failing stage's outputs and params.yaml keeps
    the failed overrides, while the metrics files are the last successful run's: that workspace row
    is marked, not passed off as a result of its params."""
    failed = run(smoke_copy, "dvc", "exp", "run", "-S", "experiment=smoke", "-S", "train.lr=1e30", check=False)
    assert failed.returncode != 0 and "training diverged" in failed.stderr + failed.stdout
    # before it failed, its progress line estimated what was left from the smoke run's stage times
    assert re.search(r"\[\d+/10\] \w+ — about (\d+m)?\d+s left \(last run's times\)", failed.stderr + failed.stdout)
    proc = run(smoke_copy, "python", str(ROOT / "scripts/compare.py"))
    lines = proc.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-2:] == ["preset", "overrides"]
    table = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    [workspace] = [r for r in table if r["experiment"].startswith("workspace")]
    assert workspace["experiment"] == "workspace (stale: outputs not of these params)", proc.stdout
    assert (workspace["preset"], workspace["overrides"]) == ("smoke", "`train.lr=1e+30`"), workspace
    done = sorted((r["preset"], r["overrides"]) for r in table if r is not workspace)
    assert done == [("fashion_mnist_mlp", "—"), ("smoke", "—")], table  # HEAD (the default) and the smoke run
