"""What the `report` stage makes of a run: its files read and checked, the figures drawn from them
(`figures.py`), a Markdown summary, and the same in W&B.

Pure functions over the pipeline's files (no DVC or Hydra here): the per-epoch histories
(`plots/<stage>.csv`), `metrics/evaluate.json`, and the masks of the model files. The per-epoch rows
only hold the lr of each epoch's last step, so `lr_per_step` rebuilds the lr of every step of warmup
and the cycles with the functions the phases set it with (`schedules.step_lr` over the E − C warmup
epochs, `schedules.cycle_lr` over the cycles), with each epoch's number of steps taken from the
rows' `step` differences.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from . import figures, tracking
from .comparison import is_ticket
from .errors import BadInputFile, BadModelFile, MissingInput
from .figures import FIGURES
from .schedules import cycle_lr, split_of, step_lr
from .schemas import EVALUATION_COLUMNS, HISTORY_COLUMNS, validate_history
from .sparsity.masks import jaccard

if TYPE_CHECKING:
    from torch import Tensor


# ----------------------------------------------------------------------------------------------
# reading


def read_history(path: str | os.PathLike) -> pd.DataFrame:
    """A per-epoch history CSV (`plots/<stage>.csv`), validated like the stages write it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such file")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise BadInputFile(f"{path}: not a readable CSV ({type(err).__name__}: {err})") from None
    extra = tuple(c for c in df.columns if c not in HISTORY_COLUMNS)
    return validate_history(df, extra=extra).reset_index(drop=True)


def evaluation_rows(evaluate: Mapping) -> list[dict]:
    """metrics/evaluate.json as table rows (model, test_acc, test_loss, density), in display order.

    The dense model's density is 1; the tickets' ensemble has none (it is M models)."""
    rows = []
    for name in model_order(evaluate["test_acc"]):
        density = evaluate.get("density", {}).get(name)
        if density is None and name == "dense":
            density = 1.0
        rows.append({"model": name, "test_acc": float(evaluate["test_acc"][name]),
                     "test_loss": _maybe_float(evaluate.get("test_loss", {}).get(name)),
                     "density": _maybe_float(density)})
    return rows


def model_order(names) -> list[str]:
    """dense, sparse_baseline, warmup, ticket_01.., superposed, ticket_ensemble, then anything else."""
    names = list(names)
    head = [n for n in ("dense", "sparse_baseline", "warmup") if n in names]
    tickets = sorted(n for n in names if is_ticket(n))
    tail = [n for n in ("superposed", "ticket_ensemble") if n in names]
    rest = sorted(set(names) - set(head) - set(tickets) - set(tail))
    return head + tickets + tail + rest


def _maybe_float(v):
    return None if v is None else float(v)


# ----------------------------------------------------------------------------------------------
# the per-step learning rate


def epoch_steps(history: pd.DataFrame, start_step: int = 0, name: str = "history") -> list[int]:
    """Steps of each epoch of a history: the differences of its `step` column (the first from
    `start_step`, the step count before the history's first epoch). A phase takes the same number
    of steps every epoch."""
    steps = [int(s) for s in history["step"]]
    counts = [b - a for a, b in zip([start_step] + steps[:-1], steps)]
    if any(n <= 0 for n in counts):
        raise BadInputFile(f"{name}: steps {steps} (from {start_step}) do not increase")
    if len(set(counts)) > 1:
        raise BadInputFile(f"{name}: epochs of {sorted(set(counts))} steps; a phase takes the same number every epoch")
    return counts


def _span(epochs: list[int]) -> str:
    return f"{epochs[0]}..{epochs[-1]}" if epochs else "(none)"


