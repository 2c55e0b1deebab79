"""sparse_baseline: the DST method alone for the whole epoch budget (the fair comparison)."""

from _stage import Stage, main_of
from _training import train_sparse, write_outputs


def run(s: Stage) -> None:
    model, _, _, metrics = train_sparse(s, s.cfg["train"]["epochs"])
    write_outputs(s, model, "models/sparse_baseline.safetensors", metrics)


if __name__ == "__main__":
    main_of("sparse_baseline", run)
