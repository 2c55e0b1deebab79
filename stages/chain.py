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

Lanes: `+lanes` runs several chains in this one process, one training step each in turn
(suptickets.lanes), each exactly as it would run alone. Its value is a list of quoted strings, one
per lane, each the lane's own overrides separated by spaces (added to the command line's):

    python stages/chain.py experiment=smoke '+chain=[dense,sparse_baseline]' \
        '+lanes=["seed=1","seed=2 dst.density=0.02"]'

Lane k works in `<the job's folder>/lane-<k>` with the chain's inputs linked there and its own
`.hydra/` record (its config; the job's overrides and then its own); a lane that fails stops alone
with its one-line error, the others finish, and the job exits with the failure's status. Under
`-m`, top-level commas sweep over lane lists: `'+lanes=["seed=0","seed=1"],["seed=2","seed=3"]'` is
two jobs of two lanes. On a GPU small models fill the device this way (each lane has its own CUDA
stream); on a CPU lanes take as long as the same runs one after the other.
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
from _stage import (TRAINING_STAGES, config_options, dvc_stages, enter_run_folder, launch, refuse, run_folder,  # noqa: E402
                    stage, stage_keys, unknown_overrides)
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from suptickets.composition import compose_config  # noqa: E402
from suptickets.config import known_keys, validate  # noqa: E402
from suptickets.dvcfiles import chain_inputs, stage_paths  # noqa: E402
from suptickets.errors import ConfigError  # noqa: E402
from suptickets.sweep import link_inputs  # noqa: E402

DEFAULT_CHAIN = ["dense", "sparse_baseline", "warmup", "tickets", "superpose", "export", "evaluate", "report"]
# Inputs a stage reads only when they are there: evaluate scores every model present, and a sparse
# chain's comparisons (superposed against sparse_baseline and the tickets) need no dense model.
READ_IF_PRESENT = {"evaluate": {"models/dense.safetensors"}}


def required(stages: dict, chain: list[str], needed: list[str]) -> list[str]:
    """`needed` without the inputs that every stage of `chain` reading them reads only when present."""
    def optional(path: str) -> bool:
        readers = [n for n in chain if path in stage_paths(stages[n].get("deps"))]
        return all(path in READ_IF_PRESENT.get(n, ()) for n in readers)

    return [p for p in needed if not optional(p)]


def fail(message: str) -> None:
    refuse("chain", message)


LANES_FORM = "a list of quoted strings, one per lane, e.g. '+lanes=[\"seed=1\",\"seed=2 dst.density=0.02\"]'"


def check_processes(cfg: DictConfig, chain: list[str], who: str = "") -> None:
    if cfg.launcher.nproc_per_node > 1 and any(s in TRAINING_STAGES for s in chain):
        fail(f"{who}launcher.nproc_per_node={cfg.launcher.nproc_per_node}: a chain runs one process per job; "
             "for several GPUs per job run the stage scripts under torchrun")


def lane_overrides(cfg: DictConfig) -> list[list[str]] | None:
    """`+lanes` as each lane's list of overrides (None without it); a bad value is one line."""
    given = OmegaConf.select(cfg, "lanes", default=None)
    if given is None:
        return None
    shown = OmegaConf.to_container(given) if isinstance(given, (DictConfig, ListConfig)) else given
    if not isinstance(given, ListConfig) or not given or not all(isinstance(v, str) and v.split() for v in given):
        fail(f"+lanes={shown!r}: expected {LANES_FORM}")
    return [v.split() for v in given]


def lane_configs(cfg: DictConfig, lanes: list[list[str]], chain: list[str]) -> list[DictConfig]:
    """Each lane's config: the job's own composition with the lane's overrides added, every lane
    checked for every stage of the chain before any runs."""
    hc = HydraConfig.get()
    source = next(s for s in hc.runtime.config_sources if s.provider == "main").path.removeprefix("file://")
    base = [o for o in hc.overrides.task if o.lstrip("+~").split("=", 1)[0] != "lanes"]
    known = known_keys(config_options())
    configs = []
    for k, extra in enumerate(lanes):
        who = f"+lanes: lane-{k} ({' '.join(extra)}): "
        problems = [f"{o}: expected key=value" for o in extra if "=" not in o] + \
            [f"{o}: the job's, not a lane's to set" for o in extra if o.lstrip("+~").startswith(("hydra", "chain=", "lanes="))] + \
            unknown_overrides(extra)
        if problems:
            fail(who + "; ".join(problems))
        try:
            lane = compose_config(Path(source), base + extra, hc.job.config_name)
        except Exception as err:  # Hydra's own errors (a bad value, an unknown option of a group)
            fail(who + str(err).strip().splitlines()[0])
        for name in chain:
            try:
                validate(OmegaConf.to_container(settings(lane), resolve=True), stage_keys(name), known)
            except ConfigError as err:
                fail(who + "; ".join(str(err).strip().splitlines()))
        check_processes(lane, chain, who)
        configs.append(lane)
    return configs


def settings(cfg: DictConfig) -> DictConfig:
    """What the stages read: the config without the chain and its lanes."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("chain", "lanes")])


def run_chain(chain: list[str], cfg: DictConfig) -> None:
    for name in chain:
        stage(name, import_module(name).run, settings(cfg))


def run_lanes(chain: list[str], lanes: list[list[str]], configs: list[DictConfig], needed: list[str]) -> None:
    """Each lane in its folder lane-<k> here (the chain's inputs linked from here); if any failed,
    exits with 1 when one of them met a bug, else with the highest status (130 interrupted, 2 a
    project error)."""
    from suptickets import lanes as lanes_module

    here = Path.cwd()
    base = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=", 1)[0] != "lanes"]
    folders = [here / f"lane-{k}" for k in range(len(lanes))]
    for folder in folders:
        folder.mkdir(exist_ok=True)
        link_inputs(here, folder, needed)

    def lane(k: int) -> None:
        enter_run_folder(folders[k], [], configs[k], overrides=base + lanes[k])
        run_chain(chain, configs[k])

    names = [f"lane-{k} ({' '.join(extra)})" for k, extra in enumerate(lanes)]
    codes = lanes_module.run([lambda k=k: lane(k) for k in range(len(lanes))], names)
    failed = [f"{n}: exit {c}" for n, c in zip(names, codes) if c]
    print(f"chain: {len(lanes) - len(failed)} of {len(lanes)} lanes finished in {here}/lane-*"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    if failed:
        sys.exit(1 if 1 in codes else max(codes))


@hydra.main(version_base="1.3", config_path="../params", config_name="params")
def main(cfg: DictConfig) -> None:
    chain = list(OmegaConf.select(cfg, "chain", default=DEFAULT_CHAIN))
    try:
        stages = dvc_stages()
        needed = chain_inputs(stages, chain)
    except ConfigError as err:
        fail(str(err))
    check_processes(cfg, chain)
    lanes = lane_overrides(cfg)
    configs = None if lanes is None else lane_configs(cfg, lanes, chain)
    missing = [p for p in required(stages, chain, needed) if not Path(p).exists()]
    folder = run_folder("chain")
    if missing and (folder is not None or lanes is not None):
        fail(f"{', '.join(missing)}: missing in {Path.cwd()}; run the stages that write them first "
             "(dvc repro), or start the chain earlier")
    if folder is not None:  # a multirun job's folder, or a run by hand's
        enter_run_folder(folder, needed, cfg)
    if lanes is None:
        run_chain(chain, cfg)
    else:
        run_lanes(chain, lanes, configs, needed)


if __name__ == "__main__":
    launch(main, extra_keys=("chain", "lanes"))
