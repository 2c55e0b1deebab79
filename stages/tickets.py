"""tickets: continue from warmup with cyclic learning rates; each cycle re-explores the topology
and ends in a cheap ticket, models/tickets/ticket_KK.safetensors."""

import shutil
from pathlib import Path

from _stage import Stage, main_of

from suptickets.artifacts import load_tensors, state_from_file
from suptickets.schedules import split_of

WARMUP, WARMUP_OPTIM, OUT = "models/warmup.safetensors", "models/warmup.optim.safetensors", Path("models/tickets")


def mask_list(masks: dict) -> list:
    """Masks in parameter-name order: a model file stores them sorted by name, a model holds them
    in module order (`fc` comes last there, before `layer1` in a file)."""
    return [masks[name] for name in sorted(masks)]


def file_masks(path) -> list:
    return mask_list(state_from_file(load_tensors(path))[1])


def run(s: Stage) -> None:
    from suptickets import phases, runtime
    from suptickets.sparsity.engine import masks_of
    from suptickets.sparsity.masks import densities, jaccard

    cfg = s.cfg
    warmup_epochs, _, n_tickets = split_of(cfg)
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.load_model(WARMUP, runtime.new_model(cfg, summary, device))
    opt = runtime.optimizer_for(model, cfg["train"])
    step = runtime.load_optimizer(WARMUP_OPTIM, model, opt)
    flops = phases.FlopsMeter(model, summary["shape"], cfg["dst"]["method"], None, topology_updates=False)
    start = s.resume(model, opt, ["data/prepared", WARMUP, WARMUP_OPTIM])
    flops.restore(start["extra"].get("flops", {}))
    per_ticket = start["extra"].get("tickets", [])
    s.extra = lambda: {"flops": flops.state(), "tickets": per_ticket}
    folder = s.checkpoint.dir / "tickets"  # tickets wait beside the resume state until the stage ends
    folder.mkdir(parents=True, exist_ok=True)
    previous = file_masks(folder / f"{per_ticket[-1]['ticket']}.safetensors" if per_ticket else WARMUP)

    def on_ticket(k: int, row: dict) -> None:
        nonlocal previous
        name = f"ticket_{k:02d}"
        s.save_model(folder / f"{name}.safetensors", model)
        current = mask_list({k: m.bool().clone().cpu() for k, m in masks_of(model).items()})
        per_ticket.append({"ticket": name, "epoch": row["epoch"], "val_acc": row["val_acc"],
                           "density": densities(masks_of(model))[0], "jaccard_prev": jaccard(previous, current)})
        s.run.log({"tickets/val_acc": row["val_acc"], "tickets/jaccard_prev": per_ticket[-1]["jaccard_prev"],
                   "ticket": k})
        previous = current

    phases.cycles(model, opt, data, cfg, first_epoch=warmup_epochs, n_tickets=n_tickets,
                  step=start["step"] or step, on_epoch=s.on_epoch, on_ticket=on_ticket, flops=flops,
                  start_epoch=start["epoch"] or warmup_epochs)
    if s.rank != 0:
        return
    tmp = OUT.parent / f".{OUT.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    s.write_history()
    s.write_metrics({"n_tickets": n_tickets, "tickets": {p["ticket"]: p for p in per_ticket},
                     "flops_ratio": flops.ratio})
    s.done(flops.ratio)


if __name__ == "__main__":
    main_of("tickets", run)
