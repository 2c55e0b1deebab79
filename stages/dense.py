"""dense: the dense baseline, trained for the whole epoch budget."""

from _stage import Stage, main_of


def run(s: Stage) -> None:
    from suptickets import phases, runtime

    cfg = s.cfg
    device = runtime.setup(cfg["threads"], cfg["device"])
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    model = runtime.new_model(cfg, summary, device)
    opt = runtime.optimizer_for(model, cfg["train"])
    start = s.resume(model, opt, ["data/prepared"])
    phases.dense(model, opt, data, cfg, epochs=cfg["train"]["epochs"], on_epoch=s.on_epoch,
                 start_epoch=start["epoch"], step=start["step"])
    s.save_model("models/dense.safetensors", model)
    s.write_history()
    last = s.history[-1]
    s.write_metrics({"val_acc": last["val_acc"], "train_loss": last["train_loss"], "epochs": last["epoch"]})
    s.done()


if __name__ == "__main__":
    main_of("dense", run)
