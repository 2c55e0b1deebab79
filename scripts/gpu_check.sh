#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) with the project's Python: $PYTHON if set, else .venv (`make
# setup`). On a machine without network and without .venv, it installs the wheels of .gpu_carry/
# (made by scripts/gpu_check_prepare.sh where PyPI is reachable) into a temporary folder, puts it on
# PYTHONPATH and points data.root at the Fashion-MNIST files there. The budget counts from here, so
# any install is inside it.
#
#   bash scripts/gpu_check.sh OUT_DIR [--budget-s 420] [--dry-run] [more options of gpu_check.py]
#
# --dry-run: the same on this machine's CPU at toy sizes.
set -euo pipefail
started=$(date +%s.%N)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash scripts/gpu_check.sh OUT_DIR [--budget-s 420] [--dry-run]" >&2
    exit 2
fi
out=$1
shift
carry=$root/.gpu_carry
extra=()
if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    py=$root/.venv/bin/python
elif ls "$carry"/wheels/*.whl >/dev/null 2>&1 && [ -d "$carry/fashion-mnist" ]; then
    py=python3
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --target "$site" "$carry"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" GPU_CHECK_OFFLINE=1
    extra=(--data-root "$carry/fashion-mnist")
else
    echo "error: gpu_check: no Python environment: run make setup (or set PYTHON); on a machine without" \
         "network, fill .gpu_carry with scripts/gpu_check_prepare.sh elsewhere and copy it along" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec "$py" "$root/scripts/gpu_check.py" "$out" --started-at "$started" ${extra[@]+"${extra[@]}"} "$@"
