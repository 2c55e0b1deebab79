"""The GPU check's plan: what each part runs, and how long the gain part is predicted to take.

Every predicted figure is computed from a recorded measurement (FIGURES, each with its source) or says
that none exists; nothing here is measured. The plan of a real run is the same whether it is made for
the run itself or shown by a dry run (`plan_gain` with the faithful settings and the real budget).
"""

from __future__ import annotations

import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMOKE = "fashion_mnist_resnet_smoke"
GAIN = "fashion_mnist_resnet"
PARITY_CHAIN = ["prepare", "dense", "sparse_baseline", "warmup", "tickets", "superpose", "evaluate"]
# dense does not depend on density (and evaluate reports one only when present: stages/chain.py's
# READ_IF_PRESENT); each seed's split is prepared once (data/prepared records its seed). Each lane
# evaluates its models as the last stage of its chain, in the process that trained them.
GAIN_CHAIN = ["sparse_baseline", "warmup", "tickets", "superpose", "evaluate"]

# Parity: the smoke DAG twice per mode, the files compared; then graphed against eager (files, weights,
# accuracies). The graphed mode needs CUDA: a dry run (CPU) lists it as not run.
PARITY_MODES = [{"mode": "eager", "overrides": []}, {"mode": "graphed", "overrides": ["train.graphs=true"]}]
CUDA_ONLY_MODES = {"graphed": "not run: a dry run trains on the CPU, and CUDA graphs need a CUDA device"}

# Throughput: the check's slot runs benchmarks/gpu_throughput.py with these settings (shorter than the
# benchmark's defaults of 2 s windows and 10 pairs, so four rows fit the slot; run the benchmark alone
# for its 1.5% resolution).
THROUGHPUT_PRESETS = ["fashion_mnist_resnet", "cifar10_resnet32"]
THROUGHPUT_LANES = [1, 8]
THROUGHPUT_ARGS = ["--window-s", "1", "--pairs", "4", "--update-calls", "3"]
THROUGHPUT_SLOT_S = 120.0

# A dry run: the same chains at toy size on the CPU. Parity: 800 images, quarter width, 6 epochs (4 of
# warmup and 2 cycles: enough for every model to clear the accuracy check). The gain runs are smaller
# still (200 images, 4 epochs: 2 of warmup, 2 cycles), 2 seeds per cell (the plan shown is still the
# real run's: 8 seeds), 3 lanes to a process, 2 processes at once.
DRY = ["data.limit_train=800", "data.limit_test=200", "model.width=0.25", "train.epochs=6",
       "train.batch_size=32", "tickets.cycle_rate=0.34", "dst.update_frequency=5"]
DRY_GAIN = [*DRY, "data.limit_train=200", "train.epochs=4", "tickets.cycle_rate=0.5"]
DRY_SEEDS, DRY_LANES, DRY_PARALLEL = 2, 3, 2
DRY_THROUGHPUT_PRESETS = ["fashion_mnist_resnet"]

REAL_BUDGET_S = 420.0   # the check's default budget on one GPU
WRITE_MARGIN_S = 3.0    # kept at the end for the last write of the report

# Recorded measurements the plan predicts from: (low, high, source).
FIGURES = {
    "setup_s": (4.1, 6.4, "measured on one H200, 2026-11-30 (benchmarks/gpu_check/2026-11-30-run*.log): the "
                          "start of gpu_check.sh to the check's first line, carried wheels installed"),
    "parity_s": (19.1, 21.6, "measured on one H200, 2026-11-30: the smoke DAG, two copies side by side "
                             "(benchmarks/gpu_check/2026-11-30-run*.log)"),
    "prepare_s": (7.0, 7.5, "measured on one H200 machine, 2026-11-30: prepare of the whole Fashion-MNIST, "
                            "beside the parity runs (benchmarks/gpu_check/2026-11-30-run*.log)"),
    "epochs_per_s": (0.314, 0.342, "measured on one H200, 2026-11-30, fashion_mnist_resnet with today's eager "
                                   "step: training epochs per second summed over 2-12 processes side by side "
                                   "(gpu_check.json epochs_per_s_all_jobs of runs 1 and 2; README 'Measured on "
                                   "an NVIDIA H200'). Lanes in one process have not been timed on a GPU: the "
                                   "plan assumes they do as well as processes, no better (each eager step is "
                                   "bound by launching kernels from Python)"),
}
TAIL_S = 15.0  # an allowance per process for what follows the last epoch (superpose, evaluate); not measured


def training_epochs(cfg: dict, chain: list[str]) -> int:
    """Epoch lines the chain logs: E for each of dense and sparse_baseline, E for warmup + tickets."""
    e = cfg["train"]["epochs"]
    return e * sum(s in chain for s in ("dense", "sparse_baseline")) + (e if "warmup" in chain else 0)


def gain_cells(densities: list[float], cosine: list[float]) -> list[dict]:
    """The gain's cells: each density with the preset's comparator (RigL, prune rate constant, the
    reference's), and each of `cosine` with the prune rate decayed on a cosine (`dst.prune_rate_decay`;
    DESIGN 1.2: a stronger baseline reported beside). The setting holds for the whole chain."""
    cells = [{"cell": f"{d:g}", "density": d, "comparator": "constant", "overrides": [f"dst.density={d}"]}
             for d in densities]
    cells += [{"cell": f"{d:g} cosine", "density": d, "comparator": "cosine",
               "overrides": [f"dst.density={d}", "dst.prune_rate_decay=cosine"]} for d in cosine]
    return cells


