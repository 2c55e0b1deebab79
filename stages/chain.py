"""chain: run several stages in one process, in order: the unit of work of a Hydra multirun sweep
outside DVC (SLURM through Hydra's submitit launcher, or submitit_local to try it).

    python stages/chain.py -m hydra/launcher=submitit_slurm experiment=cifar10_resnet32 \
        +chain=[warmup,tickets,superpose,evaluate] tickets.lr_max=0.005,0.01,0.05

Each job works in its own folder (`hydra.sweep.dir/<job number>`): the chain's inputs that it does
not produce itself are linked there from the project (see suptickets.sweep), its outputs and W&B
runs stay there, next to Hydra's `.hydra/` record of the job's config and overrides. Without `-m`
the chain works the same way in a run folder of its own (`outputs/<date>/<time>-chain`, or
`hydra.run.dir`), like a stage run by hand. `+chain` defaults to every stage after prepare
but landscape, which nothing reads (name it to add it).
"""

import os
import sys
from importlib import import_module
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Job processes (submitit's, on this machine or a SLURM node) unpickle this script's function and
# need the stage modules and the package: hand both folders down through the environment.
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])

import hydra  # noqa: E402
from _stage import TRAINING_STAGES, dvc_stages, enter_run_folder, launch, run_folder, stage  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from suptickets.errors import ConfigError  # noqa: E402
from suptickets.sweep import chain_inputs  # noqa: E402

DEFAULT_CHAIN = ["dense", "sparse_baseline", "warmup", "tickets", "superpose", "export", "evaluate", "report"]


def fail(message: str) -> None:
    print(f"error: chain: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    chain = list(OmegaConf.select(cfg, "chain", default=DEFAULT_CHAIN))
    try:
        needed = chain_inputs(dvc_stages(), chain)
    except ConfigError as err:
        fail(str(err))
    if cfg.launcher.nproc_per_node > 1 and any(s in TRAINING_STAGES for s in chain):
        fail(f"launcher.nproc_per_node={cfg.launcher.nproc_per_node}: a chain runs one process per job; "
             "for several GPUs per job run the stage scripts under torchrun")
    missing = [p for p in needed if not Path(p).exists()]
    folder = run_folder("chain")
    if folder is not None:  # a multirun job's folder, or a run by hand's
        if missing:
            fail(f"{', '.join(missing)}: missing in {Path.cwd()}; run the stages that write them first "
                 "(dvc repro), or start the chain earlier")
        enter_run_folder(folder, needed, cfg)
    settings = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "chain"])  # what the stages read
    for name in chain:
        stage(name, import_module(name).run, settings)


if __name__ == "__main__":
    launch(main, extra_keys=("chain",))
