"""Process defaults set before torch loads OpenMP and MKL: what the OpenMP runtime of a fresh stage
or benchmark process really uses (libgomp prints its settings when OMP_DISPLAY_ENV=VERBOSE; under
OMP_WAIT_POLICY=PASSIVE its spin count is 0, unset it spins 300000 times, ACTIVE 3e10), and an
evaluation whose bits do not depend on where its tensors sit in memory (MKL_CBWR=AUTO)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL
from suptickets.environment import DEFAULTS, apply_defaults


def openmp_settings(cmd: list[str], cwd=ROOT, **env: str) -> dict[str, str]:
    """OMP_WAIT_POLICY and GOMP_SPINCOUNT as the OpenMP runtime of the process `cmd` reports them."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT / "src"), WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, *cmd], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(re.findall(r"^\s+(OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '([^']*)'", proc.stderr, re.M))


def dense_stage() -> list[str]:
    """The dense stage, one epoch on the small data (torch loads in its body, after the config check)."""
    return [str(ROOT / "stages/dense.py"), *SMALL, "train.epochs=1", "hydra.run.dir=."]


def test_a_stage_and_a_benchmark_wait_passively_by_default(small_project):
    passive = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert openmp_settings(dense_stage(), cwd=small_project) == passive
    assert openmp_settings(["benchmarks/superpose.py", "--help"]) == passive


def test_the_users_own_wait_policy_wins(small_project):
    assert openmp_settings(dense_stage(), cwd=small_project, OMP_WAIT_POLICY="ACTIVE") == {
        "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000000000"}


def test_apply_defaults_adds_only_what_is_missing():
    env = {"OMP_WAIT_POLICY": "active"}
    assert apply_defaults(env) == {"MKL_CBWR": "AUTO"}
    assert env == {"OMP_WAIT_POLICY": "active", "MKL_CBWR": "AUTO"}
    fresh: dict[str, str] = {}
    assert apply_defaults(fresh) == DEFAULTS == fresh == {"OMP_WAIT_POLICY": "PASSIVE", "MKL_CBWR": "AUTO"}


def _first_import_line(tree: ast.Module, names: tuple[str, ...]) -> int | None:
    """The first line importing any of the top-level modules `names` (anywhere in the file)."""
    def top(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name.split(".")[0] for a in node.names]
        return [(node.module or "").split(".")[0]] if isinstance(node, ast.ImportFrom) else []

    lines = [n.lineno for n in ast.walk(tree) if set(top(n)) & set(names)]
    return min(lines) if lines else None


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "_common.py"))
def test_every_benchmark_imports_common_before_torch_or_the_package(path):
    tree = ast.parse((ROOT / "benchmarks" / path).read_text())
    common = _first_import_line(tree, ("_common",))
    later = _first_import_line(tree, ("torch", "torchvision", "suptickets"))
    assert common is not None, f"{path} does not import _common"
    assert later is None or common < later, f"{path}: torch or suptickets imported (line {later}) before _common"


def test_stage_helper_applies_the_defaults_before_importing_torch():
    """_stage calls apply_defaults as it loads (every stage script imports it first); torch, if it
    imports it at all, comes later (the stage bodies import it)."""
    tree = ast.parse((ROOT / "stages" / "_stage.py").read_text())
    calls = [n.lineno for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
             and getattr(n.value.func, "id", "") == "apply_defaults"]
    torch_line = _first_import_line(tree, ("torch",))
    assert calls and (torch_line is None or min(calls) < torch_line)


EVALUATE_AT_OFFSET = """
import hashlib, sys
sys.path.insert(0, sys.argv[2])
from suptickets.environment import apply_defaults
apply_defaults()  # as stages/_stage.py does, before torch is imported
import torch, yaml
from suptickets import runtime
from suptickets.train import predict, score

offset = int(sys.argv[1])
cfg = yaml.safe_load(open("params.yaml"))
device = runtime.setup(cfg["threads"], "cpu")
data, summary = runtime.load_batches("data/prepared", cfg, device)
model = runtime.load_model("models/superposed.safetensors", runtime.new_model(cfg, summary, device))

def misalign(module, args):  # every Linear layer reads its input from `offset` floats into a buffer
    (x,) = args
    moved = torch.empty(x.numel() + offset)[offset:offset + x.numel()].view(x.shape)
    moved.copy_(x)
    return (moved,)

for m in model.modules():
    if isinstance(m, torch.nn.Linear):
        m.register_forward_pre_hook(misalign)
probs, labels = predict(model, data["test"])
acc, loss = score(probs, labels)
print(hashlib.sha256(probs.numpy().tobytes()).hexdigest(), float(loss).hex(), float(acc).hex())
"""


@pytest.mark.e2e
def test_evaluation_is_bit_identical_in_fresh_processes_whatever_the_alignment(smoke_repo):
    """The superposed smoke model on the test split, each Linear layer's input moved to another
    offset (0, 1, 3 floats: 0, 4, 12 bytes past a 64-byte boundary), each in a fresh process: the
    softmax outputs, the loss and the accuracy are the same bits."""
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS}
    results = set()
    for offset in (0, 1, 3):
        proc = subprocess.run([sys.executable, "-c", EVALUATE_AT_OFFSET, str(offset), str(ROOT / "src")],
                              cwd=smoke_repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.add(proc.stdout.strip())
    assert len(results) == 1, results


def test_every_package_make_installs_is_pinned_to_the_installed_version():
    """constraints.txt pins every dependency in pyproject.toml (and the test extra), to the version
    installed here: `make` installs from it, so a clone later gets the same versions."""
    import tomllib
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {re.sub(r"[-_.]+", "-", name).lower(): v for name, v in pins.items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", d).group()).lower() for d in wanted}
    assert names <= set(pins), names - set(pins)
    assert {n: pins[n] for n in names} == {n: version(n) for n in names}
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_setup_makes_kernels_deterministic_without_loading_the_compiler():
    """runtime.setup sets PyTorch's deterministic-kernels flag as torch.use_deterministic_algorithms
    does, but without importing torch._inductor (about 1.3 s of every stage's start-up); a compiled
    model (train.compile) gets the compiler's flag too."""
    code = """
import sys, torch
from suptickets.runtime import setup
from suptickets.train import Speed
setup(1, "cpu")
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      "torch._inductor" in sys.modules)
Speed(compile=True).wrap(torch.nn.Linear(2, 2))
import torch._inductor.config as c
print(c.deterministic, torch.are_deterministic_algorithms_enabled())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.split("\n")
    assert out[:2] == ["True False False", "True True"], out
