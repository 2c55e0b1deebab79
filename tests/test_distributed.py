"""Data-parallel training with gloo on CPU: the loop's DDP path in two spawned processes (the
stages under torchrun run end to end in tests/test_imagefolder.py, the suite's one two-process DAG)."""

from __future__ import annotations


def _toy_data(rank: int = 0, world: int = 1):
    import torch

    from suptickets.batches import Batches

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = (torch.rand((256, 1, 8, 8), generator=g) * 120 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    train = Batches(x, y, [0.3], [0.2], batch_size=32, shuffle=True, drop_last=True, seed=0, rank=rank,
                    world_size=world)
    return train, Batches(x[:64], y[:64], [0.3], [0.2], batch_size=64)


def _train(rank: int = 0, world: int = 1, check_ranks: bool = False):
    """The toy model trained for 2 epochs with RigL updates every 3 steps; (model, masked, val acc)."""
    import torch

    from suptickets.models import build_model
    from suptickets.sparsity.engine import DST, Masked, init_masks
    from suptickets.train import evaluate, train_epochs

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 4, hidden=[32, 16])
    init_masks(model, 0.2, "erk", False, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train, val = _toy_data(rank, world)
    masked = Masked(model, opt, check_ranks=check_ranks)
    rule = DST.from_config({"method": "rigl", "density": 0.2, "update_frequency": 3, "prune_rate": 0.5,
                            "prune_rate_decay": "cosine", "stop_fraction": 1.0,
                            "repicked": "keep"},
                           steps_per_epoch=len(train), epochs=2, budget_epochs=2, seed=0)
    train_epochs(model, opt, train, val, epochs=range(2), step=0, lr_at=lambda e, i: 0.05, masked=masked,
                 topology=rule)
    return model, masked, evaluate(model, val)[0]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One of two gloo processes: the loop's DDP path with RigL updates (see the test below)."""
    import os

    import torch
    import torch.distributed as dist

    from suptickets.models import build_model
    from suptickets.sparsity.engine import init_masks, masks_of
    from suptickets.train import wrap_ddp

    def build_model_with_masks():
        m = build_model("mlp", (1, 8, 8), 4, hidden=[32, 16])
        init_masks(m, 0.2, "erk", False, torch.Generator().manual_seed(0))
        return m

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # a buffer changed out of band on rank 1 only, after DDP's one sync at construction: a per-step
    # buffer broadcast would overwrite it
    torch.manual_seed(0)
    probe = build_model("mlp", (1, 8, 8), 4, hidden=[32, 16])
    init_masks(probe, 0.2, "erk", False, torch.Generator().manual_seed(0))
    ddp = wrap_ddp(probe)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    if rank == 1:
        probe.net[2].running_var.fill_(7.0)
    ddp.eval()  # eval mode leaves running_var as it is, so only a broadcast could change it
    ddp(torch.zeros(2, 1, 8, 8))
    kept = bool((probe.net[2].running_var >= 7.0).all()) if rank == 1 else True
    torch.manual_seed(0)
    marker = next(iter(masks_of(build_model_with_masks()).values())).clone()
    _, masked, val_acc = _train(rank, world, check_ranks=True)
    first = next(iter(masked.masks))
    state = torch.cat([t.detach().flatten().double() for t in [*masked.masks, *masked.weights]])
    gathered = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(gathered, state)
    if rank == 0:
        import json

        json.dump({"rank_checks": masked.rank_checks, "identical": all(torch.equal(g, gathered[0]) for g in gathered),
                   "masks_moved": not torch.equal(marker, first), "val_acc": val_acc}, open(out, "w"))
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
    _, _, one_process = _train()  # the same global batches in one process: only BN batch statistics differ
    assert abs(result["val_acc"] - one_process) <= 0.1, (result["val_acc"], one_process)