def lr_per_step(cfg: Mapping, warmup: pd.DataFrame, tickets: pd.DataFrame) -> pd.DataFrame:
    """The lr of every optimizer step of warmup and the cycles, rebuilt from the config with the
    functions the phases use: `schedules.step_lr` over the E − C warmup epochs (train.lr,
    train.milestones, train.gamma, after train.lr_warmup_epochs of linear warm-up), then
    `schedules.cycle_lr` (triangular lr_min → lr_max → lr_min over each cycle of L epochs).

    Columns: step (0-based global step index, the lr used for update step+1), lr, phase
    ("warmup"/"tickets"), cycle (0 in warmup, k = 1..M in the k-th cycle), epoch (1-based).
    """
    t, tr = cfg["tickets"], cfg["train"]
    warmup_epochs, _, n_tickets = split_of(cfg)
    length = t["cycle_epochs"]
    w_epochs = [int(e) for e in warmup["epoch"]]
    if w_epochs != list(range(1, warmup_epochs + 1)):
        raise BadInputFile(f"plots/warmup.csv: epochs {_span(w_epochs)} but the config gives "
                         f"{warmup_epochs} warmup epochs (train.epochs={tr['epochs']}, "
                         f"tickets.cycle_rate={t['cycle_rate']}, tickets.cycle_epochs={length})")
    t_epochs = [int(e) for e in tickets["epoch"]]
    expected = list(range(warmup_epochs + 1, warmup_epochs + n_tickets * length + 1))
    if t_epochs != expected:
        raise BadInputFile(f"plots/tickets.csv: epochs {_span(t_epochs)} but the config gives cycles over epochs "
                         f"{expected[0]}..{expected[-1]}")
    warm_counts = epoch_steps(warmup, name="plots/warmup.csv")
    cycle_counts = epoch_steps(tickets, start_step=int(warmup["step"].iloc[-1]), name="plots/tickets.csv")
    warm_lr = step_lr(cfg, warmup_epochs, warm_counts[0])
    cycles_lr = cycle_lr(cfg, warmup_epochs, cycle_counts[0])
    rows = []
    step = 0
    for epoch, n in zip(w_epochs, warm_counts):
        rows.extend((step + i, warm_lr(epoch - 1, i), "warmup", 0, epoch) for i in range(n))
        step += n
    for epoch, n in zip(t_epochs, cycle_counts):
        cycle = (epoch - 1 - warmup_epochs) // length + 1
        rows.extend((step + i, cycles_lr(epoch - 1, i), "tickets", cycle, epoch) for i in range(n))
        step += n
    return pd.DataFrame(rows, columns=["step", "lr", "phase", "cycle", "epoch"])


def lr_mismatches(per_step: pd.DataFrame, histories: Sequence[pd.DataFrame], rtol: float = 1e-5) -> list[str]:
    """Epochs whose logged end-of-epoch lr differs from the rebuilt lr of that epoch's last step
    (the CSVs keep 6 significant digits); an empty list when the rebuild matches the logs."""
    lr = per_step.set_index("step")["lr"]
    out = []
    for h in histories:
        for epoch, step, logged in zip(h["epoch"], h["step"], h["lr"]):
            rebuilt = lr.get(int(step) - 1)
            if rebuilt is None or not math.isclose(rebuilt, float(logged), rel_tol=rtol, abs_tol=1e-12):
                out.append(f"epoch {int(epoch)}: logged lr {float(logged):.6g}, rebuilt {rebuilt}")
    return out


# ----------------------------------------------------------------------------------------------
# masks


def jaccard_matrix(masks: Mapping[str, Mapping[str, "Tensor"]]) -> tuple[list[str], np.ndarray]:
    """Pairwise Jaccard overlap of whole mask sets: (labels, symmetric matrix with ones on the diagonal)."""
    labels = list(masks)
    if not labels:
        raise ValueError("no mask sets to compare")
    params = list(masks[labels[0]])
    for name in labels[1:]:
        if set(masks[name]) != set(params):
            raise BadModelFile(f"{name}: masked parameters {sorted(masks[name])} differ from {labels[0]}'s {sorted(params)}")
    sets = {name: [masks[name][p].bool() for p in params] for name in labels}
    n = len(labels)
    matrix = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = jaccard(sets[labels[i]], sets[labels[j]])
    return labels, matrix


def mask_sets(warmup: Mapping, tickets: Sequence[Mapping], superposed: Mapping) -> dict[str, Mapping]:
    """Label the mask sets for the heat map: T0 (warmup), T1..TM, superposed."""
    out = {"T0 (warmup)": warmup}
    out.update({f"T{k}": m for k, m in enumerate(tickets, start=1)})
    out["superposed"] = superposed
    return out


# ----------------------------------------------------------------------------------------------
# figures and the Markdown summary


