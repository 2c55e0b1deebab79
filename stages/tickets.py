"""tickets: continue from warmup with cyclic learning rates; each cycle re-explores the topology
and ends in a cheap ticket, models/tickets/ticket_KK.safetensors."""

import shutil
import tempfile
from pathlib import Path

import hydra
from _stage import Stage, launch, stage
from omegaconf import DictConfig

from suptickets import phases, runtime
from suptickets.schedules import epoch_split
from suptickets.sparsity.engine import density_report, masks_of
from suptickets.sparsity.masks import jaccard

OUT = Path("models/tickets")


def run(s: Stage) -> None:
    cfg, t = s.cfg, s.cfg["tickets"]
    warmup_epochs, _, n_tickets = epoch_split(cfg["train"]["epochs"], t["cycle_rate"], t["cycle_epochs"])
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.load_model("models/warmup.safetensors", runtime.new_model(cfg, summary, device))
    opt = runtime.optimizer_for(model, cfg["train"])
    step = runtime.load_optimizer("models/warmup.optim.safetensors", model, opt)
    flops = phases.FlopsMeter(model, summary["shape"], cfg["dst"]["method"], None)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tickets.", dir=OUT.parent))
    previous = [m.bool().clone() for m in masks_of(model).values()]
    per_ticket = []

    def on_ticket(k: int) -> None:
        nonlocal previous
        name = f"ticket_{k:02d}"
        runtime.save_model(tmp / f"{name}.safetensors", model)
        current = [m.bool().clone() for m in masks_of(model).values()]
        per_ticket.append({"ticket": name, "epoch": s.history[-1]["epoch"], "val_acc": s.history[-1]["val_acc"],
                           "density": density_report(model)[0], "jaccard_prev": jaccard(previous, current)})
        s.run.log({"tickets/val_acc": s.history[-1]["val_acc"], "tickets/jaccard_prev": per_ticket[-1]["jaccard_prev"],
                   "ticket": k})
        previous = current

    try:
        phases.cycles(model, opt, data, cfg, first_epoch=warmup_epochs, n_tickets=n_tickets, step=step,
                      on_epoch=s.on_epoch, on_ticket=on_ticket, flops=flops)
        shutil.rmtree(OUT, ignore_errors=True)
        tmp.rename(OUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s.write_history()
    s.write_metrics({"n_tickets": n_tickets, "tickets": {p["ticket"]: p for p in per_ticket},
                     "flops_ratio": flops.ratio})


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    stage("tickets", run, cfg)


if __name__ == "__main__":
    launch(main)
