"""Build a W&B Report that compares the pipeline's runs in a W&B project (with `wandb-workspaces`):
validation accuracy per epoch of every training stage, the learning rate, the test accuracy of
each model (%), and a runs table of the evaluate runs with method, density, seed and the gains (in
points), optionally only for some experiments (W&B groups: one per DVC experiment, e.g. a sweep's).

Without --save it only prints what it built; nothing leaves the machine and no login is needed.
--save publishes the report: it needs `wandb login` and network, and the runs already synced to
W&B (`wandb sync wandb/offline-run-*`: the pipeline logs offline by default).

    python scripts/wandb_report.py                                   # print the outline
    python scripts/wandb_report.py --group gain-d0.05-s0 gain-d0.05-s1 --save
    python scripts/wandb_report.py --entity my-team --title "Density sweep" --save
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from suptickets.comparison import GAINS, MODELS  # noqa: E402  (the names of metrics/summary.json)

TRAINING = ["dense", "sparse_baseline", "warmup", "tickets"]
COLUMNS = {  # runs table of the evaluate runs: W&B column accessor -> what it shows
    "run:displayName": "run",
    "run:group": "experiment",
    "config:dst.value.method": "method",
    "config:dst.value.density": "density",
    "config:seed.value": "seed",
    "config:tickets.value.lr_max": "lr_max",
    "summary:test_acc_pct.superposed": "superposed %",
    "summary:gain_pts.vs_sparse_baseline": "gain vs sparse_baseline (pts)",
    "summary:gain_pts.vs_best_ticket": "gain vs best ticket (pts)",
}


def _runs(project: str, entity: str, name: str, job_types: list[str], groups: list[str]):
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    filters = [expr.Metric("JobType").isin(job_types)]
    if groups:
        filters.append(expr.Metric("Group").isin(groups))
    return wr.Runset(entity=entity, project=project, name=name, filters=expr.And(*filters))


def build_report(project: str, entity: str = "", groups: list[str] | None = None, title: str | None = None):
    """The report object (nothing is sent anywhere): a training grid (val_acc per epoch, lr) over
    the training stages' runs and an evaluation grid (test accuracy per model, the runs table) over
    the evaluate runs, both limited to `groups` (W&B groups = DVC experiments) when given."""
    import wandb_workspaces.reports.v2 as wr

    groups = list(groups or [])
    scope = f"experiments {', '.join(groups)}" if groups else "all experiments"
    training = _runs(project, entity, "training stages", TRAINING, groups)
    evaluation = _runs(project, entity, "evaluate", ["evaluate"], groups)
    evaluation.pinned_columns = list(COLUMNS)[:2]
    evaluation.visible_columns = list(COLUMNS)[2:]
    evaluation.column_order = list(COLUMNS)
    evaluation.lock_columns = True
    return wr.Report(
        project=project, entity=entity, title=title or f"Sup-tickets: {scope}",
        description=f"Runs of W&B project {project}: {scope}. Accuracies in %, gains in points.",
        blocks=[
            wr.H2("Training: every stage, per epoch"),
            wr.PanelGrid(runsets=[training], panels=[
                wr.LinePlot(title="Validation accuracy per epoch (each stage's run)", x="epoch", y=["val_acc"],
                            title_x="epoch", title_y="validation accuracy"),
                wr.LinePlot(title="Learning rate at each epoch's last step", x="step", y=["lr"],
                            title_x="optimizer step", title_y="learning rate", log_y=True),
            ]),
            wr.H2("Test accuracy and gains (evaluate)"),
            wr.PanelGrid(runsets=[evaluation], panels=[
                wr.BarPlot(title="Test accuracy per model (%)",
                           metrics=[wr.SummaryMetric(f"test_acc_pct.{m}") for m in MODELS], orientation="v"),
                wr.BarPlot(title="Gain of the superposed model (points)",
                           metrics=[wr.SummaryMetric(f"gain_pts.{g}") for g in GAINS],
                           orientation="v"),
            ]),
        ])


def _metric_names(values) -> list[str]:
    return [v if isinstance(v, str) else v.name for v in values]


def outline(report) -> str:
    """What the report holds, in plain lines."""
    import wandb_workspaces.reports.v2 as wr

    lines = [f"W&B report {report.title!r} in project {report.entity or '(your default entity)'}/{report.project}",
             f"  {report.description}"]
    for block in report.blocks:
        if isinstance(block, wr.H2):
            lines.append(f"## {block.text}")
        elif isinstance(block, wr.PanelGrid):
            for rs in block.runsets:
                lines.append(f"  runs {rs.name!r}: {rs.filters}")
                if rs.lock_columns:
                    lines.append(f"  runs table: {', '.join(COLUMNS.get(c, c) for c in rs.column_order)}")
            for p in block.panels:
                if isinstance(p, wr.LinePlot):
                    lines.append(f"  - line plot {p.title!r}: {', '.join(_metric_names(p.y))} against {p.x}")
                elif isinstance(p, wr.BarPlot):
                    lines.append(f"  - bar plot {p.title!r}: {', '.join(_metric_names(p.metrics))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    tracking = (yaml.safe_load((ROOT / "params.yaml").read_text()) or {}).get("tracking", {}).get("wandb", {})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--project", default=tracking.get("project"),
                    help="W&B project of the runs (default: tracking.wandb.project of params.yaml, %(default)s)")
    ap.add_argument("--entity", default=tracking.get("entity"),
                    help="W&B entity (user or team; default: tracking.wandb.entity, else your default entity)")
    ap.add_argument("--group", nargs="+", default=[], metavar="EXPERIMENT",
                    help="only these W&B groups: DVC experiment names (e.g. a gain.py sweep's gain-d0.05-s0 ...); "
                         "default: every group")
    ap.add_argument("--title", help="report title (default: 'Sup-tickets: <what it shows>')")
    ap.add_argument("--save", action="store_true",
                    help="publish the report to W&B (needs `wandb login` and network) and print its URL; "
                         "without it the report is only printed")
    args = ap.parse_args(argv)
    entity = args.entity or ""
    if args.save and not entity:
        import wandb

        entity = wandb.Api().default_entity  # needs the login --save needs anyway
    report = build_report(args.project, entity, args.group, args.title)
    print(outline(report))
    if args.save:
        report.save()
        print(f"saved: {report.url}")
    else:
        print("(not saved: add --save to publish it; that needs `wandb login` and network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
