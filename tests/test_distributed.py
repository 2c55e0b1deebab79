"""The training stages under torchrun: 2 CPU processes with gloo, chosen in the config."""

from __future__ import annotations

import json
import re

import pytest

from conftest import make_repo, run
from test_pipeline import STAGES, compose

pytestmark = pytest.mark.e2e


def test_two_process_smoke_dag_keeps_ranks_in_sync_and_matches_one_process(smoke_repo, tmp_path):
    repo = make_repo(tmp_path / "repo")
    compose(["experiment=smoke", "launcher.nproc_per_node=2", "launcher.check_sync=true"], repo / "params.yaml")
    proc = run(repo, "dvc", "repro")
    out = proc.stdout + proc.stderr
    for stage in ["sparse_baseline", "warmup", "tickets"]:
        m = re.search(rf"{stage}: masks and weights identical on all 2 ranks at each of (\d+) topology updates", out)
        assert m and int(m.group(1)) > 0, out[-3000:]
    two = json.loads((repo / "metrics/evaluate.json").read_text())["test_acc"]
    one = json.loads((smoke_repo / "first_evaluate.json").read_text())["test_acc"]
    assert set(two) == set(one)
    for model in one:  # same global batch and lr; only BN batch statistics are per rank
        assert abs(two[model] - one[model]) < 0.05, (model, one[model], two[model])
    runs = list((repo / "wandb").glob("offline-run-*"))
    assert len(runs) == len(STAGES), "only rank 0 logs to W&B"


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One of two gloo processes: the loop's DDP path with RigL updates (see the test below)."""
    import os

    import torch
    import torch.distributed as dist

    from suptickets.models import build_model
    from suptickets.sparsity.engine import DST, Masked, init_masks, masks_of
    from suptickets.batches import Batches
    from suptickets.train import train_epochs, wrap_ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 4, hidden=[32, 16])
    init_masks(model, 0.2, "erk", False, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = (torch.rand((256, 1, 8, 8), generator=g) * 120 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    train = Batches(x, y, [0.3], [0.2], batch_size=32, shuffle=True, drop_last=True, seed=0, rank=rank,
                    world_size=world)
    val = Batches(x[:64], y[:64], [0.3], [0.2], batch_size=64)
    # a buffer changed out of band on rank 1 only: a per-step buffer broadcast would overwrite it
    first = next(iter(masks_of(model).values()))
    marker = first.clone()
    ddp = wrap_ddp(model)  # (its construction syncs every buffer from rank 0 once)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    if rank == 1:
        model.net[2].running_var.fill_(7.0)
    ddp.eval()  # eval mode leaves running_var as it is, so only a broadcast could change it
    ddp(torch.zeros(2, 1, 8, 8))
    ddp.train()
    kept = bool((model.net[2].running_var >= 7.0).all()) if rank == 1 else True
    model.net[2].running_var.fill_(1.0)
    masked = Masked(model, opt, check_ranks=True)
    rule = DST.from_config({"method": "rigl", "density": 0.2, "update_frequency": 3, "prune_rate": 0.5,
                            "prune_rate_decay": "cosine", "stop_fraction": 1.0},
                           steps_per_epoch=len(train), epochs=2, budget_epochs=2, seed=0)
    train_epochs(model, opt, train, val, epochs=range(2), step=0, lr_at=lambda e, i: 0.05, masked=masked,
                 topology=rule)
    state = torch.cat([t.detach().flatten().double() for t in [*masked.masks, *masked.weights]])
    gathered = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(gathered, state)
    if rank == 0:
        import json

        json.dump({"rank_checks": masked.rank_checks, "identical": all(torch.equal(g, gathered[0]) for g in gathered),
                   "masks_moved": not torch.equal(marker, first)}, open(out, "w"))
    if rank == 1:
        import json

        json.dump({"buffer_kept": kept}, open(out + ".1", "w"))
    dist.destroy_process_group()


def test_ddp_broadcasts_no_buffers_per_step_and_two_ranks_end_identical(tmp_path):
    """Masks are not sent every step (nor any buffer): a buffer changed on rank 1 survives a DDP
    forward; topology decisions still agree (check_sync at every update) and both ranks end with
    identical masks and weights."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks.json"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    result, rank1 = json.loads(out.read_text()), json.loads((tmp_path / "ranks.json.1").read_text())
    assert rank1["buffer_kept"], "DDP broadcast rank 0's buffers into rank 1 during the forward"
    assert result["rank_checks"] == (2 * 8 - 1) // 3 and result["masks_moved"]  # 8 steps an epoch, updates every 3
    assert result["identical"]