def write_figures(cfg: Mapping, histories: Mapping[str, pd.DataFrame], evaluate: Mapping,
                  masks: Mapping[str, Mapping], folder: str | os.PathLike) -> dict[str, Path]:
    """All six figures into `folder`, named by FIGURES' keys. `histories` holds dense,
    sparse_baseline, warmup, tickets; `masks` holds {"warmup": .., "tickets": [..], "superposed": ..}
    (each {param: bool mask})."""
    folder = Path(folder)
    warmup_epochs, _, n_tickets = split_of(cfg)
    length = cfg["tickets"]["cycle_epochs"]
    target = cfg["dst"]["density"]
    per_step = lr_per_step(cfg, histories["warmup"], histories["tickets"])
    labels, matrix = jaccard_matrix(mask_sets(masks["warmup"], masks["tickets"], masks["superposed"]))
    return {
        "val_acc": figures.plot_val_acc(histories, folder / "val_acc.png", warmup_epochs=warmup_epochs,
                                        n_tickets=n_tickets, cycle_epochs=length),
        "lr": figures.plot_lr(per_step, histories, folder / "lr.png"),
        "density": figures.plot_density(histories, folder / "density.png", target=target,
                                        warmup_epochs=warmup_epochs, n_tickets=n_tickets, cycle_epochs=length),
        "test_acc": figures.plot_test_acc(evaluation_rows(evaluate), folder / "test_acc.png"),
        "layer_density": figures.plot_layer_density(masks["warmup"], masks["superposed"],
                                                    folder / "layer_density.png", target=target),
        "mask_overlap": figures.plot_mask_overlap(labels, matrix, folder / "mask_overlap.png"),
    }


