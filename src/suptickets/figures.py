"""The report's figures: static PNGs drawn with matplotlib's Agg backend and written atomically. The
same inputs give the same bytes (no timestamps or versions in the PNG metadata), so `dvc repro`
stays reproducible. Each `plot_*` takes what it draws, already read and checked (`report.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .artifacts import atomic_path  # noqa: E402
from .comparison import is_ticket  # noqa: E402
from .sparsity.masks import densities  # noqa: E402

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
COLORS = {"dense": "0.45", "sparse_baseline": "C0", "warmup": "C1", "tickets": "C3", "superposed": "C2",
          "ticket_ensemble": "C4"}
DPI = 110
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same figure, same bytes


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


def plot_test_acc(rows: Sequence[Mapping], path) -> Path:
    """(d) final test accuracy per model (`report.evaluation_rows`) as bars, with a line at
    sparse_baseline. The y axis is zoomed onto the values (it does not start at 0); each bar
    carries its value."""
    names = [r["model"] for r in rows]
    acc = np.array([r["test_acc"] for r in rows])
    n_tickets = sum(1 for n in names if is_ticket(n))
    colors = [COLORS["tickets"] if is_ticket(n) else COLORS.get(n, "0.6") for n in names]
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
        base = float(acc[names.index("sparse_baseline")])
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
    a, b = densities(training)[1], densities(superposed)[1]
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


def short_name(name: str) -> str:
    """A model's name in a figure: warmup -> T0, ticket_03 -> T3, superposed -> S."""
    if is_ticket(name):
        return f"T{int(name.rsplit('_', 1)[1])}"
    return {"warmup": "T0", "superposed": "S"}.get(name, name)


def plot_landscape(lines: Mapping[str, Mapping], endpoints: Mapping[str, Mapping], path, *,
                   bn_update: bool = True) -> Path:
    """(h) test accuracy (top) and loss (bottom) along the straight lines T0 → T_k (left) and
    T_k → S (right), over α (metrics/landscape.json's `lines`): each line coloured by its ticket,
    its barrier in the legend; open diamonds at the ends give each end point with its BatchNorm
    statistics recomputed (`endpoints`), so the part of a dip that BatchNorm alone explains shows."""
    tickets = sorted({n for line in lines.values() for n in (line["from"], line["to"]) if is_ticket(n)})
    cmap = matplotlib.colormaps["viridis"]
    colors = {n: cmap(0.1 + 0.7 * i / max(len(tickets) - 1, 1)) for i, n in enumerate(tickets)}
    colors["warmup"] = COLORS["warmup"]
    panels = [[line for line in lines.values() if line["to"] != "superposed"],
              [line for line in lines.values() if line["to"] == "superposed"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.8), sharex=True, sharey="row")
    for col, (panel, title) in enumerate(zip(panels, ("from T0 (warmup) to each ticket",
                                                       "from T0 and each ticket to the superposed model S"))):
        for row, key in enumerate(("test_acc", "test_loss")):
            ax = axes[row, col]
            for line in panel:
                color = colors.get(line["to"] if line["to"] != "superposed" else line["from"], "0.4")
                label = (f"{short_name(line['from'])} → {short_name(line['to'])}: barrier "
                         f"{100 * line['barrier']:.2f} pts")
                ax.plot(line["alpha"], line[key], "-o", color=color, ms=3.5, lw=1.5, label=label)
                ax.plot([0, 1], [endpoints[line["from"]][f"bn_recomputed_{key}"],
                                 endpoints[line["to"]][f"bn_recomputed_{key}"]], "D", mfc="none", color=color, ms=7)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(title, fontsize=10)
                ax.legend(loc="lower center", fontsize=7)
            else:
                ax.set_xlabel("α (0: the first model, 1: the second)")
        axes[0, 0].set_ylabel("test accuracy")
        axes[1, 0].set_ylabel("test loss")
    between = "re-pruned to the budget" + (", BatchNorm recomputed" if bn_update else "")
    fig.suptitle(f"Test accuracy and loss on straight lines between the models (points between the ends: "
                 f"{between};\nends: the models as evaluated; open diamonds: an end with BatchNorm recomputed)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
