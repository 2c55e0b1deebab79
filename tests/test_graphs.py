"""`train.graphs` (issue #21 §2): the training step captured in CUDA graphs. On CPU: refused in one
line wherever it cannot apply, and the eager loop it shares (the device counts of `train.Tally`) is
the path every CPU test pins. On CUDA (skipped here): a graphed run is bit-identical to the eager run
with the same fused SGD, over a cyclic lr and RigL updates, and a tensor given new memory after the
capture is refused."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT, SMALL, error_lines, run_stage, tree
from suptickets.composition import compose
from suptickets.config import check
from suptickets.errors import ConfigError
from suptickets.models import build_model
from suptickets.runtime import optimizer_for
from suptickets.train import Tally
from test_device_lr import trained

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SHAPE, CLASSES = (1, 8, 8), 4
REFUSED = "train.graphs=true: not with "


@pytest.mark.parametrize("overrides,clashes", [
    (["device=cpu"], "device='cpu'"),
    (["launcher.nproc_per_node=2"], "launcher.nproc_per_node=2"),
    (["train.amp=bf16"], "train.amp='bf16'"),
    (["train.compile=true"], "train.compile=true"),
    (["data=imagenet"], "data.name='imagenet'"),
    (["device=cpu", "train.amp=bf16", "train.compile=true"], "device='cpu', train.amp='bf16', train.compile=true"),
])
def test_graphs_are_refused_in_one_line_where_they_cannot_apply(overrides, clashes):
    problems = check(compose(ROOT / "params", ["train.graphs=true", *overrides]))
    assert [p for p in problems if p.startswith("train.graphs")] == [
        f"{REFUSED}{clashes} (graphs capture one process's fp32 eager step on CUDA, with the data held on the "
        "device); set train.graphs=false"]


def test_graphs_on_cuda_with_the_defaults_pass_the_config_checks():
    assert check(compose(ROOT / "params", ["train.graphs=true", "device=cuda"])) == []
    assert check(compose(ROOT / "params", ["train.graphs=true"])) == []  # device=auto: decided where it runs


def test_graphs_on_a_cpu_model_are_refused_before_the_first_step():
    model = build_model("mlp", SHAPE, CLASSES, hidden=[8])
    cfg = compose(ROOT / "params", ["train.graphs=true"])["train"]
    with pytest.raises(ConfigError, match=r"^train.graphs=true: CUDA graphs need a CUDA device, and this run "
                                          r"trains on cpu \(device=auto without a GPU, or device=cpu\); set "
                                          r"train.graphs=false$"):
        optimizer_for(model, cfg)
    assert optimizer_for(model, {**cfg, "graphs": False}).param_groups[0]["fused"] in (None, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_stage_without_cuda_refuses_graphs_in_one_line_and_writes_nothing(small_project):
    before = tree(small_project)
    auto = [o for o in SMALL if not o.startswith("device=")]  # device=auto: no GPU here
    proc = run_stage(small_project, "dense", *auto, "train.graphs=true", small=False)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == ["error: dense: train.graphs=true: CUDA graphs need a CUDA device, and this run "
                                 "trains on cpu (device=auto without a GPU, or device=cpu); set train.graphs=false"]
    assert tree(small_project) == before


def test_the_tally_counts_an_epoch_as_the_loop_reads_it():
    tally = Tally(torch.device("cpu"))
    tally.reset(40)
    y = torch.tensor([0, 1, 1])
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    tally.add(torch.tensor(0.5), out, y)
    tally.add(torch.tensor(float("nan")), out, y)
    tally.add(torch.tensor(float("inf")), out, y)
    assert int(tally.correct) == 6 and int(tally.step) == 43 and int(tally.bad_step) == 41  # the first bad step
    tally.reset(7)
    assert (float(tally.loss_sum), int(tally.correct), int(tally.bad_step), int(tally.step)) == (0.0, 0, -1, 7)


@pytest.fixture()
def deterministic_cudnn():
    """Convolutions without atomics (cuDNN's deterministic algorithms), as the stages run them."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@CUDA
def test_a_graphed_run_is_bit_identical_to_the_eager_run_with_the_same_fused_sgd(deterministic_cudnn):
    (eager, _), (graphed, _) = [trained("resnet20", True, True, device="cuda", graphs=g) for g in (False, True)]
    assert len(eager) == len(graphed) and all(torch.equal(a, b) for a, b in zip(eager, graphed))


@CUDA
def test_a_tensor_given_new_memory_after_the_capture_is_refused(deterministic_cudnn):
    def drop_grads(opt):
        return lambda row: opt.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="a tensor the captured training step reads or writes was given new memory"):
        trained("resnet20", True, True, device="cuda", graphs=True, on_epoch=drop_grads)