def export_markdown(export: Mapping, figure: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """The summary's section on the exported sparse files: one row per model, and the size figure."""
    rel = Path(os.path.relpath(figure, base)) if base is not None else Path(figure)
    lines = ["## Really sparse files (export)", "",
             "| model | dense weights | sparse file | smaller | density | same predictions |", "|---|---|---|---|---|---|"]
    for name, m in export["models"].items():
        lines.append(f"| {name} | {m['dense_bytes'] / 1e3:,.0f} kB | {m['sparse_bytes'] / 1e3:,.0f} kB | "
                     f"{m['smaller']:.1f}× | {m['density']:.4g} | "
                     f"{'yes' if m['predictions_equal'] else 'no'}, {m['test_samples']} test samples "
                     f"(logits within {export['tolerance']:g}; kernels {', '.join(m['verified_kernels'])}) |")
    caption = "Model file size: dense weights vs the exported sparse file"
    lines += ["", "Latencies are in `metrics/export_speed.json` (not tracked: timings differ from run to run).",
              "", f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(lines)


LANDSCAPE_FIGURE = "landscape.png"  # written by the landscape stage, which the report neither runs nor reads


def landscape_markdown(figure: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """The summary's section on the landscape between the tickets: a static link to the landscape
    stage's figure (the report does not read or need it, so it may be missing) and what it shows."""
    rel = Path(os.path.relpath(figure, base)) if base is not None else Path(figure)
    caption = "Test accuracy between the tickets"
    return "\n".join([
        "## The landscape between the tickets", "",
        "Test accuracy and loss along straight lines from T0 to each ticket and from T0 and each ticket to the "
        "superposed model, which show whether the models averaged lie in one basin (barriers in "
        "`metrics/landscape.json`); if the figure is missing, `dvc repro landscape` makes it.", "",
        f"![{caption}]({rel.as_posix()})", ""])


def config_line(cfg: Mapping) -> str:
    """The experiment in one line."""
    t, d, s = cfg["tickets"], cfg["dst"], cfg["superpose"]
    warmup_epochs, _, n_tickets = split_of(cfg)
    method = s["method"] + (f" (factor {s['cima_factor']:g})" if s["method"] == "cima" else "")
    return (f"`{cfg['name']}`: data {cfg['data']['name']}, model {cfg['model']['name']}, "
            f"DST {d['method']} at density {d['density']:g} ({d['distribution']}), "
            f"{cfg['train']['epochs']} epochs = {warmup_epochs} warmup + {n_tickets} tickets × "
            f"{t['cycle_epochs']} epoch{'' if t['cycle_epochs'] == 1 else 's'}, cyclic lr {t['lr_min']:g}–{t['lr_max']:g}, "
            f"superpose {method}, re-prune {s['reprune']}, scope {s['scope']}, seed {cfg['seed']}")


def _points(x: float) -> str:
    return f"{100 * x:+.2f} points"


def verdict(evaluate: Mapping, seed: int | None = None) -> str:
    """One plain sentence: did the superposed model beat sparse_baseline on this run?"""
    acc = evaluate.get("test_acc", {})
    missing = [n for n in ("superposed", "sparse_baseline") if n not in acc]
    if missing:
        return f"No comparison on this run: no test accuracy for {' and '.join(missing)}."
    sup, base = float(acc["superposed"]), float(acc["sparse_baseline"])
    word = "beat" if sup > base else "did not beat" if sup < base else "tied with"
    run = "On this run" if seed is None else f"On this run (seed {seed}, one run)"
    return (f"{run} the superposed model {word} sparse_baseline: test accuracy {sup:.4f} vs {base:.4f} "
            f"({_points(sup - base)}).")


def _gain_reference(key: str, evaluate: Mapping) -> str:
    """What a gain key of evaluate.json compares against: vs_sparse_baseline -> sparse_baseline."""
    other = key[3:] if key.startswith("vs_") else key
    if other == "best_ticket":
        acc = evaluate.get("test_acc", {})
        tickets = {n: v for n, v in acc.items() if is_ticket(n)}
        return f"best ticket ({max(tickets, key=tickets.get)})" if tickets else "best ticket"
    return other


def summary_markdown(cfg: Mapping, evaluate_metrics: Mapping, figure_paths: Mapping[str, str | os.PathLike],
                     base: str | os.PathLike | None = None) -> str:
    """reports/summary.md: the config in one line, test accuracy and density per model, the gains in
    points, the figures (links relative to `base`, the folder the summary is written to, when
    given), and one sentence on superposed vs sparse_baseline."""
    rows = evaluation_rows(evaluate_metrics)
    n_tickets = sum(1 for r in rows if is_ticket(r["model"]))
    lines = [f"# Sup-tickets report: {cfg['name']}", "", config_line(cfg) + ".", "",
             "## Test accuracy", "", "| model | test acc | test loss | density |", "|---|---|---|---|"]
    for r in rows:
        density = "—" if r["density"] is None else f"{r['density']:.4g}"
        loss = "—" if r["test_loss"] is None else f"{r['test_loss']:.4f}"
        name = f"{r['model']} ({n_tickets}× inference)" if r["model"] == "ticket_ensemble" else r["model"]
        lines.append(f"| {name} | {r['test_acc']:.4f} | {loss} | {density} |")
    gains = evaluate_metrics.get("gain", {})
    if gains:
        lines += ["", "## Gains of the superposed model", ""]
        for key, value in sorted(gains.items()):
            lines.append(f"- superposed − {_gain_reference(key, evaluate_metrics)}: {_points(float(value))}")
    lines += ["", verdict(evaluate_metrics, cfg.get("seed")), "", "## Figures", ""]
    for key, path in figure_paths.items():
        rel = Path(os.path.relpath(path, base)) if base is not None else Path(path)
        caption = FIGURES.get(key, key)
        lines += [f"### {caption}", "", f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Weights & Biases


def log_to_wandb(wb_run, rows: Sequence[Mapping], figures: Mapping[str, str | os.PathLike],
                 summary: Mapping[str, object], models: Sequence[Mapping] = ()) -> None:
    """Log the report on a wandb run (or nothing when `wb_run` is None): the evaluation table as a
    wandb.Table, the figures as wandb.Image, `summary` into the run summary, and each model file as
    an Artifact of references only (weights are never uploaded): the file on this machine and, when
    its metadata names one (`dvc_remote_object`), its copy in the team's DVC remote (`tracking.remote_uri`).

    `models`: {"name", "path" (the file to reference), "metadata"} per model file, and "file_name"
    (the name in the artifact; default: the referenced file's) when the reference is a copy under
    another name, such as a DVC cache file."""
    if wb_run is None:
        return
    import wandb

    table = wandb.Table(columns=EVALUATION_COLUMNS, data=[[r[c] for c in EVALUATION_COLUMNS] for r in rows])
    logged: dict[str, object] = {"report/evaluate": table}
    for key, path in figures.items():
        logged[f"report/{key}"] = wandb.Image(str(path), caption=FIGURES.get(key, key))
    wb_run.log(logged)
    for key, value in summary.items():
        wb_run.summary[key] = value
    for m in models:
        path = Path(m["path"]).resolve()
        name = m.get("file_name", path.name)
        art = wandb.Artifact(f"model-{m['name']}", type="model", metadata=dict(m.get("metadata", {})),
                             description=f"{m['name']}: a reference to {name} at {path} (not uploaded)")
        art.add_reference("file://" + str(path), name=name, checksum=False)
        remote = tracking.remote_uri(m.get("metadata", {}).get("dvc_remote_object"))
        if remote:  # the same file in the team's DVC remote: what a colleague fetches
            try:
                art.add_reference(remote, name=f"dvc-remote/{name}", checksum=False)
            except wandb.errors.Error:  # s3:// needs boto3, gs:// google-cloud-storage: the metadata says it
                pass
        wb_run.log_artifact(art)
