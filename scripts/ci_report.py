"""The Markdown report a team's CI posts on a pull request (stdout): what the change does to the
params and to the headline metrics against the base revision, the experiments table, and the
report stage's figures.

    python scripts/ci_report.py --base origin/main > ci-report.md

Sections: `dvc params diff <base>` and `dvc metrics diff <base> --targets metrics/summary.json` (test accuracy
in % per model and the gains in points; the other metrics files hold the stages' details), both as
DVC prints them with --md; `scripts/compare.py` (one row per experiment); and the figures under
plots/ that the report stage draws, as Markdown images (CML's `cml comment create --publish`
uploads them with the comment).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from project_copy import dvc as run_dvc

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = "metrics/summary.json"


def dvc(*args: str) -> str:
    """A dvc command's stdout (run here); a failure ends the report in one line."""
    proc = run_dvc(*args)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        sys.exit(f"error: ci_report: dvc {' '.join(args)} failed: {last}")
    return proc.stdout.strip()


def section(title: str, body: str, empty: str) -> str:
    return f"## {title}\n\n{body or empty}\n"


def report(base: str, figures: list[Path]) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    compare = subprocess.run([sys.executable, str(ROOT / "scripts/compare.py")], capture_output=True,
                             text=True).stdout.strip()
    images = "\n".join(f"![{p.stem}]({p.as_posix()})" for p in figures)
    return "\n".join([
        f"# suptickets: {head or 'workspace'} against {base}\n",
        section("Params", dvc("params", "diff", base, "--md"), "No param changed."),
        section("Metrics", dvc("metrics", "diff", base, "--targets", HEADLINE, "--md", "--precision", "4"),
                f"No change in {HEADLINE}."),
        section("Experiments", compare, "No experiment."),
        section("Figures", images, "No figures (the report stage has not run)."),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with (a pull request's base branch)")
    args = parser.parse_args(argv)
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"],
                      capture_output=True).returncode != 0:
        sys.exit(f"error: ci_report: --base {args.base!r} is not a git revision here (fetch it first: "
                 "git fetch origin <branch>, with the full history)")
    print(report(args.base, sorted(Path("plots").glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
