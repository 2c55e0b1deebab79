#!/usr/bin/env bash
# For a CUDA machine without network: fills .gpu_carry/ (git-ignored) with what scripts/gpu_check.sh
# needs there when that machine has Python 3.12 with PyTorch, numpy, pandas, safetensors, matplotlib
# and tqdm, but not hydra-core, omegaconf or pandera (the check needs neither wandb nor dvc):
#   wheels/         CPython 3.12 / manylinux x86-64 wheels of hydra-core, omegaconf, PyYAML, pandera and
#                   everything they need except numpy and pandas, at the versions installed in .venv;
#                   antlr4-python3-runtime is built here (PyPI has only its source);
#   fashion-mnist/  the four IDX files of Fashion-MNIST (Debian package dataset-fashion-mnist).
# Run it where PyPI is reachable, with the project's .venv (`make setup`), then copy the repository
# with .gpu_carry/ to the machine. Builds the folder anew each time (pip's cache makes a second run
# quick) and swaps it in; refuses a result over GPU_CARRY_MAX_MIB (default 60) MiB. Prints what it
# holds and the total.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$root/.venv/bin/python
carry=$root/.gpu_carry
data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
max_mib=${GPU_CARRY_MAX_MIB:-60}
limit=$((max_mib * 1024 * 1024))
# downloaded as wheels; numpy and pandas are taken to be on the machine already
packages="hydra-core omegaconf PyYAML pandera pydantic pydantic-core annotated-types typing-inspection
          typing-extensions typeguard typing-inspect mypy-extensions packaging"
built=antlr4-python3-runtime   # sdist only on PyPI: a pure-Python wheel built here
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

[ -x "$py" ] || { echo "error: gpu_check_prepare: $py is missing; run make setup first" >&2; exit 2; }
for f in $files; do
    [ -f "$data/$f" ] || { echo "error: gpu_check_prepare: $data/$f is missing; install the Debian package" \
                                "dataset-fashion-mnist or set FASHION_MNIST_DIR" >&2; exit 2; }
done
version() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
specs=()
for p in $packages; do specs+=("$p==$(version "$p")"); done

tmp=$(mktemp -d "$root/.gpu_carry.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheels" "$tmp/fashion-mnist"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$tmp/wheels" "${specs[@]}"
"$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/wheels" "$built==$(version "$built")"
# every dependency is carried: resolve hydra-core and pandera from the wheels alone, as Python 3.12 would
"$py" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed --no-index \
    --find-links "$tmp/wheels" --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    --target "$tmp/resolve" "hydra-core==$(version hydra-core)" "pandera==$(version pandera)"
for f in $files; do cp "$data/$f" "$tmp/fashion-mnist/$f"; done

total=$(du -sb "$tmp" | cut -f1)
(cd "$tmp" && find . -type f | sort | while read -r f; do printf '%10d  %s\n' "$(stat -c %s "$f")" "${f#./}"; done)
printf 'total %d bytes (%.1f MiB; limit %d MiB)\n' "$total" "$(echo "$total / 1048576" | bc -l)" "$max_mib"
if [ "$total" -gt "$limit" ]; then
    echo "error: gpu_check_prepare: $total bytes is over the $max_mib MiB limit (GPU_CARRY_MAX_MIB); .gpu_carry left as it was" >&2
    exit 1
fi
rm -rf "$carry"
mv "$tmp" "$carry"
trap - EXIT
echo "ready: $carry"
