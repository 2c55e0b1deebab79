"""warmup: the DST method for the first E - C epochs; leaves T0 and what `tickets` needs to go on."""

from _stage import Stage, main_of
from _training import train_sparse, write_outputs

from suptickets.schedules import split_of


def run(s: Stage) -> None:
    from suptickets import runtime

    warmup_epochs, _, _ = split_of(s.cfg)
    model, opt, step, metrics = train_sparse(s, warmup_epochs)
    if s.rank == 0:
        runtime.save_optimizer("models/warmup.optim.safetensors", model, opt, step)
    write_outputs(s, model, "models/warmup.safetensors", metrics)


if __name__ == "__main__":
    main_of("warmup", run)
