"""What every stage script shares: the Hydra entry point, validation before any work, the W&B run,
and writing the stage's history, metrics and model atomically.

Run by hand, a stage composes `params/` (`python stages/dense.py model=resnet32 train.epochs=2`)
and works in its own run folder, `outputs/<date>/<time>-<stage>/`, with its inputs linked there
from the project, so DVC's outputs are never overwritten (`hydra.run.dir=.` writes into the
project instead). Under DVC it reads the composed root `params.yaml` (`-cp .. -cn params`, see
dvc.yaml) and writes in place.

A stage script imports torch and the package's heavy modules inside its body, after the config
check: a refused setting answers in well under a second, not after the seconds torch takes to load.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# This checkout's own package first: DVC's queued and temporary experiments run in a copy of the
# repository, and must use the code of that copy, not whatever `pip install -e` points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from suptickets.environment import apply_defaults, raise_keyboard_interrupt  # noqa: E402

apply_defaults()  # OpenMP's wait policy, MKL's CNR mode (unless set): read when torch loads, so first

import hydra  # noqa: E402
import yaml  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from suptickets import dvcfiles  # noqa: E402
from suptickets.artifacts import parse_yaml, write_json, write_text  # noqa: E402
from suptickets.composition import compose_config, preset_overrides  # noqa: E402
from suptickets.config import get, known_keys, unknown_keys, validate  # noqa: E402
from suptickets.errors import ConfigError, SupticketsError  # noqa: E402
from suptickets.history import HISTORY_COLUMNS, check_history, history_csv  # noqa: E402
from suptickets.progress import StageClock  # noqa: E402
from suptickets.tracking import Run, config_hash, overrides  # noqa: E402

if TYPE_CHECKING:  # imported where used: a stage depends (dvc.yaml) only on the modules it loads
    from suptickets.resume import Checkpoint

log = logging.getLogger("suptickets")
PROJECT = Path(__file__).resolve().parents[1]
HYDRA_DEFAULTS = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout",
                  "hydra/hydra_logging=disabled"]
TRAINING_STAGES = ("dense", "sparse_baseline", "warmup", "tickets")
# Settings a stage reads that cannot change its results, so dvc.yaml does not declare them (tests/
# test_dag.py holds every stage to its declared params plus these). Validated like any other.
RESULT_FREE = (
    "name",             # a label: W&B run names and the W&B group of a DVC-less run (report declares it)
    "tracking",         # where W&B writes (mode, project, entity)
    "data.workers",     # DataLoader worker processes: batches are the same for any number (imagefolder)
    "data.download",    # whether prepare may fetch the official files when they are missing: same files
)


def config_options(params: Path = PROJECT / "params") -> list[tuple[str, dict]]:
    """(package, content) of every file in params/: the root, and each option of each config group
    (a `# @package _global_` preset at the root, any other option under its group's key)."""
    out = [("", parse_yaml((params / "params.yaml").read_text()))]
    for path in sorted(params.glob("*/*.yaml")):
        text = path.read_text()
        out.append(("" if text.startswith("# @package _global_") else path.parent.name, parse_yaml(text)))
    return out


def declared_params(name: str) -> list[str]:
    """The params of stage `name` in dvc.yaml (keys or whole sections of params.yaml)."""
    return dvcfiles.declared_params(dvc_stages().get(name, {}))


def declared_settings(cfg: dict, name: str) -> dict:
    """Stage `name`'s declared params (dvc.yaml) with their values in `cfg`: what DVC keys the stage by."""
    return {k: get(cfg, k) for k in declared_params(name)}


def in_temporary_copy() -> bool:
    """Whether this process runs in DVC's copy of the repository (a queued or temporary experiment)."""
    return bool(os.environ.get("DVC_ROOT")) and Path(os.environ["DVC_ROOT"]).resolve() != Path.cwd().resolve()


@functools.lru_cache(maxsize=1)
def dvc_stages() -> dict:
    """The project's dvc.yaml stages, read once per process (callers do not change them)."""
    return dvcfiles.stages(PROJECT)


def stage_keys(name: str) -> list[str]:
    """The settings stage `name` reads: its params in dvc.yaml, plus RESULT_FREE."""
    return declared_params(name) + list(RESULT_FREE)


@dataclass
class Stage:
    name: str
    cfg: dict
    run: Run
    rank: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    extra: Callable[[], dict] = dict  # stage-specific state to keep in the resume checkpoint
    _model: object = None
    _optimizer: object = None
    live: list = field(default_factory=list)  # files written while training, removed if the stage fails

    def resume(self, model, optimizer, inputs: list[str]) -> dict:
        """Restore the last end-of-epoch checkpoint of this stage, config and inputs, if any.

        Returns {"epoch": epochs done (0 if fresh), "step", "extra"}; the history is restored too.
        """
        from suptickets.resume import Checkpoint

        root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
        here = Path.cwd().resolve()
        self.checkpoint = Checkpoint.for_stage(root, self.name, declared_settings(self.cfg, self.name), [Path(p) for p in inputs],
                                               workdir="" if here == root else str(here))
        self._model, self._optimizer = model, optimizer
        meta = self.checkpoint.load(model, optimizer)
        if meta is None:
            return {"epoch": 0, "step": 0, "extra": {}}
        self.history = meta["history"]
        log.info("%s: resuming after epoch %d (step %d) from %s", self.name, meta["epoch"], meta["step"],
                 self.checkpoint.dir)
        return meta

    def on_epoch(self, row: dict) -> None:
        self.history.append(row)
        self.run.log(row)  # the same metric names in every stage, so W&B panels overlay the runs
        self.write_live(row)
        if self.checkpoint is not None and self.rank == 0:
            self.checkpoint.save(self._model, self._optimizer, {"epoch": row["epoch"], "step": row["step"],
                                                                "history": self.history, "extra": self.extra()})

    def write_live(self, row: dict) -> None:
        """After each epoch (rank 0): the history CSV so far, and the metrics file as this epoch's
        row. Both are the stage's declared outputs, and DVC reads a running experiment's workspace,
        so `dvc exp show` and `dvc plots show` follow a stage while it trains (dvclive's way, by
        hand: see docs/sweeps-and-comparison.md); the stage's end overwrites both with its final files."""
        if self.rank != 0:
            return
        self.write_history()
        write_json(f"metrics/{self.name}.json", row)
        self.live = [f"plots/{self.name}.csv", f"metrics/{self.name}.json"]

    def discard_live(self) -> None:
        """A failed or interrupted stage leaves no half-made output behind."""
        for path in self.live:
            Path(path).unlink(missing_ok=True)

    def save_model(self, path, model) -> None:
        """Only rank 0 writes artifacts."""
        from suptickets import runtime

        if self.rank == 0:
            runtime.save_model(path, model)

    def done(self, flops_ratio: float | None = None) -> None:
        """The stage's outputs are written: its resume checkpoint is no longer needed; one summary line."""
        if self.checkpoint is not None and self.rank == 0:
            self.checkpoint.clear()
        if self.history:
            last = self.history[-1]
            flops = "" if flops_ratio is None else f", training FLOPs {flops_ratio:.3f}x dense"
            log.info(f"{self.name}: done after epoch {last['epoch']}: val_acc {last['val_acc']:.4f} at density "
                     f"{last['density']:.3f}{flops}")

    def write_history(self, path: str | None = None, extra: tuple[str, ...] = ("val_loss",)) -> None:
        """Check the history (plain Python: no pandas in a training process) and write its CSV."""
        if self.rank != 0:
            return
        columns = HISTORY_COLUMNS + list(extra)
        rows = [{c: row.get(c) for c in columns} for row in self.history]
        check_history(rows, extra=extra)
        write_text(path or f"plots/{self.name}.csv", history_csv(rows, columns))

    def write_metrics(self, metrics: dict, path: str | None = None) -> None:
        if self.rank != 0:
            return
        write_json(path or f"metrics/{self.name}.json", metrics)
        self.run.summary(metrics if all(not isinstance(v, dict) for v in metrics.values())
                         else _flatten(metrics))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def provenance() -> dict:
    """Where a run's code came from, for its W&B config: the git commit checked out where the stage
    runs (DVC's temporary copy for a queued experiment), and in a DVC experiment its baseline revision
    and name (DVC's DVC_EXP_BASELINE_REV and DVC_EXP_NAME); None where there is none."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"git_commit": proc.stdout.strip() if proc.returncode == 0 else None,
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME")}


def group_name(cfg: dict) -> str:
    return os.environ.get("DVC_EXP_NAME") or f"params-{config_hash(cfg)}"


def preset_base(cfg: dict) -> dict:
    """The composition of params/ this run started from: the preset named by `cfg["name"]`
    (params/experiment/<name>.yaml) or the defaults."""
    base = compose_config(PROJECT / "params", preset_overrides(PROJECT / "params", cfg.get("name")))
    return OmegaConf.to_container(base, resolve=True)


# ----------------------------------------------------------------------------------------------
# runs by hand: a folder of their own


@dataclass
class RunFolder:
    """The folder a run outside DVC works in, and what it made to get there."""

    folder: Path
    project: Path
    made: list[Path]  # folders created for it, outermost first (removed again if the run fails)


class RunState(threading.local):
    """This thread's run: hydra.run.dir on the command line; the RunFolder it entered. Per thread:
    each lane of `chain.py +lanes` (suptickets.lanes) is a thread with a run folder of its own."""

    run_dir_given: bool = False
    hydra_made: tuple[Path, ...] = ()  # the folders of hydra.run.dir that Hydra makes for this run
    entered: RunFolder | None = None


RUN = RunState()


def by_hand() -> bool:
    """Started by a person: not by DVC (it sets DVC_ROOT and DVC_STAGE) nor as a rank of torchrun."""
    return not any(os.environ.get(v) for v in ("DVC_ROOT", "DVC_STAGE", "WORLD_SIZE"))


def run_folder(label: str) -> Path | None:
    """Where this run writes when that is not where it started: a multirun job's own folder; for a
    run by hand, `hydra.run.dir` when the command line gives it (`.`: the project itself), else a new
    `outputs/<date>/<time>-<label>`. None: in place (under DVC, as a torchrun rank, or moved already)."""
    if RUN.entered is not None:
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN or (by_hand() and RUN.run_dir_given):
        folder = Path(hc.runtime.output_dir)
        return None if folder.resolve() == Path.cwd().resolve() else folder
    if not by_hand():
        return None
    stamp, n = time.strftime("%Y-%m-%d/%H-%M-%S"), 0
    while (folder := Path("outputs") / f"{stamp}-{label}{f'-{n}' if n else ''}").exists():
        n += 1
    return folder


def enter_run_folder(folder: Path, inputs: list[str], dcfg: DictConfig, overrides: list[str] | None = None) -> list[str]:
    """Make `folder`, link into it from here those of `inputs` that exist (returns the others),
    record the config and the overrides (default: the command line's) in its .hydra/ (as Hydra does
    for a multirun job), and move into it."""
    from suptickets.sweep import link_inputs  # only runs outside DVC need it

    made = [p for p in reversed([folder, *folder.parents]) if not p.exists() or p.resolve() in RUN.hydra_made]
    folder.mkdir(parents=True, exist_ok=True)
    RUN.entered = RunFolder(folder.resolve(), Path.cwd().resolve(), [p.resolve() for p in made])
    missing = link_inputs(Path.cwd(), folder, inputs)
    record = folder / ".hydra"
    if not record.exists():
        record.mkdir()
        OmegaConf.save(dcfg, record / "config.yaml")
        given = list(HydraConfig.get().overrides.task) if overrides is None else overrides
        (record / "overrides.yaml").write_text(yaml.safe_dump(given))
    os.chdir(folder)
    return missing


def leave_run_folder(failed: bool) -> str:
    """After a failed run by hand: remove the folders enter_run_folder made when the run left nothing
    there but its linked inputs, its .hydra/ record and W&B's log; else keep them (outputs of earlier
    stages of a chain, a resume checkpoint) and return a hint on going on from them (or ""). A run
    refused before it entered one removes the (empty) hydra.run.dir folders Hydra made for it."""
    entered = RUN.entered
    if failed and entered is None:
        made = [p for p in RUN.hydra_made if p.is_dir()]
        if made and not any(f.is_file() for f in made[0].rglob("*")):
            shutil.rmtree(made[0])
        return ""
    if not failed or not entered.made:
        return ""
    kept = [p for p in entered.folder.rglob("*") if p.is_file() and not p.is_symlink()
            and p.relative_to(entered.folder).parts[0] not in (".hydra", "wandb")]
    if kept:  # a folder the command line named needs no hint
        return "" if RUN.run_dir_given else \
            f" (the run folder {entered.folder} keeps what was written; add hydra.run.dir={entered.folder} to go on)"
    os.chdir(entered.project)
    shutil.rmtree(entered.made[0], ignore_errors=True)
    return ""


def unknown_overrides(args: list[str], extra_keys: tuple[str, ...] = ()) -> list[str]:
    """A line for each override in `args` (`key=value`, with or without `+`/`~`) of a key that no
    config file defines, naming the nearest known key; config groups and hydra.* are known."""
    groups = {p.name for p in (PROJECT / "params").iterdir() if p.is_dir()}
    named = [a.lstrip("+~").split("=", 1)[0] for a in args if "=" in a and not a.startswith("-")]
    return unknown_keys(dict.fromkeys(k for k in named if not k.startswith("hydra") and k not in groups),
                        known_keys(config_options()) | set(extra_keys))


def launch(main: Callable[[], None], extra_keys: tuple[str, ...] = ()) -> None:
    """Call a stage's `@hydra.main` function with the runtime defaults (no output folder, no log
    file, logs to stdout) unless the command line sets them. A command-line override of a key that
    no config file defines (`tickets.cycle_rat=0.2`, with or without `+`) is refused first, in one
    line naming the nearest known key (Hydra's own message would say only that it is not in the
    config)."""
    problems = unknown_overrides(sys.argv[1:], extra_keys)
    if problems:
        refuse(Path(sys.argv[0]).stem, ConfigError("\n".join(problems)))
    given = " ".join(sys.argv[1:])
    run_dir = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.lstrip("+").startswith("hydra.run.dir=")), None)
    RUN.run_dir_given = run_dir is not None
    if run_dir and "${" not in run_dir:  # Hydra makes this folder before the stage starts: a refused run removes it
        target = Path(run_dir).resolve()
        RUN.hydra_made = tuple(p for p in reversed([target, *target.parents]) if not p.exists())
    sys.argv[0] = str(Path(sys.argv[0]).resolve())  # the same script after moving into a run folder
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])  # keep each sweep job's .hydra/ record
    sys.argv += [a for a in HYDRA_DEFAULTS if a.split("=")[0] not in given
                 and not (multirun and a.startswith("hydra.output_subdir"))]
    main()


def main_of(name: str, body: Callable[[Stage], None]) -> None:
    """A stage script's entry point (`if __name__ == "__main__": main_of("evaluate", run)`): `body` run
    as stage `name` (`stage`) by a Hydra app over params/, started by `launch`. Hydra finds the script
    through `__wrapped__` (its body), so the config path (`../params`, or DVC's `-cp ..`) and the job
    name are the script's, as with an `@hydra.main` function written in it."""

    @hydra.main(version_base="1.3", config_path="../params", config_name="params")
    @functools.wraps(body)
    def main(cfg: DictConfig) -> None:
        stage(name, body, cfg)

    launch(main)


def stage(name: str, body: Callable[[Stage], None], dcfg: DictConfig) -> None:
    """Run `body` as stage `name`: validate the config, start W&B, report the project's own errors
    (suptickets.errors: a setting, a data or input file the user can fix) as one line each (exit 2)
    with nothing half-written. Any other exception is a bug: its traceback is kept (exit 1)."""
    rank = int(os.environ.get("RANK", "0"))
    quiet = rank != 0 or in_temporary_copy()  # other ranks, and DVC's queued / temporary experiments, log warnings only
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    cfg = OmegaConf.to_container(dcfg, resolve=True)
    try:
        validate(cfg, stage_keys(name), known_keys(config_options()))
    except ConfigError as err:
        refuse(name, err)
    folder = run_folder(name)
    if folder is not None:  # by hand: never over DVC's outputs
        enter_run_folder(folder, dvcfiles.chain_inputs(dvc_stages(), [name]), dcfg)
        log.info(f"{name}: run outside DVC: writing to {folder}/ (its inputs linked from the project; "
                 f"hydra.run.dir=. writes into the project instead)")
    procs = cfg["launcher"]["nproc_per_node"] if name in TRAINING_STAGES else 1
    if procs > 1 and "WORLD_SIZE" not in os.environ:
        # the same command, once per process, under PyTorch's own launcher (dvc.yaml stays the same),
        # in the folder this process works in
        args = [a for a in sys.argv[1:] if not a.startswith("hydra.run.dir=")] + ["hydra.run.dir=."]
        code = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={procs}", sys.argv[0], *args])
        hint = leave_run_folder(failed=code != 0)
        if code and hint:
            print(f"error: {name}: the processes failed (exit {code}){hint}", file=sys.stderr)
        sys.exit(code)
    # WANDB_MODE wins over the config (W&B reads it when no mode is passed); "disabled" skips W&B entirely
    env_mode = os.environ.get("WANDB_MODE")
    mode = cfg["tracking"]["wandb"]["mode"] if not env_mode else ("disabled" if env_mode == "disabled" else None)
    root = os.environ.get("DVC_ROOT") or os.getcwd()
    changed = overrides(cfg, preset_base(cfg), HydraConfig.get().overrides.task) \
        if rank == 0 and mode != "disabled" else []
    run = Run.start(stage=name, cfg=cfg, group=group_name(cfg), directory=root, mode=mode, rank=rank,
                    changed=changed, source=provenance() if rank == 0 and mode != "disabled" else None)
    if threading.current_thread() is threading.main_thread():  # (a lane is not: Python's rule for handlers)
        signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    clock = StageClock.start(name, cfg, Path(root)) if rank == 0 and os.environ.get("DVC_STAGE") else None
    this = Stage(name, cfg, run, rank=rank)
    try:
        body(this)
    except SupticketsError as err:
        this.discard_live()
        run.finish(exit_code=2)
        hint = leave_run_folder(failed=True)
        refuse(name, SupticketsError(f"{str(err).rstrip()}{hint}"))
    except KeyboardInterrupt:
        this.discard_live()
        run.finish(exit_code=130)
        entered = RUN.entered
        how = f"rerun it with hydra.run.dir={entered.folder}" if entered and entered.made and not RUN.run_dir_given \
            else "rerun the stage"
        print(f"error: {lane_prefix()}{name}: interrupted; {how} to resume from its last finished epoch", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        this.discard_live()
        run.finish(exit_code=1)
        leave_run_folder(failed=True)
        raise
    run.finish()
    if clock is not None:
        clock.stop()
    if folder is not None:
        log.info(f"{name}: outputs in {folder}/")
    dist = sys.modules.get("torch.distributed")  # loaded by the body where it trains under torchrun
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()


def refuse(name: str, err: Exception | str) -> None:
    """The project's own error: one line (each line of its message) naming the stage, exit 2."""
    if RUN.entered is None:  # refused before it entered a run folder: what Hydra made for it goes
        leave_run_folder(failed=True)
    lines = str(err).strip().splitlines() or [type(err).__name__]
    for line in lines:  # a message that already names the stage (TrainingDiverged does) is not named twice
        print(f"error: {lane_prefix()}{name}: {line.removeprefix(f'{name}: ')}", file=sys.stderr)
    sys.exit(2)


def lane_prefix() -> str:
    """`<lane name>: ` in a lane of `chain.py +lanes` (a thread of suptickets.lanes), else ""."""
    thread = threading.current_thread()
    return "" if thread is threading.main_thread() else f"{thread.name}: "