def gain_runs(cells: list[dict], seeds: int) -> list[dict]:
    """Every (cell, seed), seed by seed across the cells: any first k runs leave the cells' n at most
    one apart, so a check cut short still compares the cells on equal footing."""
    return [{"name": f"gain_{c['cell'].replace(' ', '_')}_s{s}", "cell": c["cell"], "density": c["density"],
             "comparator": c["comparator"], "seed": s, "overrides": [*c["overrides"], f"seed={s}"]}
            for s in range(seeds) for c in cells]


def span(low: float, high: float) -> str:
    return f"{low:.0f} s" if round(low) == round(high) else f"{low:.0f}-{high:.0f} s"


def plan_gain(runs: int, epochs_per_run: int, lanes: int, budget_s: float) -> dict:
    """The gain part of a real run on one GPU: its processes of `lanes` lanes one after another, the
    seconds predicted from FIGURES, the seconds the budget leaves it, and what the check does if the
    two disagree."""
    lo, hi = {}, {}
    for k in ("setup_s", "parity_s", "epochs_per_s"):
        lo[k], hi[k] = FIGURES[k][:2]
    processes = math.ceil(runs / lanes)
    epochs = runs * epochs_per_run
    modes = len(PARITY_MODES)  # one after another; graphed taken to be no slower than eager (not measured)
    before = (lo["setup_s"] + modes * lo["parity_s"] + THROUGHPUT_SLOT_S,
              hi["setup_s"] + modes * hi["parity_s"] + THROUGHPUT_SLOT_S)
    available = budget_s - WRITE_MARGIN_S - before[1]
    # fastest: the highest rate; slowest: the lowest
    predicted = (epochs / hi["epochs_per_s"] + processes * TAIL_S, epochs / lo["epochs_per_s"] + processes * TAIL_S)
    fit_runs = max(0, math.floor((available - TAIL_S) * lo["epochs_per_s"] / epochs_per_run))
    fits = predicted[1] <= available
    plan = {
        "runs": runs, "epochs_per_run": epochs_per_run, "epochs": epochs, "lanes_per_process": lanes,
        "processes": processes, "processes_at_once": 1, "budget_s": budget_s,
        "before_gain_s": [round(before[0], 1), round(before[1], 1)],
        "available_s": round(available, 1), "predicted_s": [round(predicted[0]), round(predicted[1])],
        "fits": fits, "runs_predicted_to_fit": min(fit_runs, runs),
        "sources": {k: FIGURES[k][2] for k in ("setup_s", "parity_s", "epochs_per_s")}
        | {"parity_modes": f"{modes} parity modes one after another, each taken to last parity_s (the graphed "
                           "mode's time is not measured)",
           "prepare_s": FIGURES["prepare_s"][2] + "; the seeds' prepare runs go beside the parity runs, taken to "
                        "end within them (not measured with 8 at once)",
           "throughput_slot_s": f"the check's own limit for the throughput part ({THROUGHPUT_SLOT_S:.0f} s)",
           "tail_s": f"an allowance of {TAIL_S:.0f} s per process for superpose and evaluate (not measured)"},
    }
    if fits:
        plan["verdict"] = (f"fits: {runs} runs x {epochs_per_run} epochs predicted to take {span(*predicted)}, "
                           f"{available:.0f} s left for them")
    else:
        need = budget_s + predicted[1] - available
        plan["verdict"] = (
            f"does not fit: {runs} runs x {epochs_per_run} epochs = {epochs} epochs are predicted to take "
            f"{span(*predicted)} at {lo['epochs_per_s']}-{hi['epochs_per_s']} epochs/s (today's eager step), "
            f"against {available:.0f} s left in a {budget_s:.0f} s budget; about {fit_runs} run(s) fit. The "
            "check keeps the faithful settings (no fewer epochs) and runs the runs in order, seed by seed "
            "across the cells, as lanes of one process at a time, each process no larger than what is "
            "predicted to fit in the time left (at least one run, so the lanes' own rate is measured); a "
            "process still running at the end of the budget is cut and its runs count for nothing. n per "
            f"cell is reported as it comes. All {runs} runs need a budget of about {need:.0f} s at today's "
            "eager rate, or the graphed step (`train.graphs`, used by the gain once its parity mode passes; its rate "
            "is not measured yet)")
    return plan


def lanes_to_start(remaining: list[dict], lanes: int, seconds_left: float, epochs_per_run: int,
                   epochs_per_s: float | None, first: bool) -> int:
    """How many of the remaining runs the next process takes: at most `lanes`; with a rate, only those
    predicted to end in the time left (the first process at least one); without one (a dry run), `lanes`."""
    if epochs_per_s is None:
        return min(lanes, len(remaining))
    fit = math.floor(max(seconds_left - TAIL_S, 0.0) * epochs_per_s / epochs_per_run)
    return min(lanes, len(remaining), max(fit, 1 if first else 0))
