"""The command-line tools beside the pipeline: every benchmark option explained with the default's
cost, and the W&B Report comparison built offline (nothing sent, no login)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def options_without_help(text: str) -> list[str]:
    """Options of an argparse --help text that have no explanation: an option line (two spaces,
    then -x or --xx) followed neither by text on its own line nor by an indented continuation."""
    lines = text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (-{1,2}[\w-]+)(?:[ ,][^ ].*?)?(?:\s{2,}(\S.*))?$", line)
        if not m:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not m.group(2) and not re.match(r"^\s{20,}\S", following):
            bare.append(m.group(1))
    return bare


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_option_is_explained_and_the_default_cost_stated(script):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
                                                       "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    options = re.findall(r"^  (-{1,2}[\w-]+)", text, re.M)
    assert "--json" in options or "--collect-only" in options or "--dry-run" in options  # the parse found options
    assert options_without_help(text) == [], text
    assert re.search(r"Cost( \(not measured yet\))?: ", text), text


def test_the_help_parser_catches_an_option_without_help():
    text = "options:\n  -h, --help  show this help\n  --bare BARE\n  --ok OK     explained\n"
    assert options_without_help(text) == ["--bare"]


def test_wandb_report_is_built_offline_with_its_panels_and_filters():
    import wandb_workspaces.reports.v2 as wr

    from wandb_report import COLUMNS, build_report

    report = build_report("suptickets", "someone", groups=["gain-d0.05-s0", "gain-d0.05-s1"])
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 2
    training, evaluation = grids
    [runs] = training.runsets
    assert (runs.entity, runs.project) == ("someone", "suptickets")
    assert str(runs.filters) == ("Metric(\"JobType\") in ['dense', 'sparse_baseline', 'warmup', 'tickets'] and "
                                 "Metric(\"Group\") in ['gain-d0.05-s0', 'gain-d0.05-s1']")
    val, lr = [p for p in training.panels if isinstance(p, wr.LinePlot)]
    assert (val.x, val.y) == ("epoch", ["val_acc"]) and (lr.x, lr.y) == ("step", ["lr"])
    [runs] = evaluation.runsets
    assert str(runs.filters) == "Metric(\"JobType\") in ['evaluate'] and Metric(\"Group\") in ['gain-d0.05-s0', 'gain-d0.05-s1']"
    shown = [COLUMNS[c] for c in runs.column_order]
    assert runs.lock_columns and {"method", "density", "seed", "gain vs sparse_baseline (pts)"} <= set(shown)
    assert {"config:dst.value.method", "config:dst.value.density", "config:seed.value",
            "summary:gain_pts.vs_sparse_baseline"} <= set(runs.pinned_columns + runs.visible_columns)
    acc, gains = evaluation.panels
    assert [m.name for m in acc.metrics] == [f"test_acc_pct.{m}" for m in
                                            ("superposed", "sparse_baseline", "best_ticket", "ticket_ensemble", "dense")]
    assert [m.name for m in gains.metrics] == ["gain_pts.vs_sparse_baseline", "gain_pts.vs_best_ticket"]


def test_wandb_report_without_save_prints_the_outline_and_needs_no_login(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: nothing to log in with
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from wandb_report import main

    assert main(["--group", "exp-a"]) == 0
    out = capsys.readouterr().out
    assert "in project (your default entity)/suptickets" in out
    assert "line plot \"Validation accuracy per epoch (each stage's run)\": val_acc against epoch" in out
    assert "runs table: run, experiment, method, density, seed, lr_max" in out
    assert "not saved: add --save" in out
