# make repro: set up and run the pipeline (dvc repro on params.yaml). make test: set up and test.
# make compare: one row per DVC experiment (method, density, seed, lr_max, test accuracy %, gains in points).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data repro test check-repro bench compare push pull

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Fashion-MNIST from the Debian package when apt is usable; else `prepare` falls back to
# torchvision's download (data.download: true), which needs network.
data:
	@if ls $(FMNIST)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is not in $(FMNIST); prepare will try torchvision's download"; fi

setup: $(VENV)/.installed data

repro: setup
	dvc repro
	@$(PY) -c "import json; m = json.load(open('metrics/evaluate.json'))['test_acc']; \
	print('test accuracy: ' + ', '.join(f'{k} {v:.4f}' for k, v in m.items()))"

test: setup
	$(PY) -m pytest -q -n auto --durations=15

check-repro: setup
	$(PY) scripts/check_repro.py

compare: setup
	$(PY) scripts/compare.py

# The DVC remote (.dvc/config: a folder beside the project unless `dvc remote modify --local` moves
# it): the outputs of dvc.lock, the run cache and the files its records name, so that a colleague's
# `dvc repro` or `dvc exp run` trains nothing that someone already ran (scripts/share.py says why
# `dvc push --run-cache` alone is not enough).
push: setup
	$(PY) scripts/share.py push

pull: setup
	$(PY) scripts/share.py pull
