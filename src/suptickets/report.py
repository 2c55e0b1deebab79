"""Figures and a Markdown summary of one run: what the `report` stage writes.

Pure functions over the pipeline's files (no DVC or Hydra here): the per-epoch histories
(`plots/<stage>.csv`), `metrics/evaluate.json`, and the masks of the model files. Figures are
static PNGs drawn with matplotlib's Agg backend and written atomically; the same inputs give the
same bytes (no timestamps in the PNG metadata), so `dvc repro` stays reproducible.

The per-epoch rows only hold the lr of each epoch's last step, so `lr_per_step` rebuilds the lr of
every step of warmup and the cycles from the config with the schedules the training used
(`multistep_lr` over the E − C warmup epochs, `triangular_lr` per cycle of L epochs), with the
number of steps of each epoch taken from the rows' `step` differences.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .artifacts import atomic_path  # noqa: E402
from .errors import BadInputFile, BadModelFile, MissingInput  # noqa: E402
from .schedules import epoch_split, linear_warmup, multistep_lr, triangular_lr  # noqa: E402
from .schemas import HISTORY_COLUMNS, validate_history  # noqa: E402
from .sparsity.masks import jaccard  # noqa: E402

if TYPE_CHECKING:
    from torch import Tensor

FIGURES = {  # file stem -> caption, in the order the summary shows them
    "val_acc": "Validation accuracy per epoch",
    "lr": "Learning rate per step (warmup, then the ticket cycles)",
    "density": "Density per epoch",
    "test_acc": "Test accuracy per model",
    "layer_density": "Per-layer density: superposed vs the training mask (warmup, T0)",
    "mask_overlap": "Pairwise mask overlap (Jaccard)",
}
EVALUATION_COLUMNS = ["model", "test_acc", "test_loss", "density"]
COLORS = {"dense": "0.45", "sparse_baseline": "C0", "warmup": "C1", "tickets": "C3", "superposed": "C2",
          "ticket_ensemble": "C4"}
DPI = 110
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same figure, same bytes


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


def split(cfg: Mapping) -> tuple[int, int, int]:
    """(warmup epochs, cyclic epochs, number of tickets) of the config."""
    t = cfg["tickets"]
    return epoch_split(cfg["train"]["epochs"], t["cycle_rate"], t["cycle_epochs"])


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
    tickets = sorted(n for n in names if n.startswith("ticket_") and n != "ticket_ensemble")
    tail = [n for n in ("superposed", "ticket_ensemble") if n in names]
    rest = sorted(set(names) - set(head) - set(tickets) - set(tail))
    return head + tickets + tail + rest


def _maybe_float(v):
    return None if v is None else float(v)


# ----------------------------------------------------------------------------------------------
# the per-step learning rate


def epoch_steps(history: pd.DataFrame, start_step: int = 0) -> list[int]:
    """Steps of each epoch of a history: the differences of its `step` column (the first from
    `start_step`, the step count before the history's first epoch)."""
    steps = [int(s) for s in history["step"]]
    counts = [b - a for a, b in zip([start_step] + steps[:-1], steps)]
    if any(n <= 0 for n in counts):
        raise BadInputFile(f"history steps {steps} (from {start_step}) do not increase")
    return counts


def _span(epochs: list[int]) -> str:
    return f"{epochs[0]}..{epochs[-1]}" if epochs else "(none)"


def lr_per_step(cfg: Mapping, warmup: pd.DataFrame, tickets: pd.DataFrame) -> pd.DataFrame:
    """The lr of every optimizer step of warmup and the cycles, rebuilt from the config.

    Columns: step (0-based global step index, the lr used for update step+1), lr, phase
    ("warmup"/"tickets"), cycle (0 in warmup, k = 1..M in the k-th cycle), epoch (1-based).
    Warmup uses multistep_lr over its E − C epochs (train.lr, train.milestones, train.gamma) after
    train.lr_warmup_epochs of linear warm-up;
    each cycle of L epochs uses triangular_lr(lr_min → lr_max → lr_min) over its steps.
    """
    t, tr = cfg["tickets"], cfg["train"]
    warmup_epochs, _, n_tickets = split(cfg)
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
    rows = []
    step = 0
    per_epoch = epoch_steps(warmup)
    warm_steps = tr.get("lr_warmup_epochs", 0) * (per_epoch[0] if per_epoch else 0)
    for epoch, n in zip(w_epochs, per_epoch):
        lr = multistep_lr(epoch - 1, warmup_epochs, tr["lr"], tr["milestones"], tr["gamma"])
        rows.extend((step + i, linear_warmup(step + i, warm_steps, lr), "warmup", 0, epoch) for i in range(n))
        step += n
    counts = epoch_steps(tickets, start_step=int(warmup["step"].iloc[-1]))
    for k in range(n_tickets):
        cycle = counts[k * length:(k + 1) * length]
        cycle_steps = sum(cycle)
        j = 0
        for e, n in enumerate(cycle):
            epoch = warmup_epochs + k * length + e + 1
            for i in range(n):
                rows.append((step, triangular_lr(j, cycle_steps, t["lr_min"], t["lr_max"]), "tickets", k + 1, epoch))
                step += 1
                j += 1
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


def layer_densities(masks: Mapping[str, "Tensor"]) -> dict[str, float]:
    """Active fraction of each mask, by parameter name."""
    return {k: float(m.float().mean()) for k, m in masks.items()}


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


# ----------------------------------------------------------------------------------------------
# figures


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def _joined(warmup: pd.DataFrame | None, tickets: pd.DataFrame | None) -> pd.DataFrame | None:
    parts = [h for h in (warmup, tickets) if h is not None and len(h)]
    return pd.concat(parts, ignore_index=True) if parts else None


def _mark_cycles(ax, warmup_epochs: int, n_tickets: int, length: int) -> None:
    """Shade the cycles (epochs warmup_epochs .. +M·L) on an epoch axis."""
    for k in range(n_tickets):
        lo = warmup_epochs + k * length + 0.5
        ax.axvspan(lo, lo + length, color="C3", alpha=0.06 if k % 2 == 0 else 0.12, lw=0)
    ax.axvline(warmup_epochs + 0.5, color="0.3", ls=":", lw=1)


def plot_val_acc(histories: Mapping[str, pd.DataFrame], path, *, warmup_epochs: int, n_tickets: int,
                 cycle_epochs: int) -> Path:
    """(a) validation accuracy per epoch: dense, sparse_baseline, and warmup followed by the tickets
    on the same epoch axis (the epoch that ends each cycle, a ticket, is starred)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name in ("dense", "sparse_baseline"):
        h = histories.get(name)
        if h is not None:
            ax.plot(h["epoch"], h["val_acc"], color=COLORS[name], lw=1.6, label=name)
    w, t = histories.get("warmup"), histories.get("tickets")
    if w is not None:
        ax.plot(w["epoch"], w["val_acc"], color=COLORS["warmup"], lw=1.6, label="warmup (T0 at its end)")
        ax.plot(w["epoch"].iloc[-1:], w["val_acc"].iloc[-1:], "o", color=COLORS["warmup"], ms=6)
    if t is not None:
        tx, ty = t["epoch"], t["val_acc"]
        if w is not None:  # draw the curve on from warmup's last epoch
            tx = pd.concat([w["epoch"].iloc[-1:], tx])
            ty = pd.concat([w["val_acc"].iloc[-1:], ty])
        ax.plot(tx, ty, color=COLORS["tickets"], lw=1.6, label="tickets (cyclic lr)")
        ends = t[(t["epoch"] - warmup_epochs) % cycle_epochs == 0]
        ax.plot(ends["epoch"], ends["val_acc"], "*", color=COLORS["tickets"], ms=11, label=f"tickets T1..T{n_tickets} (cycle ends)")
    _mark_cycles(ax, warmup_epochs, n_tickets, cycle_epochs)
    ys = pd.concat([h["val_acc"] for h in histories.values() if h is not None])
    top, lo = float(ys.max()), float(ys.min())
    pad = max(0.002, 0.05 * (top - lo))
    ax.set_ylim(lo - pad, top + pad)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy per epoch (cycles shaded)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_lr(per_step: pd.DataFrame, histories: Mapping[str, pd.DataFrame], path) -> Path:
    """(b) the lr of every step of warmup and the cycles (rebuilt), with the logged end-of-epoch
    values as dots, on one step axis (log scale, so the warmup's drops and the cycles both read)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    w = per_step[per_step["phase"] == "warmup"]
    ax.plot(w["step"], w["lr"], color=COLORS["warmup"], lw=1.4, label="warmup: multi-step lr")
    t = per_step[per_step["phase"] == "tickets"]
    for k, c in t.groupby("cycle"):
        ax.axvspan(c["step"].iloc[0], c["step"].iloc[-1] + 1, color="C3", alpha=0.06 if k % 2 else 0.12, lw=0)
        ax.plot(c["step"], c["lr"], color=COLORS["tickets"], lw=1.4,
                label="cycles: triangular lr" if k == 1 else None)
        ax.annotate(f"T{k}", (c["step"].iloc[-1], c["lr"].iloc[-1]), xytext=(0, -12),
                    textcoords="offset points", ha="center", fontsize=8, color=COLORS["tickets"])
    if len(w):
        ax.annotate("T0", (w["step"].iloc[-1], w["lr"].iloc[-1]), xytext=(0, -12), textcoords="offset points",
                    ha="center", fontsize=8, color=COLORS["warmup"])
    logged = _joined(histories.get("warmup"), histories.get("tickets"))
    if logged is not None:
        ax.plot(logged["step"] - 1, logged["lr"], "o", ms=3.5, mfc="none", color="0.15",
                label="logged at each epoch's end")
    ax.set_yscale("log")
    lrs = per_step["lr"]
    ax.set_ylim(float(lrs.min()) / 2.5, float(lrs.max()) * 2)
    last = int(per_step["step"].iloc[-1]) + 1
    ax.set_xlim(0, last * 1.02)
    spe = per_step.groupby("epoch").size()
    if spe.nunique() == 1:  # an epoch axis on top when every epoch has the same number of steps
        n = int(spe.iloc[0])
        top = ax.secondary_xaxis("top", functions=(lambda x: x / n, lambda e: e * n))
        top.set_xlabel("epoch", fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title("Learning rate per step: warmup, then the ticket cycles (shaded)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_density(histories: Mapping[str, pd.DataFrame], path, *, target: float, warmup_epochs: int,
                 n_tickets: int, cycle_epochs: int) -> Path:
    """(c) overall density per epoch of sparse_baseline and warmup + tickets, with the target."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    b = histories.get("sparse_baseline")
    if b is not None:
        ax.plot(b["epoch"], b["density"], color=COLORS["sparse_baseline"], lw=3, alpha=0.6, label="sparse_baseline")
    w, t = histories.get("warmup"), histories.get("tickets")
    if w is not None:
        ax.plot(w["epoch"], w["density"], "--o", color=COLORS["warmup"], ms=3, lw=1.2, label="warmup")
    if t is not None:
        ax.plot(t["epoch"], t["density"], "--s", color=COLORS["tickets"], ms=3, lw=1.2, label="tickets")
    ax.axhline(target, color="0.3", ls=":", lw=1, label=f"target dst.density={target:g}")
    _mark_cycles(ax, warmup_epochs, n_tickets, cycle_epochs)
    shown = [h["density"] for h in (b, w, t) if h is not None]
    top = max([target] + [float(d.max()) for d in shown])
    ax.set_ylim(0, top * 1.3)
    values = {round(float(v), 6) for d in shown for v in d}
    title = "Density per epoch"
    if len(values) == 1:
        title += f" (every epoch of every run at {values.pop():g})"
    ax.set_xlabel("epoch")
    ax.set_ylabel("density (active weights / maskable weights)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_test_acc(evaluate: Mapping, path) -> Path:
    """(d) final test accuracy per model as bars, with a line at sparse_baseline. The y axis is
    zoomed onto the values (it does not start at 0); each bar carries its value."""
    rows = evaluation_rows(evaluate)
    names = [r["model"] for r in rows]
    acc = np.array([r["test_acc"] for r in rows])
    n_tickets = sum(1 for n in names if n.startswith("ticket_") and n != "ticket_ensemble")
    colors = [COLORS["tickets"] if n.startswith("ticket_") and n != "ticket_ensemble" else COLORS.get(n, "0.6")
              for n in names]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.75 * len(names) + 1.5), 4.5))
    bars = ax.bar(range(len(names)), acc, color=colors, width=0.7)
    if "ticket_ensemble" in names:
        bars[names.index("ticket_ensemble")].set_hatch("//")
    spread = float(acc.max() - acc.min())
    pad = max(0.002, 0.6 * spread)
    lo, hi = float(acc.min()) - pad, float(acc.max()) + 0.45 * pad
    ax.set_ylim(lo, hi)
    for x, v in enumerate(acc):
        ax.annotate(f"{v:.4f}", (x, v), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
    if "sparse_baseline" in names:
        base = float(evaluate["test_acc"]["sparse_baseline"])
        ax.axhline(base, color=COLORS["sparse_baseline"], ls="--", lw=1.2, label=f"sparse_baseline {base:.4f}")
        ax.legend(loc="upper right", fontsize=8)
    labels = [f"{n}\n({n_tickets}× inference)" if n == "ticket_ensemble" else n for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Test accuracy per model (y axis starts at {lo:.3f}, not 0)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_density(training: Mapping[str, "Tensor"], superposed: Mapping[str, "Tensor"],
                       path, *, target: float | None = None) -> Path:
    """(e) density of each masked layer: the training mask (warmup, T0) next to the superposed model."""
    a, b = layer_densities(training), layer_densities(superposed)
    layers = [k for k in training if k in b]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(7.5, 0.6 * len(layers) + 2), 4.5))
    width = 0.38
    ba = ax.bar(x - width / 2, [a[k] for k in layers], width, color=COLORS["warmup"], label="training mask (warmup, T0)")
    bb = ax.bar(x + width / 2, [b[k] for k in layers], width, color=COLORS["superposed"], label="superposed")
    if len(layers) <= 12:
        for bar_set in (ba, bb):
            for bar in bar_set:
                ax.annotate(f"{bar.get_height():.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    if target is not None:
        ax.axhline(target, color="0.3", ls=":", lw=1, label=f"overall target {target:g}")
    names = [f"{k}\n{'×'.join(str(s) for s in training[k].shape)}" for k in layers]
    ax.set_xticks(x, names, rotation=0 if len(layers) <= 6 else 60, ha="center" if len(layers) <= 6 else "right",
                  fontsize=8)
    ax.set_ylim(0, min(1.1, max(list(a.values()) + list(b.values())) * 1.15 + 0.01))
    ax.set_ylabel("layer density")
    ax.set_title("Per-layer density: training mask vs superposed (after re-pruning)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_mask_overlap(labels: Sequence[str], matrix: np.ndarray, path) -> Path:
    """(f) heat map of the pairwise Jaccard overlap of the mask sets, values in the cells."""
    n = len(labels)
    size = max(4.8, 0.75 * n + 2.2)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8 if n <= 10 else 6,
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Jaccard |A∩B| / |A∪B|")
    ax.set_title("Mask overlap: warmup (T0), tickets, superposed")
    fig.tight_layout()
    return _save(fig, path)


def plot_export_size(export: Mapping, path) -> Path:
    """(g) file size of each exported model (metrics/export.json): the dense weights, the masked
    model file (weights and masks), and the sparse file; the bars carry their size in kB."""
    models = list(export["models"])
    kinds = [("dense_bytes", "dense weights", "0.45"), ("masked_file_bytes", "masked model file", "0.7"),
             ("sparse_bytes", "sparse file (export)", COLORS["superposed"])]
    x, width = np.arange(len(models)), 0.26
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (key, label, color) in enumerate(kinds):
        kb = [export["models"][m][key] / 1e3 for m in models]
        bars = ax.bar(x + (i - 1) * width, kb, width, color=color, label=label)
        ax.bar_label(bars, [f"{v:,.0f}" for v in kb], fontsize=8, padding=2)
    ax.set_xticks(x, [f"{m}\n{export['models'][m]['smaller']:.1f}× smaller than dense" for m in models])
    ax.set_ylabel("file size (kB)")
    ax.set_ylim(0, max(export["models"][m]["masked_file_bytes"] for m in models) / 1e3 * 1.3)
    ax.set_title("Model file size: dense vs the exported sparse file (CSR, BatchNorm folded)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


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


def mask_sets(warmup: Mapping, tickets: Sequence[Mapping], superposed: Mapping) -> dict[str, Mapping]:
    """Label the mask sets for the heat map: T0 (warmup), T1..TM, superposed."""
    out = {"T0 (warmup)": warmup}
    out.update({f"T{k}": m for k, m in enumerate(tickets, start=1)})
    out["superposed"] = superposed
    return out


def write_figures(cfg: Mapping, histories: Mapping[str, pd.DataFrame], evaluate: Mapping,
                  masks: Mapping[str, Mapping], folder: str | os.PathLike) -> dict[str, Path]:
    """All six figures into `folder`, named by FIGURES' keys. `histories` holds dense,
    sparse_baseline, warmup, tickets; `masks` holds {"warmup": .., "tickets": [..], "superposed": ..}
    (each {param: bool mask})."""
    folder = Path(folder)
    warmup_epochs, _, n_tickets = split(cfg)
    length = cfg["tickets"]["cycle_epochs"]
    target = cfg["dst"]["density"]
    per_step = lr_per_step(cfg, histories["warmup"], histories["tickets"])
    labels, matrix = jaccard_matrix(mask_sets(masks["warmup"], masks["tickets"], masks["superposed"]))
    return {
        "val_acc": plot_val_acc(histories, folder / "val_acc.png", warmup_epochs=warmup_epochs,
                                n_tickets=n_tickets, cycle_epochs=length),
        "lr": plot_lr(per_step, histories, folder / "lr.png"),
        "density": plot_density(histories, folder / "density.png", target=target, warmup_epochs=warmup_epochs,
                                n_tickets=n_tickets, cycle_epochs=length),
        "test_acc": plot_test_acc(evaluate, folder / "test_acc.png"),
        "layer_density": plot_layer_density(masks["warmup"], masks["superposed"], folder / "layer_density.png",
                                            target=target),
        "mask_overlap": plot_mask_overlap(labels, matrix, folder / "mask_overlap.png"),
    }


# ----------------------------------------------------------------------------------------------
# the Markdown summary


def config_line(cfg: Mapping) -> str:
    """The experiment in one line."""
    t, d, s = cfg["tickets"], cfg["dst"], cfg["superpose"]
    warmup_epochs, _, n_tickets = split(cfg)
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
        tickets = {n: v for n, v in acc.items() if n.startswith("ticket_") and n != "ticket_ensemble"}
        return f"best ticket ({max(tickets, key=tickets.get)})" if tickets else "best ticket"
    return other


def summary_markdown(cfg: Mapping, evaluate_metrics: Mapping, figure_paths: Mapping[str, str | os.PathLike],
                     base: str | os.PathLike | None = None) -> str:
    """reports/summary.md: the config in one line, test accuracy and density per model, the gains in
    points, the figures (links relative to `base`, the folder the summary is written to, when
    given), and one sentence on superposed vs sparse_baseline."""
    rows = evaluation_rows(evaluate_metrics)
    n_tickets = sum(1 for r in rows if r["model"].startswith("ticket_") and r["model"] != "ticket_ensemble")
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
    an Artifact holding a file:// reference only (weights are never uploaded).

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
        wb_run.log_artifact(art)
