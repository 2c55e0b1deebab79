"""What the DST stages share (sparse_baseline, warmup): a DST phase from a fresh mask, run as a stage
(resumable, its FLOPs counted), the metrics it ends with, and the files it leaves."""

from _stage import Stage


def train_sparse(s: Stage, epochs: int):
    """A DST phase of `epochs` epochs from a fresh mask: (model, optimizer, final step, metrics)."""
    from suptickets import phases, runtime
    from suptickets.sparsity.engine import masks_of
    from suptickets.sparsity.masks import densities

    cfg = s.cfg
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.new_model(cfg, summary, device)
    opt = runtime.optimizer_for(model, cfg["train"])
    flops = phases.FlopsMeter(model, summary["shape"], cfg["dst"]["method"], cfg["dst"]["update_frequency"])
    start = s.resume(model, opt, ["data/prepared"])
    flops.restore(start["extra"].get("flops", {}))
    s.extra = lambda: {"flops": flops.state()}
    step = phases.sparse_phase(model, opt, data, cfg, epochs=epochs, on_epoch=s.on_epoch, stage=s.name,
                               flops=flops, start_epoch=start["epoch"], step=start["step"])
    overall, layers = densities(masks_of(model))
    metrics = {"val_acc": s.history[-1]["val_acc"], "density": overall, "layer_density": layers,
               "flops_ratio": flops.ratio, "epochs": epochs, "steps": step}
    return model, opt, step, metrics


def write_outputs(s: Stage, model, path: str, metrics: dict) -> None:
    """The DST stage's model file (rank 0), history and metrics; then the stage is done."""
    s.save_model(path, model)
    s.write_history()
    s.write_metrics(metrics)
    s.done(metrics["flops_ratio"])
