#!/usr/bin/env bash
# A team's pull-request check, for any CI (.github/workflows/pipeline.yml runs it on GitHub):
# set up with the README's command, pull from the DVC remote, check that the committed dvc.lock is
# up to date and that the pipeline reproduces bit for bit, and write the Markdown report.
#
#   BASE_REV        the revision to diff against (default: origin/main)
#   DVC_REMOTE_URL  the team's DVC remote (default: .dvc/config's, a folder beside the project)
#   REPORT          where the report goes (default: ci-report.md)
set -euo pipefail
cd "$(dirname "$0")/.."
base="${BASE_REV:-origin/main}"
report="${REPORT:-ci-report.md}"

make setup
export PATH="$PWD/.venv/bin:$PATH"
if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote modify --local shared url "$DVC_REMOTE_URL"
fi
make pull
# the committed outputs match the committed code and params (else: run dvc repro, commit, push)
dvc status --quiet || { dvc status; echo "error: ci: dvc.lock is stale: run dvc repro (or make repro), then git commit and make push" >&2; exit 1; }
# params.yaml is the composition of params/, and the smoke DAG run twice from scratch gives the same hashes
make check-repro
python scripts/ci_report.py --base "$base" > "$report"
echo "ci: report in $report"
