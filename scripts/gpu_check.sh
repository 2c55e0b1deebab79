#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) on a bare CUDA machine without network: installs the wheels
# carried in .gpu_carry/wheels (scripts/gpu_check_prepare.sh) into a temporary folder, puts it on
# PYTHONPATH and points data.root at the carried Fashion-MNIST files. The budget counts from here, so
# the install is inside it.
#
#   bash scripts/gpu_check.sh OUT_DIR [--budget-s 360] [--dry-run] [more options of gpu_check.py]
#
# --dry-run: the same on this machine's CPU at toy sizes, with the project's .venv instead of the wheels.
set -euo pipefail
started=$(date +%s.%N)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash scripts/gpu_check.sh OUT_DIR [--budget-s 360] [--dry-run]" >&2
    exit 2
fi
out=$1
shift
dry=0
for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done
carry=$root/.gpu_carry
extra=()
if [ "$dry" = 1 ]; then
    py=$root/.venv/bin/python
    [ -x "$py" ] || py=python3
else
    py=python3
    if ! ls "$carry"/wheels/*.whl >/dev/null 2>&1 || [ ! -d "$carry/fashion-mnist" ]; then
        echo "error: gpu_check: $carry has no wheels or no fashion-mnist/: run scripts/gpu_check_prepare.sh" \
             "where PyPI is reachable and carry .gpu_carry" >&2
        exit 2
    fi
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --target "$site" "$carry"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    extra=(--data-root "$carry/fashion-mnist")
fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec "$py" "$root/scripts/gpu_check.py" "$out" --started-at "$started" ${extra[@]+"${extra[@]}"} "$@"
