# make repro: set up and run the pipeline (dvc repro on params.yaml). make test: set up and test.
# make compare: one row per DVC experiment (method, density, seed, lr_max, test accuracy %, gains in points).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
FMNIST := /usr/share/datasets/fashion-mnist
# The Python .venv is built on: the system's python3.11 where it has one with venv, else python3.
# A distribution's build ran `make test` 1.15-1.23x as fast as a 3.11 compiled with default options (as
# pyenv compiles it); benchmarks/interpreter.py compares the ones a machine has. `make setup
# PYTHON=python3` picks another (for a .venv that exists: remove it first).
PYTHON ?= $(shell /usr/bin/python3.11 -c "import ensurepip, venv" 2>/dev/null && echo /usr/bin/python3.11 || echo python3)

.PHONY: setup data repro test check-repro bench compare push pull

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
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
	$(PY) -m pytest -q -n auto --maxschedchunk=1 --durations=15

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
