"""The GPU check: does the pipeline hold on CUDA, how fast does it train, and does superposition beat
the same-budget DST baseline, in one run of a fixed budget (420 s) on one GPU.

    bash scripts/gpu_check.sh OUT_DIR [--budget-s 420] [--dry-run]    # finds Python, then runs this

The check reads in three parts, one file each, plus this entry point:
- scripts/gpu_check_plan.py: what runs, and the gain part's predicted seconds from recorded
  measurements (each with its source); written to the report first ("Plan");
- scripts/gpu_check_run.py: the parts. a. parity: the smoke DAG (prepare .. evaluate) twice per mode,
  files compared by hash, eager and graphed (`train.graphs`), then graphed against eager; b. throughput:
  benchmarks/gpu_throughput.py for ResNet-20 1x28x28 and ResNet-32 3x32x32, one lane and 8 lanes in
  one process; c. the gain of `experiment=fashion_mnist_resnet` (superposed - sparse_baseline) at
  densities 0.05 and 0.02 and at 0.05 with the prune rate decayed on a cosine, 8 seeds each, the runs
  as lanes of stages/chain.py processes (gpu_check_jobs.py runs and watches the processes);
- scripts/gpu_check_report.py: OUT_DIR/gpu_check.json (everything, each lane's accuracies), .md
  (the tables) and .log, rewritten after every step, so a run cut short still reports what finished.

The stages run through stages/chain.py (no DVC, W&B disabled), each run in its own folder under a work
directory. `--dry-run` does all of it on the CPU at toy sizes and shows the real run's plan.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gpu_check_plan as plan  # noqa: E402
from gpu_check_jobs import STARTED, child_env  # noqa: E402
from gpu_check_report import Report  # noqa: E402
from gpu_check_run import gain, parity, prepare_jobs, throughput  # noqa: E402
from suptickets.composition import compose  # noqa: E402


class CheckError(RuntimeError):
    """The check cannot start (bad arguments, no CUDA); one line, exit 2."""


def environment(dry_run: bool) -> dict:
    import importlib.metadata as md

    import torch

    cuda = torch.cuda.is_available()
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
           "cuda_version": torch.version.cuda, "cpu_count": os.cpu_count(),
           "device": torch.cuda.get_device_name(0) if cuda and not dry_run else "CPU"}
    versions = {}
    for name in ("numpy", "pandas", "pandera", "hydra-core", "omegaconf", "PyYAML", "pydantic", "safetensors",
                 "torchvision", "matplotlib"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    offline = os.environ.get("GPU_CHECK_OFFLINE") == "1"  # set by gpu_check.sh when it installed .gpu_carry's wheels
    env["installed_from"] = "the wheels of .gpu_carry (no network)" if offline else sys.prefix
    env["wheels"] = sorted(p.name for p in (ROOT / ".gpu_carry/wheels").glob("*.whl")) if offline else []
    if cuda and not dry_run:
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["nvidia_smi"] = None
    return env


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    ap.add_argument("--budget-s", type=float, default=plan.REAL_BUDGET_S,
                    help=f"wall-clock budget of the whole check ({plan.REAL_BUDGET_S:.0f})")
    ap.add_argument("--started-at", type=float, help="when the budget began (epoch seconds; default: now)")
    ap.add_argument("--dry-run", action="store_true", help="everything on the CPU at toy sizes")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a new temporary folder)")
    ap.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files (default: the project's data.root)")
    ap.add_argument("--seeds", type=int, help=f"seeds per gain cell (8; dry run {plan.DRY_SEEDS})")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.02],
                    help="gain cells with the preset's comparator (prune rate constant)")
    ap.add_argument("--cosine", type=float, nargs="*", default=[0.05],
                    help="gain cells with the prune rate decayed on a cosine (dst.prune_rate_decay=cosine)")
    ap.add_argument("--lanes", type=int, help=f"gain runs to a process, as lanes (8; dry run {plan.DRY_LANES})")
    ap.add_argument("--parallel", type=int, help=f"processes of lanes at once (1; dry run {plan.DRY_PARALLEL})")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="extra override for the gain runs")
    ap.add_argument("--parity-s", type=float, default=150.0, help="time limit of the parity part")
    ap.add_argument("--throughput-s", type=float, default=plan.THROUGHPUT_SLOT_S, help="time limit of the throughput part")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        raise CheckError(f"--budget-s={args.budget_s:g}: expected a number of seconds > 0")
    if (args.seeds is not None and args.seeds < 1) or not args.densities + args.cosine \
            or not all(0 < d <= 1 for d in args.densities + args.cosine):
        raise CheckError(f"--seeds={args.seeds} --densities={args.densities} --cosine={args.cosine}: expected >= 1 "
                         "seed and densities in (0, 1]")
    if args.data_root and not Path(args.data_root).is_dir():
        raise CheckError(f"--data-root={args.data_root}: no such folder")
    for name in ("lanes", "parallel"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CheckError(f"--{name}={getattr(args, name)}: expected an integer >= 1")
    dry = {"seeds": plan.DRY_SEEDS, "lanes": plan.DRY_LANES, "parallel": plan.DRY_PARALLEL}
    real = {"seeds": 8, "lanes": 8, "parallel": 1}
    for name in dry:
        if getattr(args, name) is None:
            setattr(args, name, (dry if args.dry_run else real)[name])
    args.real = {name: real[name] if args.dry_run else getattr(args, name) for name in real}
    args.data_root_override = [f"data.root='{Path(args.data_root).resolve()}'"] if args.data_root else []
    return args


def the_plan(args) -> dict:
    """The plan of a real run: this run's own, or, in a dry run, the real run's (faithful settings)."""
    cells = plan.gain_cells(args.densities, args.cosine)
    epochs = plan.training_epochs(compose(plan.ROOT / "params", [f"experiment={plan.GAIN}", *args.overrides]), plan.GAIN_CHAIN)
    seeds, lanes = args.real["seeds"], args.real["lanes"]
    budget = plan.REAL_BUDGET_S if args.dry_run else args.budget_s
    return {"cells": cells, "seeds": seeds, "throughput": {"presets": plan.THROUGHPUT_PRESETS, "lanes": plan.THROUGHPUT_LANES},
            "gain": plan.plan_gain(len(cells) * seeds, epochs, lanes, budget)}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except CheckError as err:
        print(f"error: gpu_check: {err}", file=sys.stderr)
        return 2
    started = args.started_at or time.time()
    deadline = started + args.budget_s - plan.WRITE_MARGIN_S
    report = Report(args.out, {"check": "suptickets GPU check", "dry_run": args.dry_run, "status": "running",
                               "started_at": started, "budget_s": args.budget_s, "command": " ".join(sys.argv)})
    cut = {"signal": None}

    def on_signal(signum, frame):
        cut["signal"] = signal.Signals(signum).name
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        report.data["environment"] = env = environment(args.dry_run)
        report.log(f"{env['device']}, torch {env['torch']}, Python {env['python']}, {env['cpu_count']} cores")
        if not args.dry_run and not env["cuda_available"]:
            raise CheckError("CUDA is not available on this machine; run on a GPU, or use --dry-run")
        report.data["plan"] = the_plan(args)
        report.log(f"plan{' of a real run' if args.dry_run else ''}: gain {report.data['plan']['gain']['verdict']}")
        report.write()
        args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check."))
        args.work.mkdir(parents=True, exist_ok=True)
        report.data["work"] = str(args.work)
        cenv = child_env()
        prepared = prepare_jobs(args)  # each seed's split for the gain, prepared beside the parity runs
        parity(args, cenv, report, deadline, prepared)
        for name, part in (("throughput", lambda: throughput(args, cenv, report, deadline)),
                           ("gain", lambda: gain(args, cenv, report, deadline, prepared))):
            if time.time() < deadline:
                part()
            else:
                report.data[name] = {"status": "not run: no time left in the budget"}
        report.data["status"] = "complete"
    except CheckError as err:
        report.data["status"], report.data["error"] = "error", str(err)
        report.write()
        print(f"error: gpu_check: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        report.data["status"] = f"interrupted ({cut['signal'] or 'SIGINT'}): what finished is above"
        code = 130
    except BaseException:
        report.data["status"], report.data["error"] = "crashed", traceback.format_exc()
        report.write()
        raise
    finally:
        for j in STARTED:
            j.stop("cut", "still running when the check ended")
    report.write()
    report.log(f"{'done' if code == 0 else 'interrupted'}: {report.out / 'gpu_check.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
